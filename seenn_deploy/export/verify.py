"""`verify`: the torch reference (multi-step, from the source checkpoint) against the bundle's ONNX step loop.

Predictions and logits are compared on the shipped graphs. Spikes are read from the shipped
step graph too: every `Cast(GreaterOrEqual | Greater)` there is a neuron's spike output, and an
ONNX Runtime session over a copy of the graph with those tensors added as outputs returns them.

Foreign bundles (SpikingJelly, snnTorch) are checked against their framework instead
(`verify_foreign`): the framework's outputs stored at export (`ReferenceSet`, reference.npz),
and, when the model can be rebuilt from its recorded factory and weights, the framework rerun on
the data. A model that loops over time itself is also checked through its own call, loop
included, never only the way the export runs it.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from seenn_deploy.data import ArrayDataset, Normalisation
from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.ort import OrtExecutor
from seenn_deploy.runtime.loop import run_timesteps
from seenn_deploy.runtime.manifest import Manifest
from seenn_deploy.snn.model import SpikingModel

if TYPE_CHECKING:
    from torch import nn

    from seenn_deploy.export.adapters.time_loop import StepPlan

SPIKE_COMPARES = ("GreaterOrEqual", "Greater")
# Defaults: FP32 must agree exactly up to rare ties; FP16 rounds membranes, so some spikes flip; INT8 rounds
# only weights (pair: ~15 bits, flips 2e-6 on Fashion-MNIST; single: 8 bits, flips 7e-4, agreement 98.6-99.5 %).
# int8+fp16 rounds the weights as int8 and, in FP16, the analog input layer's output and the membranes, so spikes
# flip from the first layer on: pair weights agreed 99.3-99.8 % on Fashion-MNIST and 98.2-99.3 % on the CIFAR-10
# short model (ORT and torch backends, t = 1..4, flips 3e-4..5e-3).
TOLERANCES = {"fp32": (0.999, 1e-4), "fp16": (0.99, 1e-2), "int8": (0.99, 1e-2), "int8+fp16": (0.98, 1e-2)}
# FP32 bundles flip 1e-7..1e-6 of spikes (summation order decides exact ties at the threshold):
# below this, a layer's flips say nothing about FP16.
HINT_MIN_FLIP_RATE = 1e-6
REFERENCE_FILE = "reference.npz"
# Foreign bundles have no spike check (the framework's neurons are not the graph's): a sample whose accumulated
# logits differ from the framework's by more than this at some t counts as a mismatch. INT8 as FP16: with no spike
# flipped, rounded weights move the logits by 1e-4 (pair) to 1e-2 (single) on the snnTorch net of
# tests/export/test_verify_foreign.py; a flip moves them by about a weight (0.2-0.6 there) and counts.
LOGIT_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "int8": 5e-2, "int8+fp16": 5e-2}


@dataclass
class VerifyReport:
    samples: int
    timesteps: int
    precision: str
    backend: str  # what ran the bundle: "ort" (the ONNX graphs, CPU provider) or "torch" (its layout on torch ops)
    agreement: list[float]  # per t: share of samples whose prediction matches the reference
    max_logit_diff: list[float]  # per t: max |logit difference| (accumulated-mean logits)
    spike_flip_rate: float  # mismatched spike elements / all spike elements, over layers and t
    spike_layers: int
    layer_flip_rates: dict[str, float]  # per neuron layer (the model's module name), in module order
    reference_accuracy: list[float] | None
    bundle_accuracy: list[float] | None
    min_agreement: float
    max_flip_rate: float
    hint: str | None = None  # fp16 with flips: which layer to keep in FP32; int8 single weights short: the pair
    checks: list[ReferenceCheck] = field(default_factory=list)  # foreign bundles: each comparison made
    problems: list[str] = field(default_factory=list)  # foreign bundles: what fails outright

    @property
    def passed(self) -> bool:
        return (min(self.agreement) >= self.min_agreement and self.spike_flip_rate <= self.max_flip_rate
                and all(check.passed for check in self.checks) and not self.problems)

    def to_dict(self) -> dict:
        return {**asdict(self), "checks": [c.to_dict() for c in self.checks], "passed": self.passed}


@dataclass
class ReferenceCheck:
    """A foreign bundle against its framework on one set of samples (`source`): per-t agreement and logits, and
    for a time-looped model the bundle at the model's own T against the model's own call."""

    source: str  # "framework on DATA" or "reference set stored at export"
    samples: int
    agreement: list[float]  # per t: share of samples whose prediction matches the framework's
    max_logit_diff: list[float]  # per t: max |difference| of the accumulated-mean logits
    mismatch_rate: float  # share of samples whose accumulated logits differ past `tolerance` at some t
    tolerance: float
    min_agreement: float
    loop_timesteps: int | None = None
    loop_agreement: float | None = None  # the model's own call against the bundle after loop_timesteps steps
    loop_max_logit_diff: float | None = None

    @property
    def passed(self) -> bool:
        loop_ok = self.loop_agreement is None or self.loop_agreement >= self.min_agreement
        return min(self.agreement) >= self.min_agreement and self.mismatch_rate <= 1 - self.min_agreement and loop_ok

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ReferenceSet:
    """What a foreign framework computed at export, kept in the bundle for `verify`.

    x [N, C, H, W]: the model's input (normalised as the model expects); logits [T, N, K]: the
    framework's per-step outputs from rest. A time-looped model adds its own call's output
    (model_output: [N, K] for a mean over its model_timesteps steps, [n, N, K] for a stack).
    """

    x: np.ndarray
    logits: np.ndarray
    model_output: np.ndarray | None = None
    model_timesteps: int | None = None

    def to_bytes(self) -> bytes:
        arrays = {"x": np.asarray(self.x, np.float32), "logits": np.asarray(self.logits, np.float32)}
        if self.model_output is not None:
            arrays["model_output"] = np.asarray(self.model_output, np.float32)
            arrays["model_timesteps"] = np.asarray(self.model_timesteps, np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def read(cls, path: Path) -> ReferenceSet:
        """The set in `path`; UserError when it is missing or not one (a bundle from an older export, or damaged)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the reference set {path} ({exc}): re-export the bundle") from None
        missing = {"x", "logits"} - set(arrays)
        x, logits = arrays.get("x"), arrays.get("logits")
        if missing or x.ndim != 4 or logits.ndim != 3 or logits.shape[1] != len(x):
            raise UserError(f"{path} is not a reference set (arrays x [N, C, H, W] and logits [T, N, K]): re-export "
                            "the bundle")
        steps = arrays.get("model_timesteps")
        return cls(x=x.astype(np.float32), logits=logits.astype(np.float32), model_output=arrays.get("model_output"),
                   model_timesteps=None if steps is None else int(steps))


