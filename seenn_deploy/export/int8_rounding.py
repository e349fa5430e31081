"""INT8 weights chosen by spike counts: per-channel scale and rounding tuned on calibration data.

`--int8-weights single` rounds each weight to the nearest step of max|w_c| / 127. Rounding errors
that cancel on the layer's real inputs matter less than errors that add up, and only pre-activations
near the threshold flip spikes. So, layer by layer in module order, with the earlier layers already
tuned, each quantized layer gets candidates for every output channel:

* clip ratio r in `ratios` (scale = r * max|w_c| / 127, weights clamped to [-127, 127]);
* rounding "nearest"; "gptq": columns rounded one by one, each one's error pushed onto the
  columns not yet rounded through the inverse Gram matrix of the layer's calibration inputs
  (GPTQ, Frantar et al. 2023), which minimises the output's squared error instead of each weight's,
  then single weights moved by a step while that lowers it further (export/gptq.py);
  "gptq-risk": the same with each channel's own Gram matrix, of the inputs (output positions) whose
  FP32 membrane lies within gptq.RISK_WIDTH expected rounding errors of the threshold (the spikes
  rounding can flip), the other inputs weighted by gptq.RISK_BLEND; layers of fan-in up to
  RISK_MAX_FAN_IN whose next neuron sees the layer's output unchanged in shape;

and keeps, per channel, the candidate with the fewest spikes of the next neuron layer (over all T)
that differ from the FP32 model's, ties broken by the pre-activation's squared error, then by the
candidate's order (max-abs first). A layer's output channels feed its next neuron's channels one
to one (directly, or through BN and pools), so one calibration pass per candidate scores every
channel. A final pass checks the whole model: a layer whose choice flips more spikes in total
(all neuron layers) than max-abs keeps max-abs, so tuning never increases the calibration error.
A layer with no neuron after it (the classifier) is scored by its output's squared error alone.

The FP32 reference is the FP32 model with BN folded (as the INT8 layout folds it). Calibration
data comes from the train split, never test, and apart from the validation slice
(`calibration_set`). Deterministic: integer spike counts, Gram matrices of integer steps summed
exactly in float64, stable orders. Runs on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from seenn_deploy.data.dataset import ArrayDataset
from seenn_deploy.data.validation import ValidationSlice, sample_rows, validation_rows
from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.gptq import RISK_MAX_FAN_IN, LayerGram, gptq_round
from seenn_deploy.export.int8 import QMAX, QuantCompute, quantized_layers, weight_scales
from seenn_deploy.export.precision import fold_batchnorms, weighted_layers
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neurons import SpikingNeuron

DEFAULT_RATIOS = (1.0,)  # clip ratios tried per channel: r < 1 gained nothing on the FMNIST validation slice
ROUNDINGS = ("nearest", "gptq", "gptq-risk")
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Candidate:
    ratio: float
    rounding: str  # one of ROUNDINGS

    def describe(self) -> str:
        return f"{self.rounding}@{self.ratio:g}"


@dataclass
class LayerTuning:
    """One layer's choice. flips: spikes of `neuron` (all T, all calibration samples) that differ from FP32."""

    name: str
    neuron: str | None  # the neuron layer scored per channel; None: no neuron follows (scored by squared error)
    flips_before: int  # max-abs weights, earlier layers tuned
    flips_after: int
    error_before: float  # the layer's output against FP32: sum of squared differences
    error_after: float
    total_flips_before: int  # every neuron layer of the model
    total_flips_after: int
    accepted: bool  # False: the choice flipped more spikes in total than max-abs, which was kept
    channels: int
    choices: dict[str, int] = field(default_factory=dict)  # candidate ("gptq@0.97") -> channels that took it


