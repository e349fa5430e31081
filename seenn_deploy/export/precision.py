"""FP16 for spiking graphs: the heavy layers in FP16, the threshold arithmetic in FP32.

A spike is a threshold comparison, so rounding the membrane or the analog input flips spikes
and, through them, predictions. Measured on the Fashion-MNIST spiking CNN (10,000 test images,
ONNX Runtime CPU), an all-FP16 graph agreed with FP32 on 99.53-99.68 % of predictions per
timestep (spike-flip rate 5.9e-4), most of the loss coming from the first (analog-input) layer;
this layout agrees on 99.89-99.94 % (flip rate 3.0e-5). What is left comes from rounding the
hidden conv's FP16 outputs, which feed a threshold: keeping that conv in FP32 too
(`fp32_layers=["body.layers.2"]`) gives 99.99-100 % (flip rate 2.5e-7), but leaves little in FP16
for so small a network. `verify` reports flips per neuron layer, to find the layer to keep.
The FP16 export keeps in FP32:

* the encoder (first conv + BN on analog input; it runs once per sample, so it costs little);
* the membranes and every neuron's arithmetic (elementwise, cheap);
* the classifier (the last Linear) and the exit head;

* the layers named in `fp32_layers`;

and runs every other Conv2d and Linear in FP16 (their inputs are spikes, exact in FP16). The
types are explicit Casts in the graph, which is what TensorRT's strongly typed mode follows.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.state import SpikingSequential


class HalfCompute(nn.Module):
    """Runs `layer` in FP16 between FP32 tensors: x -> half -> layer -> float."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer.half()

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.half()).float()


def _layer_lists(model: nn.Module):
    """Every ordered list of children in which a conv and its BN can be neighbours."""
    for module in model.modules():
        if isinstance(module, SpikingSequential):
            yield module.layers
        elif isinstance(module, nn.Sequential):
            yield module


def fold_batchnorms(model: nn.Module) -> None:
    """Replace each (Conv2d, BatchNorm2d) pair of neighbours by the folded conv (eval mode) and an Identity."""
    for layers in _layer_lists(model):
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                layers[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                layers[i + 1] = nn.Identity()


def weighted_layers(model: SpikingModel) -> dict[str, nn.Module]:
    """The body's Conv2d and Linear layers by qualified name ("body.layers.2"), in module order."""
    return {f"body.{name}": m for name, m in model.body.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def fp16_layers(model: SpikingModel, fp32_layers: Sequence[str] = ()) -> list[str]:
    """Names of the layers an FP16 export runs in FP16: the body's Conv2d and Linear layers but the classifier
    (the last Linear), the analog-input layer where the encoder is empty (foreign models keep their first
    layer in the body), and `fp32_layers`."""
    named = weighted_layers(model)
    unknown = [name for name in fp32_layers if name not in named]
    if unknown:
        raise UserError(f"--fp32-layers {', '.join(unknown)}: not a Conv2d or Linear of the model's body; "
                        f"the layers are {', '.join(named) or 'none'}")
    keep = set(fp32_layers)
    linears = [name for name, m in named.items() if isinstance(m, nn.Linear)]
    if linears:
        keep.add(linears[-1])
    if named and next(model.encoder.parameters(), None) is None:
        keep.add(next(iter(named)))
    return [name for name in named if name not in keep]


def apply_fp16(model: SpikingModel, fp32_layers: Sequence[str] = ()) -> SpikingModel:
    """In place, on an FP32 eval-mode copy: the `fp16_layers` in FP16 (BN folded first), the rest FP32."""
    fold_batchnorms(model.body)
    half = {id(m) for name, m in weighted_layers(model).items() if name in set(fp16_layers(model, fp32_layers))}
    for layers in _layer_lists(model.body):
        for i, layer in enumerate(layers):
            if id(layer) in half:
                layers[i] = HalfCompute(layer)
    return model


def for_precision(model: SpikingModel, precision: str, fp32_layers: Sequence[str] = ()) -> SpikingModel:
    """An eval-mode FP32 copy of `model` laid out for `precision` ('fp32' or 'fp16'); the original is untouched."""
    model = copy.deepcopy(model).eval().to(device="cpu", dtype=torch.float32)
    return apply_fp16(model, fp32_layers) if precision == "fp16" else model