def spike_tensor_names(step_onnx: Path) -> list[str]:
    """Names of the spike tensors (Cast of a threshold comparison) in graph order."""
    onnx = require("onnx", "verify")
    graph = onnx.load(str(step_onnx), load_external_data=False).graph
    compares = {out for node in graph.node if node.op_type in SPIKE_COMPARES for out in node.output}
    return [node.output[0] for node in graph.node if node.op_type == "Cast" and node.input[0] in compares]


def with_outputs(step_onnx: Path, names: list[str]) -> bytes:
    """The step graph with `names` added as (untyped) outputs."""
    onnx = require("onnx", "verify")
    proto = onnx.load(str(step_onnx))
    for name in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString()


@torch.no_grad()
def reference_trace(model: SpikingModel, x: np.ndarray, normalisation: Normalisation, timesteps: int,
                    batch_size: int, device: str = "cpu") -> tuple[np.ndarray, list[np.ndarray]]:
    """Torch multi-step on `device` (TF32 off): logits [T, N, K] and each neuron layer's spikes [T, N, ...] by module
    name, in module order."""
    from seenn_deploy.runtime.executors.torch_executor import full_fp32
    from seenn_deploy.train.batches import model_input

    model = model.to(device)
    logits, spikes = [], []
    for start in range(0, len(x), batch_size):
        xb = model_input(x[start : start + batch_size], normalisation, timesteps).to(device)
        with full_fp32(torch):
            out, frame = model.run_steps(xb, timesteps)
        logits.append(out.float().cpu().numpy())
        spikes.append({name: s.reshape(timesteps, -1, *s.shape[1:]).float().cpu().numpy()
                       for name, s in frame.spikes.items()})
    layers = {name: np.concatenate([batch[name] for batch in spikes], axis=1) for name in spikes[0]}
    return np.concatenate(logits, axis=1), layers


