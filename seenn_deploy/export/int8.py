"""INT8 for spiking graphs: exact activations, rounded weights, everything threshold-side in FP32.

A spike-driven layer's input is made of spikes: 0 or 1 (theta for converted neurons that emit
their threshold), averaged by pools (k/4 after a 2x2 average pool, k/16 after a global pool of
4x4) and summed by residual adds. Such values lie on a grid {k * s}, and with that s as the
activation scale and zero point 0 they are exact in INT8 (|k| <= 127): only the weights round.
So the INT8 layout

* finds each body Conv2d / Linear's input grid with a probe (`activation_grids`): every neuron's
  output is replaced by random spikes at firing rates 0..1 (every window sum of a pool occurs)
  and a random analog input drives the rest; a layer whose probed inputs lie on a grid of at most
  127 steps is spike-driven, any other (the analog-input layer, a layer fed by membranes) is not;
* quantizes the spike-driven layers' weights per output channel, symmetric, to [-127, 127]
  (scale max|w| / 127: `quantize_weight`), by default as a pair of INT8 weights (high and the
  high's rounding error, `quantize_pair`), and keeps the other layers, the encoder, the
  membranes, the accumulated logits and the exit head in FP32;
* computes a quantized layer as the integer kernels of ONNX Runtime and TensorRT do: the integer
  products summed exactly, then one multiplication by (input scale x channel's weight scale) and
  the FP32 bias (`QuantCompute`).

Measured with `verify` (ONNX Runtime, 10,000 test images, t = 1..4): on the Fashion-MNIST
spiking CNN, weights rounded once ("single") flip 2.1e-3 and 7.1e-3 of the hidden conv's and fc's
spikes and predictions agree with FP32 on 99.16-99.55 % (keeping the classifier in FP32 changes
nothing: the flips come from the hidden layers); the pair flips 5e-6 and 6e-5 and agrees on
99.99-100 %, accuracy unchanged. The CIFAR-10 CNN: single 97.9-98.2 %, pair 99.97-99.99 %.
Spike-count-aware rounding ("tuned": single weights chosen on calibration data, int8_rounding.py)
cuts the single weights' test flips 2.3-3.4x (Fashion-MNIST 99.47-99.75 %, CIFAR-10 98.4-99.0 %); only the
pair closes the gap, for twice the INT8 products.

`--precision int8+fp16` (`half=True` below) is the same INT8 layout with the float side in FP16,
as ModelOpt's ONNX PTQ writes it with high_precision_dtype fp16 for TensorRT's strongly typed mode:
every scale is an FP16 number (TensorRT 10's Quantize operator: "scale: tensor of type T1", the
type of its input; T1 float16, bfloat16 or float32), so each weight scale is the smallest FP16
value >= max|w_c| / 127 (`fp16_ceil`: |q| <= 127 still holds, and the error bound with it), the
activation scales are rounded to FP16 (exact for 0/1 spikes and 2x2 pools; a step like 1/9 rounds,
but QuantizeLinear still recovers every count k <= 127 exactly, which is what the INT8 kernel
multiplies), and a pair's low part is quantized against its own FP16 scale, fp16_ceil(scale / 254), no
smaller than FP16's least normal number (`low_scale`).
A quantized layer then computes as TensorRT's fused INT8 kernels do: the exact integer sum times
s_x * s_w in FP32, plus the FP16 bias, rounded to FP16 (`QuantCompute`). Measured with `verify`
(10,000 test images, t = 1..4, pair weights): the FP16 analog layer and membranes flip spikes from the
first layer on, so agreement with FP32 is 99.3-99.8 % on Fashion-MNIST and 98.2-99.3 % on CIFAR-10
(single: 99.2-99.5 % and 97.8-98.1 %), accuracy within 0.2 point; the torch layout rounds every FP16
op (flips 5e-3 on Fashion-MNIST), ONNX Runtime's CPU provider only the states between steps (3e-4).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.precision import checked_layers, fold_batchnorms, replace_layers, weighted_layers
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neurons import SpikingNeuron

QMAX = 127  # symmetric INT8: weights and spike counts in [-127, 127] (TensorRT's zero point is always 0)
PROBE_RATES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)  # firing rates of the probe's random spikes
PROBE_BATCH = 4
PROBE_SEED = 0
GRID_TOLERANCE = 1e-3  # in grid steps: pools that divide by 3 or 9 leave float rounding on the grid points
EXACT_FP32_SUM = 1 << 24  # integer sums below this are exact in FP32
INT8_WEIGHTS = ("pair", "single")
FP16_MAX = float(torch.finfo(torch.float16).max)
FP16_MIN_NORMAL = float(torch.finfo(torch.float16).tiny)  # 2^-14: smaller FP16 numbers are subnormal
LOW_STEPS = 2 * QMAX  # "pair": the low part's step is the high part's / 254, so |low| <= 127


def fp16_ceil(values: Tensor) -> Tensor:
    """The smallest FP16 number >= each value (positive, float32 in and out): a scale rounded up, so |w / s| <= 127
    holds. Torch ops only (the next FP16 number up is the next bit pattern), so it runs where the layer runs."""
    wanted = values.detach().float()
    half = wanted.half()
    above = (half.view(torch.int16) + 1).view(torch.float16)
    return torch.where(half.float() < wanted, above, half).float()


def low_scale(scale: Tensor | np.ndarray, half: bool = False) -> Tensor | np.ndarray:
    """A pair's low-part scale from its high scale: scale / 254, or with `half` its own FP16 scale: the smallest FP16
    number >= scale / 254 and no smaller than FP16's least normal number. Weights below about 2 would give
    subnormal scales, which TensorRT warns about and may flush (NVIDIA/TensorRT#2600); a coarser low step only
    costs those channels some of the pair's precision, and |low| <= 127 holds as long as the step is >= scale / 254."""
    tensor = torch.as_tensor(scale, dtype=torch.float32)
    low = torch.clamp(fp16_ceil(tensor / LOW_STEPS), min=FP16_MIN_NORMAL) if half else tensor / LOW_STEPS
    return low.numpy().astype(np.float32) if isinstance(scale, np.ndarray) else low


@dataclass(frozen=True)
class LayerQuant:
    """How one layer is quantized: its input's grid step (the activation scale) and its INT8 weights.

    weight: int8 [C_out, ...] (the layer's weight layout); weight_scale: float32 [C_out], > 0.
    """

    name: str  # the module's qualified name in the model ("body.layers.2")
    kind: str  # "conv" or "linear"
    input_scale: float
    weight: np.ndarray
    weight_scale: np.ndarray
    weight_low: np.ndarray | None = None  # "pair": int8, the rounding error of `weight` in steps of low_scale
    half: bool = False  # int8+fp16: the scales are FP16 numbers, the graph's float side FP16

    @property
    def low_scale(self) -> np.ndarray:
        return low_scale(self.weight_scale.astype(np.float32), self.half)


def quantize_weight(weight: Tensor, half: bool = False) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric INT8: (q int8 [C_out, ...], scale float32 [C_out]) with scale = max|w_c| / 127
    (1 for an all-zero channel), q = round(w / scale). |w - q * scale| <= scale / 2 for every element.
    `half`: scale is the smallest FP16 number >= max|w_c| / 127 (exact in an FP16 Q/DQ scale), so |q| <= 127 and
    the bound hold as well."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = weight_scales(flat, half)
    q = torch.round(flat / scale[:, None]).clamp(-QMAX, QMAX)
    return q.to(torch.int8).reshape(weight.shape), scale


def weight_scales(weight: Tensor, half: bool = False, ratio: float = 1.0) -> Tensor:
    """[C_out] float32: ratio * max|w_c| / 127 per output channel (1 for an all-zero channel); `half`: rounded up to
    an FP16 number (UserError for weights beyond FP16's range). ratio < 1 clips (int8_rounding.py tries it)."""
    peak = weight.detach().float().flatten(1).abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / QMAX * ratio, torch.ones_like(peak))
    if half:
        largest = float(peak.max()) if len(peak) else 0.0
        if not math.isfinite(largest) or largest > FP16_MAX:
            raise UserError(f"a weight of magnitude {largest:.3g} is beyond FP16's range ({FP16_MAX:g}): its FP16 "
                            "dequantized value would be inf: export this model with --precision int8 (FP32 scales)")
        scale = fp16_ceil(scale)
    return scale


