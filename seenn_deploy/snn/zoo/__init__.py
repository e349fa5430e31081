"""The model zoo: spiking architectures and the SEENN-II policy network, built by name.

The registry (and with it torch) is imported on first use of its functions, so that the static
`CATALOG` of architectures reads on a machine without torch.
"""

from __future__ import annotations

from typing import Any

from seenn_deploy.snn.zoo.catalog import CATALOG, ArchInfo, Size

__all__ = ["CATALOG", "ArchInfo", "Size", "create_model", "get_entry", "list_models", "register_model"]
_REGISTRY_NAMES = ("create_model", "get_entry", "list_models", "register_model")


def __getattr__(name: str) -> Any:
    # PEP 562: `from seenn_deploy.snn.zoo import create_model` imports the registry (and torch) only then.
    if name in _REGISTRY_NAMES:
        from seenn_deploy.snn.zoo import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
