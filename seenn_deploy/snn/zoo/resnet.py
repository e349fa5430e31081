"""Spiking ResNets: ResNet-19 (SEENN / TET), ResNet-20 (ANN-to-SNN conversion) and CIFAR ResNet-18.

All three are one `SpikingResNet`: a stem (conv3x3 + BN, the analog `encoder`, then a neuron),
stages of residual blocks, and a head. The block is a parameter, so SEW-ResNet
(`sew_resnet.py`) is the same network with a different block.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.state import Frame, SpikingSequential, Stateful
from seenn_deploy.snn.zoo.common import as_neuron_config, conv_bn, input_spec
from seenn_deploy.snn.zoo.registry import register_model


class ResidualBlock(Stateful):
    """`after_add(residual(x) + shortcut(x))`: x [T*B, Cin, H, W] -> [T*B, Cout, ceil(H/s), ceil(W/s)].

    Each part is a SpikingSequential, so any of them may hold neurons; an empty one is the identity.
    """

    def __init__(
        self, residual: Sequence[nn.Module], shortcut: Sequence[nn.Module], after_add: Sequence[nn.Module]
    ) -> None:
        super().__init__()
        self.residual = SpikingSequential(*residual)
        self.shortcut = SpikingSequential(*shortcut)
        self.after_add = SpikingSequential(*after_add)

    def forward(self, x: Tensor, frame: Frame) -> Tensor:
        return self.after_add(self.residual(x, frame) + self.shortcut(x, frame), frame)


BlockFactory = Callable[[int, int, int, NeuronConfig], ResidualBlock]


def pooled_shortcut(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """Identity when the shape is unchanged, else AvgPool(stride) -> conv1x1 -> BN.

    The pool uses ceil mode so odd sizes match the main path's conv3x3 (stride 2, padding 1),
    which gives ceil(H/2); for even sizes it is the plain AvgPool2d(stride).
    """
    if cin == cout and stride == 1:
        return []
    pool = [nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False)] if stride > 1 else []
    return [*pool, *conv_bn(cin, cout, kernel=1)]


def basic_block(cin: int, cout: int, stride: int, cfg: NeuronConfig) -> ResidualBlock:
    """conv3x3(stride)+BN, SN, conv3x3+BN, + shortcut, then SN: the spike comes after the add."""
    residual = [*conv_bn(cin, cout, stride=stride), cfg.build(), *conv_bn(cout, cout)]
    return ResidualBlock(residual, pooled_shortcut(cin, cout, stride), [cfg.build()])


class SpikingResNet(SpikingModel):
    """encoder: conv3x3(stem)+BN | SN, stages of blocks, global avg pool, [fc(hidden), SN], fc(K).

    `stages` is a sequence of (width, blocks, stride); a stage's first block takes the stride and
    the change of width.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int | tuple[int, int],
        stem: int,
        stages: Sequence[tuple[int, int, int]],
        head_hidden: int | None = None,
        block: BlockFactory = basic_block,
        neuron: NeuronConfig | dict | None = None,
        arch: str = "resnet",
    ) -> None:
        super().__init__(input_spec(in_channels, image_size, arch=arch), num_classes)
        cfg = as_neuron_config(neuron)
        self.encoder = nn.Sequential(*conv_bn(in_channels, stem))
        layers: list[nn.Module] = [cfg.build()]
        width = stem
        for out, blocks, stride in stages:
            stage = [block(width, out, stride, cfg)] + [block(out, out, 1, cfg) for _ in range(blocks - 1)]
            layers.append(SpikingSequential(*stage))
            width = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if head_hidden is not None:
            layers += [nn.Linear(width, head_hidden), cfg.build()]
            width = head_hidden
        layers.append(nn.Linear(width, num_classes))
        self.body = SpikingSequential(*layers)


@register_model("resnet19")
def resnet19(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    neuron: NeuronConfig | dict | None = None,
) -> SpikingResNet:
    """ResNet-19 of TET / SEENN: stem 128, stages 128/256/512 x 3/3/2, fc 256 head; spike after the add."""
    stages = [(128, 3, 1), (256, 3, 2), (512, 2, 2)]
    return SpikingResNet(
        num_classes, in_channels, image_size, 128, stages, head_hidden=256, neuron=neuron, arch="resnet19"
    )


@register_model("resnet20")
def resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    neuron: NeuronConfig | dict | None = None,
    width: int = 1,
) -> SpikingResNet:
    """CIFAR ResNet-20 of the ANN-to-SNN conversion literature: 16/32/64 x width, 3 blocks per stage."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"resnet20 width must be an integer >= 1, got {width!r}")
    w = 16 * width
    stages = [(w, 3, 1), (2 * w, 3, 2), (4 * w, 3, 2)]
    return SpikingResNet(num_classes, in_channels, image_size, w, stages, neuron=neuron, arch="resnet20")


@register_model("resnet18")
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    neuron: NeuronConfig | dict | None = None,
) -> SpikingResNet:
    """CIFAR ResNet-18 (conv3x3 stem, no max pool): 64/128/256/512 x 2 blocks; spike after the add."""
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return SpikingResNet(num_classes, in_channels, image_size, 64, stages, neuron=neuron, arch="resnet18")
