"""Explicit per-timestep state: what a spiking module carries between timesteps, and the frame that holds it.

No module keeps state in attributes. A forward pass gets a `Frame` holding every state by its
qualified name; neurons read their state from it and write the new one back. The same code
runs one timestep (`timesteps=1`, tensors [B, ...]) or T timesteps folded into the batch
dimension of the stateless layers (tensors [T*B, ...], time-major), which is how training
keeps convolutions batched over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from seenn_deploy.errors import InternalError, UserError


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a model: qualified name, per-sample shape (no batch dim), initial value."""

    name: str
    shape: tuple[int, ...]
    init: float


class Frame:
    """The states one forward pass reads (`states`) and writes (`new_states`).

    `states=None` starts every state at its initial value (a fresh sequence). `owners` maps each
    stateful module to its qualified name in the model, so a module needs no name of its own.
    """

    def __init__(
        self,
        owners: Mapping[nn.Module, str],
        timesteps: int = 1,
        states: Mapping[str, Tensor] | None = None,
    ) -> None:
        if timesteps < 1:
            raise InternalError(f"timesteps must be >= 1, got {timesteps}")
        self.owners = owners
        self.timesteps = timesteps
        self.states = states
        self.new_states: dict[str, Tensor] = {}
        self.specs: list[StateSpec] = []
        self.spikes: dict[str, Tensor] = {}

    def _name(self, module: nn.Module, local: str) -> str:
        try:
            prefix = self.owners[module]
        except KeyError:
            raise InternalError(f"{type(module).__name__} is not a submodule of the model that made this frame") from None
        return f"{prefix}.{local}" if prefix else local

    def read(self, module: nn.Module, local: str, like: Tensor, init: float) -> Tensor:
        """The state `local` of `module`, shaped like one timestep of its input `like` [B, ...]."""
        name = self._name(module, local)
        self.specs.append(StateSpec(name, tuple(like.shape[1:]), float(init)))
        if self.states is None:
            return torch.full_like(like, init)
        try:
            value = self.states[name]
        except KeyError:
            raise UserError(f"state {name!r} is missing: pass every state from model.init_states()") from None
        if value.shape != like.shape:
            raise UserError(
                f"state {name!r} has shape {tuple(value.shape)} but this step needs {tuple(like.shape)}: "
                "states must come from model.init_states() for the same batch size and input size"
            )
        return value

    def write(self, module: nn.Module, local: str, value: Tensor) -> None:
        self.new_states[self._name(module, local)] = value

    def record_spikes(self, module: nn.Module, spikes: Tensor) -> None:
        """Keep a neuron's output ([T*B, ...]) by the module's name, for parity checks and firing rates."""
        self.spikes[self.owners[module]] = spikes


class Stateful(nn.Module):
    """A module whose forward takes the frame: `forward(x [T*B, ...], frame) -> [T*B, ...]`."""

    def forward(self, x: Tensor, frame: Frame) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SpikingSequential(Stateful):
    """nn.Sequential that hands the frame to its stateful children and calls the rest as usual."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, x: Tensor, frame: Frame) -> Tensor:
        for layer in self.layers:
            x = layer(x, frame) if isinstance(layer, Stateful) else layer(x)
        return x

    def __getitem__(self, index: int) -> nn.Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)