@dataclass
class TuningReport:
    """Calibration spike flips of the whole model with max-abs weights (before) and tuned weights (after)."""

    samples: int
    timesteps: int
    spikes: int  # spike elements compared per pass: every neuron layer, every t
    neuron_flips_before: dict[str, int]
    neuron_flips_after: dict[str, int]
    layers: list[LayerTuning]
    passes: int
    seconds: float

    @property
    def flip_rate_before(self) -> float:
        return sum(self.neuron_flips_before.values()) / max(self.spikes, 1)

    @property
    def flip_rate_after(self) -> float:
        return sum(self.neuron_flips_after.values()) / max(self.spikes, 1)


def calibration_set(train: ArrayDataset, samples: int, validation: ValidationSlice | None = None,
                    seed: int = CALIBRATION_SEED) -> ArrayDataset:
    """`samples` rows of the train split `train`, none of them in `validation` (the checkpoint's slice), fixed by
    (rows, samples, seed): the data tuning is allowed to fit."""
    if samples < 1:
        raise UserError(f"--calib-samples {samples}: give at least 1 calibration sample (512 is a good start)")
    rows = np.arange(len(train))
    if validation is not None:
        if validation.train_rows is not None and validation.train_rows != len(train):
            raise UserError(f"the train split has {len(train)} samples but {validation.train_rows} when the "
                            f"validation slice was drawn: calibrate on the data the checkpoint was trained on")
        rows = validation_rows(len(train), validation.fraction, validation.seed)[0]
    if len(rows) == 0:
        raise UserError(f"data {train.name!r} has no training samples outside the validation slice to calibrate on")
    picked = rows[sample_rows(len(rows), min(samples, len(rows)), seed)]
    return train.take(picked, f"{train.name} (calibration, {len(picked)} samples)")


def planned_passes(model: nn.Module, ratios: Sequence[float] = DEFAULT_RATIOS) -> int:
    """Calibration passes `tune_int8_weights` makes at most (for a progress bar's total)."""
    return 1 + len(quantized_layers(model)) * (len(ratios) * len(ROUNDINGS) + 1)


@torch.no_grad()
def tune_int8_weights(model: SpikingModel, fp32_model: SpikingModel, batches: Sequence[Tensor],
                      timesteps: int | None, ratios: Sequence[float] = DEFAULT_RATIOS,
                      progress: Callable[[int], None] | None = None) -> TuningReport:
    """In place: each QuantCompute layer of `model` (apply_int8(..., weights="single")) gets the per-channel scale
    and INT8 weights that flip the fewest calibration spikes against `fp32_model` (see the module docstring).

    batches: normalised model inputs, [B, C, H, W] (static, run for `timesteps`) or [T, B, C, H, W] (events).
    progress(n): n more calibration passes done (planned_passes gives the total).
    """
    start = time.perf_counter()
    layers = _tunable_layers(model)
    batches = _checked_batches(model, batches, timesteps)
    ratios = _checked_ratios(ratios)
    reference, weights = _folded_reference(fp32_model, layers)
    model.eval()
    for layer in layers:  # start from max-abs, whatever the layers hold
        q, scale = _quantize(weights[layer.name].double().flatten(1), Candidate(1.0, "nearest"), None, _half(layer))
        _assign(layer, q, scale)
    order, target = _reference_trace(reference, batches, timesteps, [layer.name for layer in layers])
    runner = _Runner(model, batches, timesteps, target, progress)

    baseline = runner.run(_layer_gram(layers[0], target, weights))
    flips_before = dict(baseline.neuron_flips)
    tuned: list[LayerTuning] = []
    for i, layer in enumerate(layers):
        neuron = _next_neuron(order, layer, target)
        weight = weights[layer.name].double().flatten(1)
        candidates = [Candidate(r, rounding) for r in ratios for rounding in ROUNDINGS
                      if rounding == "nearest" or (rounding == "gptq" and _gptq_applies(layer))
                      or (rounding == "gptq-risk" and baseline.gram is not None and baseline.gram.risk is not None)]
        scores: list[_Pass] = []
        forms: list[tuple[Tensor, Tensor]] = []
        for k, candidate in enumerate(candidates):
            q, scale = _quantize(weight, candidate, baseline.gram, _half(layer))
            forms.append((q, scale))
            if k == 0:  # max-abs: the state `baseline` measured
                scores.append(baseline)
                continue
            _assign(layer, q.reshape(layer.q_weight.shape), scale)
            scores.append(runner.run())
        choice = _choose(scores, layer, neuron)
        q = torch.stack([forms[k][0][c] for c, k in enumerate(choice.tolist())])
        scale = torch.stack([forms[k][1][c] for c, k in enumerate(choice.tolist())])
        _assign(layer, q.reshape(layer.q_weight.shape), scale)
        following = _layer_gram(layers[i + 1], target, weights) if i + 1 < len(layers) else None
        after = runner.run(following)
        accepted = _not_worse(after, baseline, layer)
        if not accepted:
            _assign(layer, forms[0][0].reshape(layer.q_weight.shape), forms[0][1])
            after = runner.run(_layer_gram(layers[i + 1], target, weights) if following is not None else None)
        tuned.append(LayerTuning(
            name=layer.name, neuron=neuron,
            flips_before=int(baseline.flips_of(neuron, layer).sum()),
            flips_after=int(after.flips_of(neuron, layer).sum()),
            error_before=float(baseline.errors[layer.name].sum()), error_after=float(after.errors[layer.name].sum()),
            total_flips_before=baseline.total_flips, total_flips_after=after.total_flips, accepted=accepted,
            channels=len(choice),
            choices=_count_choices(candidates, choice) if accepted else {candidates[0].describe(): len(choice)}))
        baseline = after
    return TuningReport(
        samples=sum(_batch_size(x, timesteps) for x in batches), timesteps=runner.steps(batches[0]),
        spikes=baseline.spikes, neuron_flips_before=flips_before, neuron_flips_after=dict(baseline.neuron_flips),
        layers=tuned, passes=runner.passes, seconds=time.perf_counter() - start)