def cumulative_mean(logits: np.ndarray) -> np.ndarray:
    return np.cumsum(logits.astype(np.float64), axis=0) / np.arange(1, len(logits) + 1).reshape(-1, 1, 1)


def verify_bundle(bundle: Path, manifest: Manifest, model: SpikingModel, data: ArrayDataset,
                  normalisation: Normalisation, batch_size: int = 256, min_agreement: float | None = None,
                  max_flip_rate: float | None = None, progress: Callable[[int], None] | None = None,
                  backend: str = "ort", providers: list | None = None, device: str = "cpu") -> VerifyReport:
    """Compare per-step predictions, logits and spikes of the bundle with the torch model on `data`.

    backend "ort": the shipped graphs on ONNX Runtime's CPU provider, spikes read from the step
    graph; it runs FP16 layers in FP32 on the FP16 weights (outputs unrounded). "torch": the
    bundle's layout (precision, FP32 layers, FP16 weights, the step graph's INT8 weights: bundle_layout) on torch
    ops, multi-step, spikes
    from its neurons: real FP16 arithmetic for an fp16 bundle. `providers` (ort) and `device` (torch: cpu
    or cuda:N) say where the bundle side runs; the reference runs on the CPU.
    """
    steps = manifest.timesteps
    default_agreement, default_flips = TOLERANCES[manifest.precision]
    ref_logits, ref_spikes = reference_trace(model.float().eval(), data.x, normalisation, steps, batch_size)
    if backend == "ort":
        step_path = Path(bundle) / manifest.graphs["step"]
        spike_names = spike_tensor_names(step_path)
        if len(ref_spikes) != len(spike_names):
            raise UserError(f"the step graph has {len(spike_names)} spike tensors but the model {len(ref_spikes)} "
                            "neuron layers: the bundle does not come from this model")
        step = OrtExecutor(with_outputs(step_path, spike_names), providers, label=manifest.graphs["step"])
        encoder = OrtExecutor(Path(bundle) / manifest.graphs["encoder"], providers) if manifest.has_encoder else None
        trace = run_timesteps(manifest, step, data.x, steps, encoder, batch_size, tuple(spike_names), progress)
        logits, prediction = trace.logits, trace.prediction
        spikes = {layer: (name, trace.extra[name]) for name, layer in zip(spike_names, ref_spikes)}
    elif backend == "torch":
        from seenn_deploy.export.bundle_layout import bundle_layout

        laid_out = bundle_layout(model, bundle, manifest)
        logits, layer_spikes = reference_trace(laid_out, data.x, normalisation, steps, batch_size, device)
        prediction = cumulative_mean(logits).argmax(-1)
        spikes = {layer: (layer, got) for layer, got in layer_spikes.items()}
        if progress is not None:
            progress(len(data))
    else:
        raise UserError(f"--backend {backend!r} is not one of ort, torch")
    ref_mean = cumulative_mean(ref_logits)
    ref_pred = ref_mean.argmax(-1)
    bundle_mean = cumulative_mean(logits.astype(np.float64))
    agreement = (prediction == ref_pred).mean(axis=1)
    max_diff = np.abs(bundle_mean - ref_mean).max(axis=(1, 2))
    flips = total = 0
    layer_flip_rates = {}
    for layer, ref in ref_spikes.items():
        name, got = spikes[layer]
        if got.shape != ref.shape:
            raise UserError(f"spike tensor {name} is {list(got.shape)} in the graph and {list(ref.shape)} in the model: "
                            "the bundle does not come from this model")
        layer_flips = int((got.astype(np.float32) != ref).sum())
        layer_flip_rates[layer] = layer_flips / max(ref.size, 1)
        flips += layer_flips
        total += ref.size
    labels = data.y
    floor = default_agreement if min_agreement is None else min_agreement
    hint = fp32_hint(model, layer_flip_rates, manifest) if manifest.precision == "fp16" else None
    if manifest.precision.startswith("int8") and manifest.fp16_weights == "single" and min(agreement) < floor:
        tuned = "int8_tuning" in manifest.provenance
        measured = ", agreement >= 99.97 % on Fashion-MNIST and CIFAR-10" if manifest.precision == "int8" else ""
        hint = (f"{'tuned ' if tuned else ''}single INT8 weights keep 8 bits: export with --int8-weights pair (the "
                f"default: about 15 bits{measured})"
                f"{'' if tuned else ', or --int8-weights tuned (single weights chosen on calibration data)'}")

    def accuracy(pred: np.ndarray) -> list[float] | None:
        return None if labels is None else [float(v) for v in (pred == labels).mean(axis=1)]

    return VerifyReport(
        samples=len(data), timesteps=steps, precision=manifest.precision, backend=backend,
        agreement=[float(a) for a in agreement], max_logit_diff=[float(d) for d in max_diff],
        spike_flip_rate=flips / max(total, 1), spike_layers=len(ref_spikes),
        layer_flip_rates=layer_flip_rates,
        hint=hint,
        reference_accuracy=accuracy(ref_pred), bundle_accuracy=accuracy(prediction),
        min_agreement=floor,
        max_flip_rate=default_flips if max_flip_rate is None else max_flip_rate,
    )


