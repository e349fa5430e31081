"""The contract every spiking model of the zoo honours.

A model is `encoder` (stateless, analog input: the first conv + BN) followed by `body`
(spiking, reads and writes states through a Frame) that ends in the classifier. Two forms give
identical results in eval mode:

* multi-step `model(x, timesteps=T)`: x [B, C, H, W] static (direct encoding: the encoder runs
  once and its output is fed every timestep) or [T, B, C, H, W] events -> logits [T, B, K];
* single-step `model.step(x_t, states) -> (logits [B, K], new_states)` with explicit states
  from `model.init_states(batch)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.state import Frame, StateSpec, Stateful


@dataclass(frozen=True)
class InputSpec:
    """What a model takes per sample: channels and image size (height, width)."""

    channels: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class SpikingModel(nn.Module):
    """Base of every spiking model: `encoder` (nn.Module) then `body` (Stateful)."""

    encoder: nn.Module
    body: Stateful

    def __init__(self, input_spec: InputSpec, num_classes: int) -> None:
        super().__init__()
        self.input_spec = input_spec
        self.num_classes = num_classes

    # -- state -----------------------------------------------------------------------------
    def _owners(self) -> dict[nn.Module, str]:
        return {m: name for name, m in self.named_modules() if isinstance(m, Stateful)}

    def state_specs(self) -> list[StateSpec]:
        """Every state of the model, in a stable order, for one sample of `input_spec`."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                param = next(self.parameters())
                probe = torch.zeros(1, *self.input_spec.shape, device=param.device, dtype=param.dtype)
                frame = Frame(self._owners())
                self.body(self.encoder(probe), frame)
        finally:
            self.train(was_training)
        return frame.specs

    def init_states(self, batch: int, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Every state at its initial value, for a batch of `batch` samples."""
        device = self._device()
        return {
            s.name: torch.full((batch, *s.shape), s.init, dtype=dtype, device=device) for s in self.state_specs()
        }

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # -- forward ---------------------------------------------------------------------------
    def check_input(self, x: Tensor, event: bool) -> None:
        """Raise UserError unless x is [B, C, H, W] (or [T, B, C, H, W] for events) of this model's size."""
        expected = self.input_spec.shape
        lead = "[T, B, C, H, W]" if event else "[B, C, H, W]"
        dims = 5 if event else 4
        if x.dim() != dims or tuple(x.shape[-3:]) != expected:
            c, h, w = expected
            raise UserError(
                f"input of shape {tuple(x.shape)} does not match the model: it expects {lead} with "
                f"C, H, W = {c}, {h}, {w}; resize or pick data with {c}-channel {h}x{w} images"
            )

    def forward(self, x: Tensor, timesteps: int | None = None) -> Tensor:
        """Multi-step forward from rest. Static x [B, C, H, W] needs `timesteps`; events x [T, B, C, H, W]. -> [T, B, K]."""
        return self.run_steps(x, timesteps)[0]

    def run_steps(self, x: Tensor, timesteps: int | None = None) -> tuple[Tensor, Frame]:
        """Multi-step forward that also returns the frame (final states, every neuron's spikes [T*B, ...])."""
        event = x.dim() == 5
        self.check_input(x, event)
        if event:
            steps, batch = x.shape[0], x.shape[1]
            encoded = self.encoder(x.flatten(0, 1))
        else:
            if timesteps is None or timesteps < 1:
                raise UserError("a static input [B, C, H, W] needs timesteps >= 1")
            steps, batch = timesteps, x.shape[0]
            once = self.encoder(x)
            encoded = once.unsqueeze(0).expand(steps, *once.shape).flatten(0, 1)
        frame = Frame(self._owners(), timesteps=steps)
        logits = self.body(encoded, frame)
        return logits.reshape(steps, batch, -1), frame

    def step(self, x: Tensor, states: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One timestep: x [B, C, H, W], states from init_states(B) -> (logits [B, K], new states)."""
        self.check_input(x, event=False)
        return self.step_encoded(self.encoder(x), states)

    def step_encoded(self, encoded: Tensor, states: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One timestep on the encoder's output (run the encoder once per static sample)."""
        logits, frame = self.step_frame(encoded, states)
        return logits, frame.new_states

    def step_frame(self, encoded: Tensor, states: dict[str, Tensor]) -> tuple[Tensor, Frame]:
        """One timestep on the encoder's output -> (logits [B, K], frame with new states and spikes)."""
        frame = Frame(self._owners(), timesteps=1, states=states)
        return self.body(encoded, frame), frame
