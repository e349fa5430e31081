"""FP16 for spiking graphs: the heavy layers in FP16, the threshold arithmetic in FP32.

A spike is a threshold comparison, so any rounding upstream of a membrane can flip spikes and,
through them, predictions. Measured on the Fashion-MNIST spiking CNN (10,000 test images):

* an all-FP16 graph agreed with FP32 on 99.53-99.68 % of predictions per timestep (spike-flip
  rate 5.9e-4), most of the loss coming from the first (analog-input) layer;
* with the analog input, membranes and classifier in FP32 and the hidden conv and fc in FP16,
  weights rounded once to FP16 ("single"): 99.88-99.92 % with FP16 arithmetic (torch CPU half
  ops, outputs rounded to FP16); two thirds of the flips come from the rounded weights;
* the same with each weight stored as a pair of FP16 numbers, hi = fp16(w) and lo = fp16((w - hi) 2^11),
  two FP16 products summed in FP32 ("pair", the default): 99.95-99.99 % (flip rate 1.9e-5, against
  4.1e-5 for "single"). It doubles the FP16
  work of those layers, which on tensor cores still costs far less than FP32.

So the FP16 export keeps in FP32:

* the encoder (first conv + BN on analog input; it runs once per sample, so it costs little);
* the membranes and every neuron's arithmetic (elementwise, cheap);
* the classifier (the last Linear) and the exit head;
* the layers named in `fp32_layers` (`verify` names the layer where flips start);

and runs every other Conv2d and Linear in FP16 (their inputs are spikes, exact in FP16). The
types are explicit Casts in the graph, which is what TensorRT's strongly typed mode follows.

ONNX Runtime's CPU provider has no FP16 convolution: it runs these layers in FP32 on the FP16
weights and drops the casts around them, so on the CPU an FP16 bundle shows the weights'
rounding but not the outputs'. The torch backend runs real FP16 operations.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.runtime.manifest import PRECISIONS
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.state import SpikingSequential


FP16_WEIGHTS = ("pair", "single")


class HalfCompute(nn.Module):
    """Runs `layer` in FP16 between FP32 tensors: x -> half -> layer -> float.

    weights="pair": the FP32 parameters as hi + lo * 2^-11, both FP16 (lo = hi's rounding error, scaled
    up by 2^11 so that small weights' errors stay clear of FP16's subnormals); the two FP16 results
    are summed in FP32, the second scaled back, so the weights keep about 22 bits.
    """

    LOW_SCALE = 2.0**11

    def __init__(self, layer: nn.Module, weights: str = "pair") -> None:
        super().__init__()
        self.low = None
        if weights == "pair":
            low = copy.deepcopy(layer)
            with torch.no_grad():
                for name, param in layer.named_parameters():
                    high = param.half().float()
                    getattr(low, name).copy_((param - high) * self.LOW_SCALE)
                    param.copy_(high)
            self.low = low.half()
        self.layer = layer.half()

    def forward(self, x: Tensor) -> Tensor:
        x = x.half()
        out = self.layer(x).float()
        return out if self.low is None else out + self.low(x).float() * (1.0 / self.LOW_SCALE)


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


def replace_layers(model: SpikingModel, names: Sequence[str], wrap: Callable[[str, nn.Module], nn.Module]) -> None:
    """In place: each body layer named in `names` (weighted_layers' qualified names) replaced by wrap(name, layer)
    wherever the model holds it, whatever holds it (Sequential, ModuleList, ModuleDict as NIRBody's, a plain
    attribute). InternalError when a name is not a layer of the body or is not replaced, so a precision is never
    recorded for a graph that does not have it."""
    layers = weighted_layers(model)
    missing = [name for name in names if name not in layers]
    if missing:
        raise InternalError(f"{', '.join(missing)}: not a Conv2d or Linear of the model's body")
    wrapped = {id(layers[name]): wrap(name, layers[name]) for name in names}
    places = [(path, m) for path, m in model.body.named_modules(remove_duplicate=False) if id(m) in wrapped and path]
    for path, layer in places:  # a layer shared by two parents is replaced in both, by one wrapper
        parent_path, _, key = path.rpartition(".")
        parent = model.body.get_submodule(parent_path)
        if parent._modules.get(key) is not layer:
            raise InternalError(f"body.{path}: not found as child {key!r} of its parent")
        parent._modules[key] = wrapped[id(layer)]
    replaced = len({id(layer) for _, layer in places})
    if replaced != len(set(names)):
        raise InternalError(f"replaced {replaced} of the {len(set(names))} planned layers")


def checked_layers(model: SpikingModel, fp32_layers: Sequence[str]) -> dict[str, nn.Module]:
    """weighted_layers(model), after a UserError for any --fp32-layers name that is not one of them."""
    named = weighted_layers(model)
    unknown = [name for name in fp32_layers if name not in named]
    if unknown:
        raise UserError(f"--fp32-layers {', '.join(unknown)}: not a Conv2d or Linear of the model's body; "
                        f"the layers are {', '.join(named) or 'none'}")
    return named


def fp16_layers(model: SpikingModel, fp32_layers: Sequence[str] = ()) -> list[str]:
    """Names of the layers an FP16 export runs in FP16: the body's Conv2d and Linear layers but the classifier
    (the last Linear), the analog-input layer where the encoder is empty (foreign models keep their first
    layer in the body), and `fp32_layers`."""
    named = checked_layers(model, fp32_layers)
    keep = set(fp32_layers)
    linears = [name for name, m in named.items() if isinstance(m, nn.Linear)]
    if linears:
        keep.add(linears[-1])
    if named and next(model.encoder.parameters(), None) is None:
        keep.add(next(iter(named)))
    return [name for name in named if name not in keep]


def apply_fp16(model: SpikingModel, fp32_layers: Sequence[str] = (), weights: str = "pair") -> SpikingModel:
    """In place, on an FP32 eval-mode copy: the `fp16_layers` in FP16 (BN folded first), the rest FP32."""
    if weights not in FP16_WEIGHTS:
        raise UserError(f"--fp16-weights {weights!r} is not one of {', '.join(FP16_WEIGHTS)}")
    fold_batchnorms(model.body)
    replace_layers(model, fp16_layers(model, fp32_layers), lambda _name, layer: HalfCompute(layer, weights))
    return model


class FloatCompute(nn.Module):
    """Runs `layer` in FP32 inside an FP16 graph (an --fp32-layers layer of int8+fp16): x -> float -> layer -> x's
    type, explicit casts as a strongly typed network takes them."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.float()).to(x.dtype)


class CastInput(nn.Module):
    """The first op of an int8+fp16 encoder: the FP32 sample (as the runtime normalises it) cast to `dtype`."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.dtype)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The float type of a laid-out model's neurons and states: float16 for int8+fp16, float32 otherwise."""
    return getattr(model, "compute_dtype", torch.float32)


def _half_outside(module: nn.Module, keep: tuple[type, ...], path: str = "") -> None:
    """In place: every floating parameter and buffer to FP16, but those of `keep` modules (and their children).
    UserError for a value beyond FP16's range (it would become inf)."""
    if isinstance(module, keep):
        return
    for store in (module._parameters, module._buffers):
        for key, value in store.items():
            if value is not None and value.is_floating_point():
                largest = float(value.detach().abs().max()) if value.numel() else 0.0
                if largest > float(torch.finfo(torch.float16).max):
                    raise UserError(f"{path}{key} holds {largest:.3g}, beyond FP16's range: export with --precision "
                                    f"int8 (its float side is FP32)")
                value.data = value.data.half()
    for name, child in module.named_children():
        _half_outside(child, keep, f"{path}{name}.")


def apply_int8_fp16(model: SpikingModel, fp32_layers: Sequence[str] = (), weights: str = "pair") -> SpikingModel:
    """In place, on an FP32 eval-mode copy: the int8 layout (export/int8.py, its QuantCompute layers in their FP16
    form) with everything else in FP16: the analog input layer (encoder, BN folded), every other Conv2d / Linear
    but `fp32_layers` (FP32 between casts), the neurons' arithmetic and so the membranes; x is cast to FP16 first.
    The neuron states follow in FP16, the exit head stays FP32 (step_module.graph_states reads compute_dtype)."""
    from seenn_deploy.export.int8 import QuantCompute, apply_int8

    fold_batchnorms(model.encoder)
    apply_int8(model, fp32_layers, weights, half=True)
    if fp32_layers:
        replace_layers(model, list(fp32_layers), lambda _name, layer: FloatCompute(layer))
    _half_outside(model, (QuantCompute, FloatCompute))
    model.encoder = nn.Sequential(CastInput(torch.float16), model.encoder)
    model.compute_dtype = torch.float16
    return model


def for_precision(model: SpikingModel, precision: str, fp32_layers: Sequence[str] = (),
                  fp16_weights: str = "pair") -> SpikingModel:
    """An eval-mode copy of `model` laid out for `precision` ('fp32', 'fp16', 'int8' or 'int8+fp16':
    export/int8.py; FP32 tensors, but for int8+fp16's FP16 float side); the original is untouched. The int8 layouts are the torch reference of an int8 bundle (verify,
    the torch backend), int8+fp16 on real torch FP16 ops; `fp16_weights` is then the INT8 weights' form (pair or
    single, the manifest's field of that name)."""
    if precision not in PRECISIONS:
        raise InternalError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    model = copy.deepcopy(model).eval().to(device="cpu", dtype=torch.float32)
    if precision == "fp16":
        return apply_fp16(model, fp32_layers, fp16_weights)
    if precision == "int8":
        from seenn_deploy.export.int8 import apply_int8

        return apply_int8(model, fp32_layers, fp16_weights)
    if precision == "int8+fp16":
        return apply_int8_fp16(model, fp32_layers, fp16_weights)
    return model
