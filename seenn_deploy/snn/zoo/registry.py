"""Model registry: `@register_model` and `create_model(name, **kwargs)`, as timm does it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from seenn_deploy.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    spiking: bool
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, spiking: bool = True) -> Callable:
    """Register a factory `f(num_classes, in_channels, image_size, **kwargs) -> nn.Module` under `name`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        summary = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        _REGISTRY[name] = ModelEntry(name, factory, spiking, summary)
        return factory

    return wrap


def list_models() -> list[ModelEntry]:
    _load_zoo()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_entry(name: str) -> ModelEntry:
    _load_zoo()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, fold_bn: bool = False, neurons: dict[str, dict] | None = None, **kwargs) -> nn.Module:
    """Build the registered model `name`; unknown names fail with the list of known ones.

    `fold_bn` and `neurons` describe a converted model and apply to every architecture (zoo/converted.py).
    """
    entry = get_entry(name)
    try:
        model = entry.factory(**kwargs)
    except TypeError as exc:
        raise UserError(f"model {name!r}: {exc}") from None
    if fold_bn or neurons:
        from seenn_deploy.snn.zoo.converted import fold_batch_norm, override_neurons

        if fold_bn:
            fold_batch_norm(model)
        if neurons:
            override_neurons(model, kwargs.get("neuron"), neurons)
    return model


def _load_zoo() -> None:
    # Importing the zoo modules runs their @register_model decorators.
    from seenn_deploy.snn.zoo import cnn, policy, resnet, sew_resnet, vgg  # noqa: F401
