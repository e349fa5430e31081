"""`verify`: the torch reference (multi-step, from the source checkpoint) against the bundle's ONNX step loop.

Predictions and logits are compared on the shipped graphs. Spikes are read from the shipped
step graph too: every `Cast(GreaterOrEqual | Greater)` there is a neuron's spike output, and an
ONNX Runtime session over a copy of the graph with those tensors added as outputs returns them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seenn_deploy.data import ArrayDataset, Normalisation
from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.ort import OrtExecutor
from seenn_deploy.runtime.loop import run_timesteps
from seenn_deploy.runtime.manifest import Manifest
from seenn_deploy.snn.model import SpikingModel

SPIKE_COMPARES = ("GreaterOrEqual", "Greater")
# Defaults: FP32 must agree exactly up to rare ties; FP16 rounds membranes, so some spikes flip.
TOLERANCES = {"fp32": (0.999, 1e-4), "fp16": (0.99, 1e-2)}
# FP32 bundles flip 1e-7..1e-6 of spikes (summation order decides exact ties at the threshold):
# below this, a layer's flips say nothing about FP16.
HINT_MIN_FLIP_RATE = 1e-6


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
    hint: str | None = None  # fp16 with flips: which layer to keep in FP32

    @property
    def passed(self) -> bool:
        return min(self.agreement) >= self.min_agreement and self.spike_flip_rate <= self.max_flip_rate

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


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
    bundle's layout (precision, FP32 layers, FP16 weights) on torch ops, multi-step, spikes
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
        from seenn_deploy.export.precision import for_precision

        laid_out = for_precision(model, manifest.precision, manifest.fp32_layers, manifest.fp16_weights)
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
    hint = fp32_hint(model, layer_flip_rates, manifest) if manifest.precision == "fp16" else None

    def accuracy(pred: np.ndarray) -> list[float] | None:
        return None if labels is None else [float(v) for v in (pred == labels).mean(axis=1)]

    return VerifyReport(
        samples=len(data), timesteps=steps, precision=manifest.precision, backend=backend,
        agreement=[float(a) for a in agreement], max_logit_diff=[float(d) for d in max_diff],
        spike_flip_rate=flips / max(total, 1), spike_layers=len(ref_spikes),
        layer_flip_rates=layer_flip_rates,
        hint=hint,
        reference_accuracy=accuracy(ref_pred), bundle_accuracy=accuracy(prediction),
        min_agreement=default_agreement if min_agreement is None else min_agreement,
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