def quantize_pair(weight: Tensor, half: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(high, low, scale): w ~ scale * high + low_scale(scale, half) * low, both int8; the error is at most
    low_scale / 2 (scale / 508 in FP32, a little more where FP16 rounds the low scale up)."""
    high, scale = quantize_weight(weight, half)
    shape = (-1, *[1] * (weight.dim() - 1))
    residual = weight.detach().float() - high.float() * scale.reshape(shape)
    low = torch.round(residual / low_scale(scale, half).reshape(shape)).clamp(-QMAX, QMAX)
    return high, low.to(torch.int8), scale


def exact_grid(values: Tensor, max_steps: int = QMAX) -> float | None:
    """The step s of the coarsest grid {k * s : |k| <= max_steps} holding every value, or None.

    s = max|v| / n for the smallest n in 1..max_steps that puts every value on the grid (within
    GRID_TOLERANCE of a step); all zeros give s = 1.
    """
    mags = torch.unique(values.detach().abs().double().flatten())
    mags = mags[mags > 0]
    if len(mags) == 0:
        return 1.0
    peak = float(mags.max())
    for n in range(1, max_steps + 1):
        steps = mags * (n / peak)
        if bool(((steps - steps.round()).abs() <= GRID_TOLERANCE).all()):
            return peak / n
    return None


@torch.no_grad()
def activation_grids(model: SpikingModel) -> dict[str, float | None]:
    """Each body Conv2d / Linear's input grid step under random spikes (see the module docstring), None where the
    input is not on an INT8 grid (analog input, membranes). Deterministic: the probe's generator is seeded."""
    layers = weighted_layers(model)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    rate = [0.0]
    seen: dict[str, list[Tensor]] = {name: [] for name in layers}

    def random_spikes(neuron: SpikingNeuron, _inputs, output):
        amplitude = neuron.v_threshold if neuron.scale_spikes else 1.0
        first = output[0] if isinstance(output, tuple) else output
        spikes = (torch.rand(first.shape, generator=generator) < rate[0]).to(first.dtype) * amplitude
        return (spikes, *output[1:]) if isinstance(output, tuple) else spikes

    def record(name: str):
        def hook(_module, inputs):
            seen[name].append(inputs[0].detach().cpu())
        return hook

    handles = [m.register_forward_hook(random_spikes) for m in model.modules() if isinstance(m, SpikingNeuron)]
    handles += [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for rate[0] in PROBE_RATES:
            x = torch.randn(PROBE_BATCH, *model.input_spec.shape, generator=generator) * 3.0
            model.run_steps(x, timesteps=1)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: exact_grid(torch.cat([v.flatten() for v in values])) if values else None
            for name, values in seen.items()}


def int8_plan(model: SpikingModel, fp32_layers: Sequence[str] = ()) -> dict[str, float]:
    """name -> input scale of the layers an INT8 export quantizes: the spike-driven body Conv2d / Linear layers but
    `fp32_layers`. UserError for an unknown name, or when no layer is spike-driven (nothing to quantize)."""
    checked_layers(model, fp32_layers)
    grids = activation_grids(model)
    plan = {name: s for name, s in grids.items() if s is not None and name not in set(fp32_layers)}
    if not plan:
        raise UserError("--precision int8 found no spike-driven Conv2d or Linear to quantize (none left, or no layer's "
                        "input is made of spikes): export --precision fp32 or fp16")
    return plan


class QuantCompute(nn.Module):
    """A Conv2d or Linear with an INT8 input (grid step `input_scale`) and per-channel INT8 weights.

    forward, x [B, C, H, W] or [B, F]: q_x = round(x / s_x) (clamped to [-128, 127]); the integer sum
    conv(q_x, q_w), exact (float32 below 2^24, float64 beyond); times s_x * s_w [C_out]; plus the FP32 bias.
    weights="pair" adds conv(q_x, q_low) * s_x * s_w / 254: a second INT8 product with the first's rounding
    error, so the weights keep about 15 bits (as the fp16 export's pair keeps 22) for twice the INT8 work.
    `layer` holds the dequantized weights (q_w * s_w) and the bias: the ONNX export traces layer(x) and
    `qdq.insert_qdq` turns it into Q/DQ nodes (`graph_form`).

    half=True (int8+fp16): FP16 scales (`quantize_weight`), s_x rounded to FP16, the bias rounded to FP16, x and
    the output FP16. As the graph computes: a Conv's sum times s_x * s_w plus the bias in FP32, rounded once to
    FP16 (TensorRT's INT8 convolution with its bias and an FP16 output); a Linear's (MatMul) product rounded to
    FP16, then the bias added in FP16; a pair's halves each rounded to FP16 and summed in FP16. The buffers stay
    FP32 (their values are FP16 numbers); the traced layer is an FP16 copy (`graph_form`).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, name: str, input_scale: float, weights: str = "pair",
                 half: bool = False) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise InternalError(f"QuantCompute takes a Conv2d or Linear, got {type(layer).__name__}")
        if weights not in INT8_WEIGHTS:
            raise UserError(f"--int8-weights {weights!r} is not one of {', '.join(INT8_WEIGHTS)}")
        if weights == "pair" and isinstance(layer, nn.Conv2d) and layer.groups > 1:  # see qdq.insert_qdq
            raise UserError(f"{name} is a grouped Conv2d (groups={layer.groups}), which --int8-weights pair does not "
                            f"support (the graph computes a pair as extra output channels of one conv): export with "
                            f"--int8-weights single, or keep it in FP32 with --fp32-layers {name}")
        q, low, scale = quantize_pair(layer.weight, half)
        self.name = name
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        self.half = bool(half)
        self.input_scale = float(np.float16(input_scale)) if half else float(input_scale)
        self.register_buffer("q_weight", q.float())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("q_low", low.float() if weights == "pair" else None)
        with torch.no_grad():
            layer.weight.copy_(q.float() * scale.reshape(-1, *[1] * (q.dim() - 1)))
            if half and layer.bias is not None:
                layer.bias.copy_(layer.bias.half().float())
        self.layer = layer
        self.graph_form = False
        fan_in = int(np.prod(q.shape[1:]))
        self.wide = fan_in * QMAX * 128 >= EXACT_FP32_SUM  # integer sums could leave FP32's exact range

    def spec(self) -> LayerQuant:
        low = None if self.q_low is None else self.q_low.to(torch.int8).cpu().numpy()
        return LayerQuant(self.name, self.kind, self.input_scale, self.q_weight.to(torch.int8).cpu().numpy(),
                          self.weight_scale.float().cpu().numpy().astype(np.float32), low, self.half)

    def forward(self, x: Tensor) -> Tensor:
        if self.graph_form:
            return self.layer(x)
        steps = torch.round(x.float() / self.input_scale).clamp(-QMAX - 1, QMAX)
        shape = (1, -1, 1, 1) if self.kind == "conv" else (1, -1)
        scale = (self.input_scale * self.weight_scale).reshape(shape)
        bias = self.layer.bias
        out = self._integer_sum(steps, self.q_weight) * scale
        if not self.half:
            if self.q_low is not None:
                out = out + self._integer_sum(steps, self.q_low) * (scale / LOW_STEPS)
            return out if bias is None else out + bias.reshape(shape)
        if bias is not None and self.kind == "conv":  # the conv's bias is added before its output is rounded
            out = out + bias.reshape(shape)
        out = out.half()
        if self.q_low is not None:
            low = (self.input_scale * low_scale(self.weight_scale, True)).reshape(shape)
            out = out + (self._integer_sum(steps, self.q_low) * low).half()
        if bias is not None and self.kind == "linear":
            out = out + bias.half().reshape(shape)
        return out

    def _integer_sum(self, steps: Tensor, weight: Tensor) -> Tensor:
        """conv / linear of integer-valued tensors, exact (float64 where float32 could round), in x's dtype."""
        dtype = torch.float64 if self.wide else steps.dtype
        if self.kind == "conv":
            conv = self.layer
            acc = nn.functional.conv2d(steps.to(dtype), weight.to(dtype), None, conv.stride, conv.padding,
                                       conv.dilation, conv.groups)
        else:
            acc = nn.functional.linear(steps.to(dtype), weight.to(dtype))
        return acc.to(steps.dtype)


def apply_int8(model: SpikingModel, fp32_layers: Sequence[str] = (), weights: str = "pair",
               half: bool = False) -> SpikingModel:
    """In place, on an FP32 eval-mode copy: BN folded, the `int8_plan` layers as QuantCompute, the rest FP32.
    `half` (int8+fp16): QuantCompute in its FP16 form; precision.apply_int8_fp16 puts the rest in FP16."""
    fold_batchnorms(model.body)
    plan = int8_plan(model, fp32_layers)
    replace_layers(model, list(plan), lambda name, layer: QuantCompute(layer, name, plan[name], weights, half))
    return model


def quantized_layers(module: nn.Module) -> list[QuantCompute]:
    return [m for m in module.modules() if isinstance(m, QuantCompute)]


@contextlib.contextmanager
def graph_form(module: nn.Module) -> Iterator[None]:
    """While exporting: QuantCompute layers trace as their plain layer (an FP16 copy of it for int8+fp16, so the
    graph's weight, bias and scales are FP16); qdq.insert_qdq adds the Q/DQ nodes."""
    layers = quantized_layers(module)
    kept = [layer.layer for layer in layers]
    for layer in layers:
        layer.graph_form = True
        if layer.half:
            layer.layer = copy.deepcopy(layer.layer).half()
    try:
        yield
    finally:
        for layer, original in zip(layers, kept):
            layer.graph_form = False
            layer.layer = original