# -- inputs ------------------------------------------------------------------------------------

def _tunable_layers(model: nn.Module) -> list[QuantCompute]:
    if not isinstance(model, SpikingModel):
        raise UserError(f"tune_int8_weights takes a SpikingModel, got {type(model).__name__}: pass the model laid out "
                        "by apply_int8(model, weights='single')")
    layers = quantized_layers(model)
    if not layers:
        raise UserError("the model has no INT8 layers (QuantCompute) to tune: lay it out first with "
                        "apply_int8(model, weights='single') (export --precision int8 --int8-weights single)")
    pairs = [layer.name for layer in layers if layer.q_low is not None]
    if pairs:
        raise UserError(f"{', '.join(pairs)} hold pairs of INT8 weights, which tuning does not choose: lay the model "
                        "out with apply_int8(model, weights='single')")
    return layers


def _checked_batches(model: SpikingModel, batches: Sequence[Tensor], timesteps: int | None) -> list[Tensor]:
    batches = list(batches)
    expected = model.input_spec.shape
    for i, x in enumerate(batches):
        if not isinstance(x, Tensor) or x.dim() not in (4, 5) or tuple(x.shape[-3:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            c, h, w = expected
            raise UserError(f"calibration batch {i} has shape {got} but the model takes [B, {c}, {h}, {w}] images "
                            f"(or [T, B, {c}, {h}, {w}] events): calibrate on the data the model was trained on")
        if x.dim() == 4 and (timesteps is None or timesteps < 1):
            raise UserError("static calibration images need timesteps >= 1: pass the bundle's --timesteps")
    if sum(_batch_size(x, timesteps) for x in batches) == 0:
        raise UserError("no calibration samples: give --calib-samples >= 1 and training data to calibrate on "
                        "(--calib-data)")
    return [x.detach().float().cpu() for x in batches]


def _checked_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in ratios)
    if not ratios or ratios[0] != 1.0 or not all(0.0 < r <= 1.0 for r in ratios):
        raise UserError(f"clip ratios {ratios}: give values in (0, 1] starting with 1.0 (max-abs), e.g. 1.0 0.97 0.94")
    return ratios


def _batch_size(x: Tensor, timesteps: int | None) -> int:
    return int(x.shape[0] if x.dim() == 4 else x.shape[1])


def _folded_reference(fp32_model: SpikingModel, layers: list[QuantCompute]) -> tuple[SpikingModel, dict[str, Tensor]]:
    """An FP32 copy with BN folded, and each quantized layer's FP32 weight in it."""
    if not isinstance(fp32_model, SpikingModel):
        raise UserError(f"the FP32 reference is a {type(fp32_model).__name__}, not a SpikingModel: pass the model the "
                        "INT8 layout was made from")
    reference = copy.deepcopy(fp32_model).eval().to(device="cpu", dtype=torch.float32)
    if quantized_layers(reference):
        raise UserError("the FP32 reference already holds INT8 layers: pass the FP32 model, not an INT8 layout")
    fold_batchnorms(reference.body)
    named = weighted_layers(reference)
    weights = {}
    for layer in layers:
        fp32 = named.get(layer.name)
        if fp32 is None or tuple(fp32.weight.shape) != tuple(layer.q_weight.shape):
            raise UserError(f"the FP32 reference has no layer {layer.name} shaped like the INT8 one "
                            f"{list(layer.q_weight.shape)}: pass the model the INT8 layout was made from")
        weights[layer.name] = fp32.weight.detach().float().clone()
    return reference, weights


# -- quantization candidates -------------------------------------------------------------------

def _half(layer: QuantCompute) -> bool:
    """Whether the layer is in int8+fp16's form (FP16-exact scales)."""
    return bool(getattr(layer, "half", False))


def _gptq_applies(layer: QuantCompute) -> bool:
    return layer.kind == "linear" or layer.layer.groups == 1


def _quantize(weight: Tensor, candidate: Candidate, gram: LayerGram | None, half: bool) -> tuple[Tensor, Tensor]:
    """weight [C_out, n] float64 -> (q [C_out, n] float32 integers in [-127, 127], scale [C_out] float32 > 0)."""
    scale = weight_scales(weight, half, candidate.ratio)
    if candidate.rounding == "nearest" or gram is None or gram.total is None:
        q = torch.round(weight.float() / scale[:, None]).clamp(-QMAX, QMAX)
    elif candidate.rounding == "gptq":
        q = gptq_round(weight, scale.double(), gram.total, gram.total).float()
    else:
        q = gptq_round(weight, scale.double(), gram.risk_hessians(), gram.total).float()
    return q, scale


def _assign(layer: QuantCompute, q: Tensor, scale: Tensor) -> None:
    """Set a layer's INT8 weights, keeping QuantCompute's invariants: integers in [-127, 127], scale > 0,
    layer.weight == q * scale (what the ONNX export traces)."""
    q = q.reshape(layer.q_weight.shape).float()
    scale = scale.float()
    if not bool((q == q.round()).all()) or float(q.abs().max()) > QMAX or not bool((scale > 0).all()):
        raise InternalError(f"{layer.name}: tuned INT8 weights out of range")
    layer.q_weight.copy_(q)
    layer.weight_scale.copy_(scale)
    layer.layer.weight.copy_(q * scale.reshape(-1, *[1] * (q.dim() - 1)))


def _count_choices(candidates: list[Candidate], choice: Tensor) -> dict[str, int]:
    counts = torch.bincount(choice, minlength=len(candidates)).tolist()
    return {c.describe(): n for c, n in zip(candidates, counts) if n}


# -- calibration passes ------------------------------------------------------------------------

@dataclass
class _Target:
    spikes: list[dict[str, Tensor]]  # per batch: neuron name -> bool spikes [T*B, ...]
    outputs: list[dict[str, Tensor]]  # per batch: layer name -> FP32 output [T*B, C, ...]
    margins: list[dict[str, Tensor]]  # per batch: layer name -> its next neuron's charged membrane - threshold,
    # [T*B, C, ...] as the layer's output (layers whose neuron directly follows, same shape)


@dataclass
class _Pass:
    """One calibration pass of the INT8 model against the FP32 target."""

    neuron_flips: dict[str, int]
    spikes: int
    channel_flips: dict[str, Tensor]  # neuron name -> [C] flips per channel (dim 1)
    errors: dict[str, Tensor]  # layer name -> [C] squared error of its output
    gram: LayerGram | None

    @property
    def total_flips(self) -> int:
        return sum(self.neuron_flips.values())

    def flips_of(self, neuron: str | None, layer: QuantCompute) -> Tensor:
        """[C]: the flips of `neuron` per channel of `layer`'s output (zeros without a neuron)."""
        if neuron is None:
            return torch.zeros(layer.q_weight.shape[0], dtype=torch.long)
        return self.channel_flips[neuron]


def _run(model: SpikingModel, x: Tensor, timesteps: int | None):
    return model.run_steps(x, None if x.dim() == 5 else timesteps)


def _reference_trace(reference: SpikingModel, batches: list[Tensor], timesteps: int | None,
                     layer_names: list[str]) -> tuple[list[str], _Target]:
    """The FP32 model's spikes, layer outputs and membrane margins per batch, and the order in which layers and
    neurons ran."""
    named = weighted_layers(reference)
    order: list[str] = []
    outputs: dict[str, Tensor] = {}
    margins: dict[str, Tensor] = {}
    last = [None]  # the quantized layer that ran last, while its output is the next module's input

    def layer_hook(name: str):
        def hook(_module, _inputs, out):
            outputs[name] = out.detach()
            last[0] = name
            if name not in order:
                order.append(name)
        return hook

    def neuron_hook(name: str):
        def hook(neuron, inputs, _out):
            fed = last[0]
            # A native neuron runs (x [T*B, ...], frame); a foreign model's (adapters) one step at a time (x): its
            # margins are not gathered, and its layers go without the near-threshold candidate.
            if len(inputs) > 1 and fed is not None and tuple(outputs[fed].shape) == tuple(inputs[0].shape):
                margins[fed] = _membrane_margins(neuron, inputs[0], inputs[1].timesteps)
            last[0] = None
            if name not in order:
                order.append(name)
        return hook

    handles = [named[name].register_forward_hook(layer_hook(name)) for name in layer_names]
    handles += [m.register_forward_hook(neuron_hook(name)) for name, m in reference.named_modules()
                if isinstance(m, SpikingNeuron)]
    target = _Target([], [], [])
    try:
        for x in batches:
            outputs, margins, last[0] = {}, {}, None
            _, frame = _run(reference, x, timesteps)
            target.spikes.append({k: v.bool() for k, v in frame.spikes.items()})
            target.outputs.append(outputs)
            target.margins.append(margins)
    finally:
        for handle in handles:
            handle.remove()
    return order, target


def _membrane_margins(neuron: SpikingNeuron, x: Tensor, timesteps: int) -> Tensor:
    """x [T*B, ...] from rest -> the charged membrane minus the threshold at each t, [T*B, ...] (>= 0: a spike)."""
    v = torch.full_like(x[: len(x) // timesteps], neuron.v_init)
    out = []
    for x_t in x.chunk(timesteps):
        out.append(neuron.charge(x_t, v) - neuron.v_threshold)
        _, v = neuron.step(x_t, v)
    return torch.cat(out)


def _next_neuron(order: list[str], layer: QuantCompute, target: _Target) -> str | None:
    """The first neuron layer run after `layer` whose channels are the layer's output channels, or None (the
    classifier, or a neuron that mixes channels: the layer is then scored by its output's squared error)."""
    if layer.name not in order:
        raise InternalError(f"{layer.name} did not run in the FP32 reference")
    spikes = target.spikes[0]
    for name in order[order.index(layer.name) + 1:]:
        if name in spikes:
            return name if spikes[name].dim() >= 2 and spikes[name].shape[1] == layer.q_weight.shape[0] else None
    return None


class _Runner:
    """Runs the INT8 model over the calibration batches and compares it with the FP32 target."""

    def __init__(self, model: SpikingModel, batches: list[Tensor], timesteps: int | None, target: _Target,
                 progress: Callable[[int], None] | None) -> None:
        self.model, self.batches, self.timesteps, self.target = model, batches, timesteps, target
        self.progress = progress
        self.layers = quantized_layers(model)
        self.passes = 0

    def steps(self, x: Tensor) -> int:
        return int(x.shape[0]) if x.dim() == 5 else int(self.timesteps)

    def run(self, gram: LayerGram | None = None) -> _Pass:
        """A pass: every neuron's flips (in all and per channel), every layer's squared error per channel, and
        `gram` filled from its layer's inputs."""
        errors = {layer.name: torch.zeros(layer.q_weight.shape[0], dtype=torch.float64) for layer in self.layers}
        outputs: dict[str, Tensor] = {}
        handles = [layer.register_forward_hook(lambda m, _i, out: outputs.__setitem__(m.name, out))
                   for layer in self.layers]
        batch = [0]
        if gram is not None:
            handles.append(gram.layer.register_forward_pre_hook(lambda _m, inputs: gram.add(inputs[0], batch[0])))
        neuron_flips: dict[str, int] = {}
        channel_flips: dict[str, Tensor] = {}
        spikes = 0
        try:
            for batch[0], (x, ref_spikes, ref_outputs) in enumerate(
                    zip(self.batches, self.target.spikes, self.target.outputs)):
                outputs.clear()
                _, frame = _run(self.model, x, self.timesteps)
                for name, out in outputs.items():
                    diff = (out.double() - ref_outputs[name].double()) ** 2
                    errors[name] += diff.transpose(0, 1).reshape(diff.shape[1], -1).sum(1)
                for name, ref in ref_spikes.items():
                    differ = frame.spikes[name].bool() != ref
                    neuron_flips[name] = neuron_flips.get(name, 0) + int(differ.sum())
                    spikes += ref.numel()
                    if differ.dim() >= 2:
                        per_channel = differ.transpose(0, 1).reshape(differ.shape[1], -1).sum(1)
                        channel_flips[name] = channel_flips.get(name, 0) + per_channel
        finally:
            for handle in handles:
                handle.remove()
        self.passes += 1
        if self.progress is not None:
            self.progress(1)
        return _Pass(neuron_flips, spikes, channel_flips, errors, gram)


def _layer_gram(layer: QuantCompute, target: _Target, weights: dict[str, Tensor]) -> LayerGram:
    """The Gram matrices to gather for `layer`: per channel too where its next neuron's margins are known."""
    fan_in = int(np.prod(layer.q_weight.shape[1:]))
    per_channel = layer.name in target.margins[0] and fan_in <= RISK_MAX_FAN_IN and _gptq_applies(layer)
    return LayerGram(layer, [m[layer.name] for m in target.margins] if per_channel else None,
                     weight_scales(weights[layer.name], _half(layer)))


def _choose(scores: list[_Pass], layer: QuantCompute, neuron: str | None) -> Tensor:
    """Per channel [C]: the candidate with the fewest flips, then the least squared error, then the first."""
    flips = torch.stack([s.flips_of(neuron, layer) for s in scores])  # [K, C]
    errors = torch.stack([s.errors[layer.name] for s in scores])
    fewest = flips == flips.min(dim=0).values
    masked = torch.where(fewest, errors, torch.full_like(errors, float("inf")))
    best = fewest & (masked == masked.min(dim=0).values)
    return best.int().argmax(dim=0)  # the first of equals: candidates go from max-abs outwards


def _not_worse(after: _Pass, before: _Pass, layer: QuantCompute) -> bool:
    """Whole-model check: no more flips in total, and (equal flips) no more squared error in the layer."""
    a = (after.total_flips, float(after.errors[layer.name].sum()))
    b = (before.total_flips, float(before.errors[layer.name].sum()))
    return a <= b
