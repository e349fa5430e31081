"""The torch module that becomes step.onnx: one timestep of the step contract.

    step(x, reset, s_1 .. s_n, acc, count) -> (confidence, prediction, logits, s_1' .. s_n', acc', count')

Where `reset` is set, that row's states take their initial values before the step. The exit
head is fused: accumulated logits (`acc`) and the per-row step counter (`count`) are states, and
the graph outputs the confidence (max softmax of the accumulated logits) and its argmax. Nothing
depends on t, so rows at different timesteps share a batch.

Importing this module registers `graph_modules` with the runtime's torch executor, which imports
it by name: the runtime itself never imports the export package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.precision import compute_dtype
from seenn_deploy.runtime.executors.torch_executor import register_module_source
from seenn_deploy.runtime.manifest import Manifest, StateInfo
from seenn_deploy.snn.model import SpikingModel

ACC, COUNT = "exit.acc_logits", "exit.count"


def graph_states(model: SpikingModel) -> list[StateInfo]:
    """The model's states, in the laid-out model's compute type (float16 for int8+fp16: precision.compute_dtype), plus
    the exit head's, always FP32: accumulated logits [K] and the step counter []. K + 1 numbers per sample cost
    nothing in FP32, and in FP16 summed logits over long runs, or divided by a small temperature, overflow to inf
    and the softmax to NaN."""
    dtype = str(compute_dtype(model)).removeprefix("torch.")
    specs = [StateInfo(s.name, tuple(s.shape), s.init, dtype) for s in model.state_specs()]
    return specs + [StateInfo(ACC, (model.num_classes,), 0.0), StateInfo(COUNT, (), 0.0)]


class StepModule(nn.Module):
    """Wraps a SpikingModel (eval mode) as the pure step function above; inputs/outputs are flat tensors.

    `encoded=True`: x is the encoder's output (the encoder runs once per sample, in encoder.onnx).
    x is FP32 as the runtime feeds it; an int8+fp16 model computes in FP16 (x cast first), its neuron states are
    FP16 graph inputs and outputs, and its logits are cast to FP32 for the exit head (graph_states).
    """

    def __init__(self, model: SpikingModel, states: list[StateInfo], accumulate: str = "mean",
                 temperature: float = 1.0, encoded: bool = True) -> None:
        super().__init__()
        self.model = model
        self.states = states
        self.accumulate = accumulate
        self.temperature = float(temperature)
        self.encoded = encoded
        self.dtype = compute_dtype(model)

    def forward(self, x: Tensor, reset: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        fresh = []
        for info, value in zip(self.states, states):
            mask = reset.reshape((-1,) + (1,) * len(info.shape))
            fresh.append(torch.where(mask, torch.full_like(value, info.init), value))
        *neuron_states, acc, count = fresh
        named = {info.name: v for info, v in zip(self.states, neuron_states)}
        encoded = x.to(self.dtype) if self.encoded else self.model.encoder(x)
        logits, new = self.model.step_encoded(encoded, named)
        logits = logits.float()
        acc = acc + logits
        count = count + 1.0
        summary = acc / count.unsqueeze(1) if self.accumulate == "mean" else acc
        probs = torch.softmax(summary / self.temperature, dim=1)
        confidence, prediction = probs.max(dim=1)
        new_states = [new[info.name] for info in self.states[:-2]]
        return (confidence, prediction.to(torch.int32), logits, *new_states, acc, count)


class EncoderModule(nn.Module):
    """encoder.onnx: the first conv + BN, run once per static sample. x [B, C, H, W] -> [B, C1, H1, W1]."""

    def __init__(self, model: SpikingModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x).to(x.dtype)  # int8+fp16: the FP16 encoder's output back to the runtime's FP32


def graph_modules(bundle: Path, manifest: Manifest, checkpoint: Path | None = None) -> Callable[[str], nn.Module]:
    """role -> the torch module computing the bundle's `role` graph, from the checkpoint the bundle records (or
    `checkpoint`, which must hold the same weights), in the bundle's precision layout."""
    from seenn_deploy.export.bundle_layout import bundle_layout
    from seenn_deploy.files import file_sha256
    from seenn_deploy.snn.checkpoint import WEIGHTS_FILE, load_checkpoint, load_policy

    recorded = manifest.provenance.get("checkpoint")
    if not recorded and checkpoint is None:
        raise UserError(f"{bundle} records no source checkpoint: the torch backend needs checkpoint=...")
    path = Path(checkpoint or recorded)
    model, config = load_checkpoint(path)
    expected = manifest.provenance.get("checkpoint_sha256")
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if expected and file_sha256(weights) != expected:
        raise UserError(f"{path} is not the checkpoint {bundle} was exported from (weights hash differs)")
    model = bundle_layout(model, bundle, manifest)

    def module(role: str) -> nn.Module:
        if role == "encoder":
            return EncoderModule(model)
        if role == "policy":
            found = load_policy(path, config)
            if found is None:
                raise UserError(f"{path} has no policy network, but the bundle lists policy.onnx")
            return found[0]
        return StepModule(model, manifest.states, manifest.exit.accumulate, manifest.exit.temperature,
                          encoded=manifest.has_encoder)

    return module


register_module_source(graph_modules)