def fp32_hint(model: SpikingModel, layer_flip_rates: dict[str, float], manifest: Manifest) -> str | None:
    """For an FP16 bundle: the first neuron layer (module order) that flips and is fed by an FP16 layer (the
    last Conv2d or Linear before it), to keep in FP32 with `export --fp32-layers`. Flips start there and
    spread: later layers flip more often, mostly because their inputs flipped, so the worst rate misleads."""
    from seenn_deploy.export.precision import fp16_layers, weighted_layers

    names = [name for name, _ in model.named_modules()]
    weighted, half = set(weighted_layers(model)), set(fp16_layers(model, manifest.fp32_layers))
    for neuron, rate in layer_flip_rates.items():
        before = [n for n in names[: names.index(neuron)] if n in weighted] if neuron in names else []
        if rate > HINT_MIN_FLIP_RATE and before and before[-1] in half:
            keep = ",".join([*manifest.fp32_layers, before[-1]])
            return (f"flips start at {neuron} ({rate:.1e}), fed by {before[-1]} in FP16: export with "
                    f"--precision fp16 --fp32-layers {keep} to keep it in FP32")
    return None


# -- foreign bundles ------------------------------------------------------------------------------
def verify_foreign(bundle: Path, manifest: Manifest, *, data: ArrayDataset | None = None,
                   module: nn.Module | None = None, batch_size: int = 256, min_agreement: float | None = None,
                   progress: Callable[[int], None] | None = None, providers: list | None = None) -> VerifyReport:
    """Check a foreign bundle against its framework: on the reference set stored at export, and, given the rebuilt
    `module` and `data`, the framework rerun on the data (normalised as the bundle normalises it).

    The rebuilt model's step pattern is detected anew, and the framework runs as detected, never
    as the bundle records: a bundle exported another way fails. A time-looped model is also run
    through its own call, loop included, against the bundle after the model's own T steps.
    """
    from seenn_deploy.runtime.bundle import bundle_path
    from seenn_deploy.runtime.loop import open_bundle_graphs

    foreign = manifest.provenance.get("foreign")
    if not isinstance(foreign, dict):
        raise UserError(f"{bundle} is not a foreign bundle (its manifest records no foreign framework)")
    rel = foreign.get("reference")
    if not isinstance(rel, str):
        raise UserError(f"{bundle} stores no reference set (exported before verify could check foreign bundles): "
                        "re-export it with this version")
    stored = ReferenceSet.read(bundle_path(bundle, rel, "reference set"))
    agreement_floor = TOLERANCES[manifest.precision][0] if min_agreement is None else min_agreement
    tolerance = LOGIT_TOLERANCE[manifest.precision]
    problems: list[str] = []
    loop_steps = (foreign.get("time_loop") or {}).get("timesteps")
    steps = max(manifest.timesteps, loop_steps or 0)
    step, encoder = open_bundle_graphs(Path(bundle), manifest, providers)
    with step:
        identity = dataclasses.replace(manifest, input=dataclasses.replace(
            manifest.input, mean=(0.0,) * len(manifest.input.mean), std=(1.0,) * len(manifest.input.std)))
        trace = run_timesteps(identity, step, _as_input(manifest, stored.x, steps), steps, encoder, batch_size)
        checks = [_reference_check("reference set stored at export", trace.logits, trace.prediction, stored.logits,
                                   stored.model_output, stored.model_timesteps, tolerance, agreement_floor)]
        labels, ref_pred, bundle_pred = None, None, None
        if module is not None and data is not None:
            plan, found = _detected_plan(module, manifest, foreign)
            problems += found
            steps = max(manifest.timesteps, plan.loop.timesteps if plan.loop else 0)
            ref_logits, own = _framework_outputs(module, manifest, plan, foreign.get("readout", "spikes"), data.x,
                                                 steps, batch_size)
            trace = run_timesteps(manifest, step, data.x, steps, encoder, batch_size, progress=progress)
            checks.insert(0, _reference_check(f"{foreign.get('framework', 'framework')} on {data.name}", trace.logits,
                                              trace.prediction, ref_logits[: manifest.timesteps], own,
                                              plan.loop.timesteps if plan.loop else None, tolerance, agreement_floor))
            labels = data.y
            ref_pred = cumulative_mean(ref_logits[: manifest.timesteps]).argmax(-1)
            bundle_pred = trace.prediction[: manifest.timesteps]
        if encoder is not None:
            encoder.close()
    main = checks[0]

    def accuracy(pred: np.ndarray | None) -> list[float] | None:
        return None if labels is None or pred is None else [float(v) for v in (pred == labels).mean(axis=1)]

    return VerifyReport(
        samples=main.samples, timesteps=manifest.timesteps, precision=manifest.precision, backend="ort",
        agreement=main.agreement, max_logit_diff=main.max_logit_diff, spike_flip_rate=0.0, spike_layers=0,
        layer_flip_rates={}, reference_accuracy=accuracy(ref_pred), bundle_accuracy=accuracy(bundle_pred),
        min_agreement=agreement_floor, max_flip_rate=TOLERANCES[manifest.precision][1], checks=checks,
        problems=problems,
    )


