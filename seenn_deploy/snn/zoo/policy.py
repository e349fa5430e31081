"""The SEENN-II policy network: a small ANN that looks at the input once and scores each timestep candidate."""

from __future__ import annotations

from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.zoo.common import conv_bn, input_spec
from seenn_deploy.snn.zoo.registry import register_model


class ReLUBlock(nn.Module):
    """ANN BasicBlock: ReLU(BN(conv3x3(ReLU(BN(conv3x3(x, stride))))) + shortcut(x)).

    x [B, Cin, H, W] -> [B, Cout, ceil(H/s), ceil(W/s)].

    The shortcut is the identity when the shape is unchanged, else conv1x1(stride) + BN.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(*conv_bn(cin, cout, stride=stride), nn.ReLU(), *conv_bn(cout, cout))
        same = cin == cout and stride == 1
        self.shortcut = nn.Identity() if same else nn.Sequential(*conv_bn(cin, cout, kernel=1, stride=stride))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class PolicyResNet(nn.Module):
    """Plain ANN (not spiking): [avg pool by `downsample`], conv3x3+BN+ReLU stem, one ReLUBlock per stage,
    global avg pool, fc(K).

    x [B, C, H, W] -> logits [B, K], K = the number of timestep candidates. `stages` is a
    sequence of (width, stride).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int | tuple[int, int],
        stem: int,
        stages: tuple[tuple[int, int], ...],
        arch: str = "policy",
        downsample: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise UserError(f"{arch} needs num_classes (the number of timestep candidates) >= 1, got {num_classes}")
        self.input_spec = input_spec(in_channels, image_size, arch=arch)
        self.num_classes = num_classes
        if downsample < 1:
            raise UserError(f"{arch} needs downsample >= 1 (1: full resolution), got {downsample}")
        # A coarser view of the input: the policy's MACs fall by downsample^2 (ceil_mode keeps odd borders)
        pool = [nn.AvgPool2d(downsample, ceil_mode=True)] if downsample > 1 else []
        layers: list[nn.Module] = [*pool, *conv_bn(in_channels, stem), nn.ReLU()]
        width = stem
        for out, stride in stages:
            layers.append(ReLUBlock(width, out, stride))
            width = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> logits over the timestep candidates [B, K]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_spec.shape:
            c, h, w = self.input_spec.shape
            raise UserError(
                f"policy input of shape {tuple(x.shape)} does not match: it expects [B, C, H, W] with "
                f"C, H, W = {c}, {h}, {w}"
            )
        return self.net(x)


@register_model("policy_resnet8", spiking=False)
def policy_resnet8(num_classes: int = 10, in_channels: int = 3, image_size: int | tuple[int, int] = 32,
                   width: int = 16, downsample: int = 1) -> PolicyResNet:
    """SEENN-II policy ANN, ResNet-8 (16/32/64, one block per stage); num_classes = number of T candidates.

    width: channels of the stem and first stage (the later stages take 2x and 4x); downsample: the
    input is average-pooled by this factor first, so the policy looks at a coarser image.
    """
    if width < 1:
        raise UserError(f"policy_resnet8 needs width >= 1, got {width}")
    stages = ((width, 1), (2 * width, 2), (4 * width, 2))
    return PolicyResNet(num_classes, in_channels, image_size, width, stages, arch="policy_resnet8",
                        downsample=downsample)
