"""SEW-ResNet (Fang et al., NeurIPS 2021) with the ADD connection and a CIFAR stem.

The same `SpikingResNet` as resnet.py with the SEW block: the residual path ends in a neuron
and the block adds spikes, so its output is a non-negative integer count, not binary.
"""

from __future__ import annotations

from torch import nn

from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.zoo.common import conv_bn
from seenn_deploy.snn.zoo.registry import register_model
from seenn_deploy.snn.zoo.resnet import ResidualBlock, SpikingResNet


def sew_shortcut(cin: int, cout: int, stride: int, cfg: NeuronConfig) -> list[nn.Module]:
    """Identity when the shape is unchanged, else the spiking downsample SN(BN(conv1x1, stride))."""
    if cin == cout and stride == 1:
        return []
    return [*conv_bn(cin, cout, kernel=1, stride=stride), cfg.build()]


def sew_block(cin: int, cout: int, stride: int, cfg: NeuronConfig) -> ResidualBlock:
    """SN(BN(conv3x3(SN(BN(conv3x3(x, stride)))))) + shortcut(x): spike before the add (ADD connection)."""
    residual = [*conv_bn(cin, cout, stride=stride), cfg.build(), *conv_bn(cout, cout), cfg.build()]
    return ResidualBlock(residual, sew_shortcut(cin, cout, stride, cfg), [])


@register_model("sew_resnet18")
def sew_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    neuron: NeuronConfig | dict | None = None,
) -> SpikingResNet:
    """SEW-ResNet-18 (ADD connection, CIFAR conv3x3 stem): 64/128/256/512 x 2 blocks, spikes added."""
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return SpikingResNet(
        num_classes, in_channels, image_size, 64, stages, block=sew_block, neuron=neuron, arch="sew_resnet18"
    )