def _as_input(manifest: Manifest, x: np.ndarray, steps: int) -> np.ndarray:
    """Static samples [N, C, H, W] as the bundle takes them: repeated into `steps` frames for an event bundle."""
    if manifest.input.kind == "event":
        return np.repeat(x[:, None], steps, axis=1)
    return x


def _reference_check(source: str, logits: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                     model_output: np.ndarray | None, model_timesteps: int | None, tolerance: float,
                     min_agreement: float) -> ReferenceCheck:
    """Bundle logits [S, N, K] and predictions [S, N] (S >= T) against the framework's per-step logits [T, N, K]."""
    steps = len(reference)
    ref_mean = cumulative_mean(reference)
    bundle_mean = cumulative_mean(logits)
    diff = np.abs(bundle_mean[:steps] - ref_mean)
    check = ReferenceCheck(
        source=source, samples=reference.shape[1],
        agreement=[float(a) for a in (prediction[:steps] == ref_mean.argmax(-1)).mean(axis=1)],
        max_logit_diff=[float(d) for d in diff.max(axis=(1, 2))],
        mismatch_rate=float((diff.max(axis=2) > tolerance).any(axis=0).mean()), tolerance=tolerance,
        min_agreement=min_agreement,
    )
    if model_output is not None and model_timesteps is not None:
        n = int(model_timesteps)
        if model_output.ndim == 2:  # the mean over the model's own n steps
            got, own = bundle_mean[n - 1], model_output.astype(np.float64)
        else:  # the stacked steps
            got, own = logits[:n].astype(np.float64), model_output.astype(np.float64)
        check.loop_timesteps = n
        check.loop_agreement = float((got.argmax(-1) == own.argmax(-1)).mean())
        check.loop_max_logit_diff = float(np.abs(got - own).max())
    return check


