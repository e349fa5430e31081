"""A small spiking CNN for small images of any channel count (Fashion-MNIST 1x28x28, CIFAR-10 3x32x32).

It is the quick model of the zoo: a Fashion-MNIST epoch takes minutes on 2 CPU cores.
"""

from __future__ import annotations

from torch import nn

from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.state import SpikingSequential
from seenn_deploy.snn.zoo.common import as_neuron_config, conv_bn, input_spec
from seenn_deploy.snn.zoo.registry import register_model


class SpikingCNN(SpikingModel):
    """conv(c1)+BN | LIF, pool, conv(c2)+BN, LIF, pool, fc(hidden), LIF, fc(K).

    Any channel count and any H, W >= 4; the pools floor odd sizes, so fc's input is c2 * (H//4) * (W//4).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 128,
        neuron: NeuronConfig | dict | None = None,
    ) -> None:
        spec = input_spec(in_channels, image_size, min_size=4, arch="spiking_cnn")
        super().__init__(spec, num_classes)
        cfg = as_neuron_config(neuron)
        c1, c2 = channels
        flat = c2 * (spec.height // 4) * (spec.width // 4)
        self.encoder = nn.Sequential(*conv_bn(in_channels, c1))
        self.body = SpikingSequential(
            cfg.build(),
            nn.AvgPool2d(2),
            *conv_bn(c1, c2),
            cfg.build(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            cfg.build(),
            nn.Linear(hidden, num_classes),
        )


@register_model("spiking_cnn")
def spiking_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int | tuple[int, int] = 28, **kwargs) -> SpikingCNN:
    """Small spiking CNN (2 conv, 2 fc) for small images, any channel count (1x28x28, 3x32x32); fast on a CPU."""
    return SpikingCNN(num_classes, in_channels, image_size, **kwargs)
