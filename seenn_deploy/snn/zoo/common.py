"""Building blocks shared by the zoo's architectures."""

from __future__ import annotations

from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import InputSpec
from seenn_deploy.snn.neuron_config import NeuronConfig


def as_neuron_config(neuron: NeuronConfig | dict | None) -> NeuronConfig:
    if neuron is None:
        return NeuronConfig()
    if isinstance(neuron, dict):
        return NeuronConfig.from_dict(neuron)
    return neuron


def input_spec(in_channels: int, image_size: int | tuple[int, int], min_size: int = 1, arch: str = "") -> InputSpec:
    """Validate channels and image size (an int for square images, or (height, width))."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if in_channels < 1:
        raise UserError(f"in_channels must be >= 1, got {in_channels}")
    if min(h, w) < min_size:
        raise UserError(f"{arch or 'this model'} needs images of at least {min_size}x{min_size}, got {h}x{w}")
    return InputSpec(in_channels, h, w)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    """Conv (no bias, BN follows) + BatchNorm, 'same' padding for odd kernels."""
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]
