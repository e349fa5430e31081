"""Spiking VGG-16 with average pooling (max pooling is unfriendly to spikes) and a CIFAR-sized head."""

from __future__ import annotations

from torch import nn

from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.state import SpikingSequential
from seenn_deploy.snn.zoo.common import as_neuron_config, conv_bn, input_spec
from seenn_deploy.snn.zoo.registry import register_model

POOL = "P"
# Conv widths and pools; the first conv is the encoder's.
VGG16: tuple[int | str, ...] = (
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL
)


class SpikingVGG(SpikingModel):
    """conv3x3+BN | SN, then (conv3x3+BN, SN) or AvgPool2d(2) per `layers` entry, global avg pool, fc, SN, fc(K).

    `layers` lists conv widths and POOL markers; the first entry is the encoder's conv.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int | tuple[int, int],
        layers: tuple[int | str, ...],
        head_hidden: int,
        neuron: NeuronConfig | dict | None = None,
        arch: str = "vgg",
    ) -> None:
        pools = sum(1 for v in layers if v == POOL)
        super().__init__(input_spec(in_channels, image_size, min_size=2**pools, arch=arch), num_classes)
        cfg = as_neuron_config(neuron)
        first, *rest = layers
        self.encoder = nn.Sequential(*conv_bn(in_channels, first))
        body: list[nn.Module] = [cfg.build()]
        width = first
        for v in rest:
            if v == POOL:
                body.append(nn.AvgPool2d(2))
            else:
                body += [*conv_bn(width, v), cfg.build()]
                width = v
        body += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, head_hidden), cfg.build()]
        body.append(nn.Linear(head_hidden, num_classes))
        self.body = SpikingSequential(*body)


@register_model("vgg16")
def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    neuron: NeuronConfig | dict | None = None,
) -> SpikingVGG:
    """VGG-16 with AvgPool2d(2) for max pooling and a CIFAR head fc(512), SN, fc(K); images >= 32x32.

    The ImageNet head (two fc 4096) is replaced by fc(512 -> 512): after five pools a CIFAR image
    is 1x1x512, so the large head would only add parameters.
    """
    return SpikingVGG(num_classes, in_channels, image_size, VGG16, head_hidden=512, neuron=neuron, arch="vgg16")
