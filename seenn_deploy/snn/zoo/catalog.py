"""What each registered architecture accepts and how big it is, as static data: `seenn-deploy models` needs no torch.

tests/snn/test_zoo.py checks every entry against the registry (names, kinds, summaries, the
smallest accepted size, parameter counts), so this table cannot drift from the models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """An input size [C, H, W] and the parameter count at it, with `num_classes` outputs."""

    channels: int
    height: int
    width: int
    params: int
    num_classes: int = 10

    def describe(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}: {self.params / 1e6:.2f} M"


@dataclass(frozen=True)
class ArchInfo:
    """name, snn or ann, the registry's one-line summary, the smallest H and W it takes, and typical sizes."""

    name: str
    spiking: bool
    summary: str
    min_size: int
    sizes: tuple[Size, ...]

    def accepts(self) -> str:
        """The input constraint in words: any channel count for every arch of the zoo."""
        return f"C any, H,W >= {self.min_size}"

    def line(self) -> str:
        kind = "snn" if self.spiking else "ann"
        sizes = ", ".join(s.describe() for s in self.sizes)
        return f"{self.name:<15} {kind}  {self.accepts():<18} params at {sizes}\n    {self.summary}"


CATALOG: tuple[ArchInfo, ...] = (
    ArchInfo("policy_resnet8", False,
             "SEENN-II policy ANN, ResNet-8 (16/32/64, one block per stage); num_classes = number of T candidates.",
             1, (Size(3, 32, 32, 77_652, num_classes=4),)),
    ArchInfo("resnet18", True,
             "CIFAR ResNet-18 (conv3x3 stem, no max pool): 64/128/256/512 x 2 blocks; spike after the add.",
             1, (Size(3, 32, 32, 11_173_962),)),
    ArchInfo("resnet19", True,
             "ResNet-19 of TET / SEENN: stem 128, stages 128/256/512 x 3/3/2, fc 256 head; spike after the add.",
             1, (Size(3, 32, 32, 12_697_994),)),
    ArchInfo("resnet20", True,
             "CIFAR ResNet-20 of the ANN-to-SNN conversion literature: 16/32/64 x width, 3 blocks per stage.",
             1, (Size(3, 32, 32, 272_474),)),
    ArchInfo("sew_resnet18", True,
             "SEW-ResNet-18 (ADD connection, CIFAR conv3x3 stem): 64/128/256/512 x 2 blocks, spikes added.",
             1, (Size(3, 32, 32, 11_173_962),)),
    ArchInfo("spiking_cnn", True,
             "Small spiking CNN (2 conv, 2 fc) for small images, any channel count (1x28x28, 3x32x32); fast on a CPU.",
             4, (Size(1, 28, 28, 206_970), Size(3, 32, 32, 268_698))),
    ArchInfo("vgg16", True,
             "VGG-16 with AvgPool2d(2) for max pooling and a CIFAR head fc(512), SN, fc(K); images >= 32x32.",
             32, (Size(3, 32, 32, 14_986_698),)),
)
