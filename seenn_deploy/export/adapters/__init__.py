"""Framework adapters: map a foreign SNN's neurons to state-explicit ones so it exports like a zoo model.

One module per framework (`spikingjelly`, `snntorch`), each an `Adapter` with the same few
parts; the frameworks themselves are imported only when an adapter is made.
"""

from __future__ import annotations

from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.adapters.base import READOUTS, Adapter, Binding, ForeignBody, ForeignNeuron, read_output

FRAMEWORKS = ("spikingjelly", "snntorch")

__all__ = ["FRAMEWORKS", "READOUTS", "Adapter", "Binding", "ForeignBody", "ForeignNeuron", "detect_framework",
           "get_adapter", "read_output"]


def detect_framework(module: nn.Module) -> str:
    """The framework whose modules `module` is built from; UserError if none or several."""
    found = {type(m).__module__.split(".")[0] for m in module.modules()} & set(FRAMEWORKS)
    if len(found) == 1:
        return found.pop()
    if not found:
        raise UserError(
            f"{type(module).__name__} contains no SpikingJelly or snnTorch module: export_model takes a foreign SNN "
            "(seenn-deploy's own models export with export_bundle / `seenn-deploy export`)"
        )
    both = " and ".join(sorted(found))
    raise UserError(f"{type(module).__name__} mixes {both} modules; export one framework's model")


def get_adapter(framework: str) -> Adapter:
    """The adapter for `framework` (one of FRAMEWORKS); imports the framework, with a clear error if it is missing."""
    if framework == "spikingjelly":
        from seenn_deploy.export.adapters.spikingjelly import SpikingJellyAdapter

        return SpikingJellyAdapter()
    if framework == "snntorch":
        from seenn_deploy.export.adapters.snntorch import SnnTorchAdapter

        return SnnTorchAdapter()
    raise UserError(f"framework {framework!r} is not one of auto, {', '.join(FRAMEWORKS)}")
