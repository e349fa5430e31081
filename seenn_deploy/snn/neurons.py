"""Spiking neurons with explicit membrane state.

Each neuron has a pure single-step form `step(x, v) -> (spikes, v_next)` and a frame form used
inside models, which loops `step` over the timesteps folded into the batch dimension.

Dynamics for one timestep (threshold theta):
    LIF: v = tau * v + x;  s = fire(v - theta);  v = v * (1 - s)     (hard reset to 0)
    IF:  v = v + x;        s = fire(v - theta);  v = v - s * theta   (soft reset, by subtraction)

A neuron with `scale_spikes` emits theta per spike instead of 1 (models converted from ANNs,
where theta is the layer's activation scale); its recorded spikes stay 0/1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seenn_deploy.errors import UserError
from seenn_deploy.snn.state import Frame, Stateful
from seenn_deploy.snn.surrogate import FiringCondition, Surrogate, Triangle, check_firing, spike


class SpikingNeuron(Stateful):
    """Base: threshold, firing condition, surrogate, the membrane's initial value, and the spike's value.

    Subclasses implement `charge` (integrate the input) and `reset` (after a spike).
    """

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_init: float = 0.0,
        firing: FiringCondition = ">=",
        surrogate: Surrogate | None = None,
        scale_spikes: bool = False,
    ) -> None:
        super().__init__()
        if not v_threshold > 0:
            raise UserError(f"v_threshold must be > 0, got {v_threshold}")
        self.v_threshold = float(v_threshold)
        self.v_init = float(v_init)
        self.firing = check_firing(firing)
        self.surrogate = surrogate if surrogate is not None else Triangle()
        self.scale_spikes = bool(scale_spikes)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def reset(self, v: Tensor, s: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """One timestep: x, v [B, ...] -> (spikes [B, ...], next membrane [B, ...])."""
        v = self.charge(x, v)
        s = spike(v - self.v_threshold, self.firing, self.surrogate, self.training)
        return s, self.reset(v, s)

    def forward(self, x: Tensor, frame: Frame) -> Tensor:
        """x [T*B, ...] (time-major) -> spikes [T*B, ...] (x theta with scale_spikes); reads and writes state `v`."""
        steps = frame.timesteps
        xs = x.chunk(steps, dim=0) if steps > 1 else (x,)
        v = frame.read(self, "v", like=xs[0], init=self.v_init)
        out = []
        for x_t in xs:
            s, v = self.step(x_t, v)
            out.append(s)
        frame.write(self, "v", v)
        spikes = out[0] if steps == 1 else torch.cat(out, dim=0)
        frame.record_spikes(self, spikes)
        return spikes * self.v_threshold if self.scale_spikes else spikes

    def extra_repr(self) -> str:
        return (
            f"v_threshold={self.v_threshold}, v_init={self.v_init}, firing='{self.firing}', "
            f"surrogate={self.surrogate}" + (", scale_spikes=True" if self.scale_spikes else "")
        )


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire with hard reset to 0; `tau` is the decay factor (0.5 in SEENN and TET)."""

    def __init__(self, tau: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < tau <= 1.0:
            raise UserError(f"LIF tau is a decay factor in (0, 1], got {tau}")
        self.tau = float(tau)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        return v * self.tau + x

    def reset(self, v: Tensor, s: Tensor) -> Tensor:
        return v * (1.0 - s)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, " + super().extra_repr()


class IF(SpikingNeuron):
    """Integrate-and-fire with soft reset (subtract the threshold), as in ANN-to-SNN conversion.

    Converted (QCFS) models start the membrane at half the threshold and emit the threshold per spike:
    `IF(v_threshold=th, v_init=th / 2, scale_spikes=True)`.
    """

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        return v + x

    def reset(self, v: Tensor, s: Tensor) -> Tensor:
        return v - s * self.v_threshold
