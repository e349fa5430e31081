"""The torch module that becomes step.onnx: one timestep of the step contract.

    step(x, reset, s_1 .. s_n, acc, count) -> (confidence, prediction, logits, s_1' .. s_n', acc', count')

Where `reset` is set, that row's states take their initial values before the step. The exit
head is fused: accumulated logits (`acc`) and the per-row step counter (`count`) are states, and
the graph outputs the confidence (max softmax of the accumulated logits) and its argmax. Nothing
depends on t, so rows at different timesteps share a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seenn_deploy.runtime.manifest import StateInfo
from seenn_deploy.snn.model import SpikingModel

ACC, COUNT = "exit.acc_logits", "exit.count"


def graph_states(model: SpikingModel) -> list[StateInfo]:
    """The model's states plus the exit head's: accumulated logits [K] and the step counter [] (float)."""
    specs = [StateInfo(s.name, tuple(s.shape), s.init) for s in model.state_specs()]
    return specs + [StateInfo(ACC, (model.num_classes,), 0.0), StateInfo(COUNT, (), 0.0)]


class StepModule(nn.Module):
    """Wraps a SpikingModel (eval mode) as the pure step function above; inputs/outputs are flat tensors.

    `encoded=True`: x is the encoder's output (the encoder runs once per sample, in encoder.onnx).
    """

    def __init__(self, model: SpikingModel, states: list[StateInfo], accumulate: str = "mean",
                 temperature: float = 1.0, encoded: bool = True) -> None:
        super().__init__()
        self.model = model
        self.states = states
        self.accumulate = accumulate
        self.temperature = float(temperature)
        self.encoded = encoded

    def forward(self, x: Tensor, reset: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        fresh = []
        for info, value in zip(self.states, states):
            mask = reset.reshape((-1,) + (1,) * len(info.shape))
            fresh.append(torch.where(mask, torch.full_like(value, info.init), value))
        *neuron_states, acc, count = fresh
        named = {info.name: v for info, v in zip(self.states, neuron_states)}
        encoded = x if self.encoded else self.model.encoder(x)
        logits, new = self.model.step_encoded(encoded, named)
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
        return self.encoder(x)