def _detected_plan(module: nn.Module, manifest: Manifest, foreign: dict) -> tuple[StepPlan, list[str]]:
    """How the rebuilt model runs over time, detected anew (never taken from the bundle), and a problem when the
    bundle was exported another way."""
    from seenn_deploy.export.adapters import detect_framework, get_adapter
    from seenn_deploy.export.adapters.time_loop import plan_steps

    adapter = get_adapter(detect_framework(module))
    plan = plan_steps(module, adapter, tuple(manifest.step_input_shape), None, foreign.get("readout", "spikes"))
    found = {"step_mode": "m" if plan.multi_step else "s", "time_loop": plan.loop.to_dict() if plan.loop else None}
    recorded = {"step_mode": foreign.get("step_mode"), "time_loop": foreign.get("time_loop")}
    if found == recorded:
        return plan, []
    return plan, [f"the model runs {_describe_plan(found)}, but the bundle was exported {_describe_plan(recorded)}: "
                  "re-export it with this version"]


def _describe_plan(plan: dict) -> str:
    loop = plan.get("time_loop")
    if not loop:
        return f"in step mode {plan.get('step_mode')!r} with no loop of its own"
    return (f"its own {loop.get('timesteps')}-step loop over {loop.get('inner')!r} (step mode "
            f"{loop.get('step_mode')!r}, {loop.get('reduction')})")


def _framework_outputs(module: nn.Module, manifest: Manifest, plan: StepPlan, readout: str, x: np.ndarray, steps: int,
                       batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The framework's per-step logits [steps, N, K] on raw samples x (normalised as the bundle does), run as `plan`
    says, and a time-looped model's own call ([N, K] or [n, N, K]), None for others."""
    from seenn_deploy.export.adapters import detect_framework, get_adapter
    from seenn_deploy.export.foreign import own_output
    from seenn_deploy.runtime.loop import check_samples, normalise

    check_samples(manifest, x)
    if manifest.input.kind == "event":
        raise UserError("verify reruns the framework on static samples only; event bundles are checked on the "
                        "stored reference set (omit the factory weights)")
    adapter = get_adapter(detect_framework(module))
    model = module.eval().cpu()
    inner = plan.module(model)
    logits, own = [], []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(normalise(manifest, x[start : start + batch_size]))
        logits.append(adapter.reference(inner, xb, steps, plan.multi_step, readout).float().numpy())
        if plan.loop is not None:
            own.append(own_output(model, xb, adapter, readout).float().numpy())
    own_all = None
    if plan.loop is not None:
        own_all = np.concatenate(own, axis=0 if plan.loop.reduction == "mean" else 1)
    return np.concatenate(logits, axis=1), own_all
