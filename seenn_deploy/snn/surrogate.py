"""Spike functions: a plain comparison in eval and export, a surrogate gradient in training.

`spike(d, ...)` takes d = membrane - threshold. Outside training it is `(d >= 0).to(dtype)` (or
`>`): standard ops only, so ONNX exporters see Greater/GreaterOrEqual + Cast and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from seenn_deploy.errors import UserError

FiringCondition = Literal[">=", ">"]
FIRING_CONDITIONS: tuple[str, ...] = (">=", ">")


def check_firing(firing: str) -> FiringCondition:
    if firing not in FIRING_CONDITIONS:
        raise UserError(f"firing condition {firing!r} is not one of {', '.join(FIRING_CONDITIONS)}")
    return firing  # type: ignore[return-value]


def heaviside(d: Tensor, firing: FiringCondition) -> Tensor:
    """1 where the membrane reached threshold (d = v - threshold), else 0, in d's dtype."""
    fired = d >= 0 if firing == ">=" else d > 0
    return fired.to(d.dtype)


@dataclass(frozen=True)
class Triangle:
    """TET's surrogate: dS/dd = max(0, gamma - |d|) / gamma^2 (a triangle of area 1)."""

    gamma: float = 1.0

    def grad(self, d: Tensor) -> Tensor:
        return (self.gamma - d.abs()).clamp(min=0) / (self.gamma * self.gamma)


@dataclass(frozen=True)
class Tanh:
    """Dspike's tanh family: the derivative of (tanh(b d) + tanh(b/2)) / (2 tanh(b/2)) on |d| <= 1/2, else 0.

    That function rises from 0 to 1 across the window around the threshold; larger `b` is closer
    to the true step, b -> 0 tends to the straight-through rectangle.
    """

    b: float = 3.0

    def grad(self, d: Tensor) -> Tensor:
        scale = self.b / (2.0 * math.tanh(self.b / 2.0))
        inside = (d.abs() <= 0.5).to(d.dtype)
        return scale * (1.0 - torch.tanh(self.b * d) ** 2) * inside


Surrogate = Triangle | Tanh


class _SurrogateSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: Tensor, surrogate: Surrogate, firing: FiringCondition) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(d)
        ctx.surrogate = surrogate
        return heaviside(d, firing)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (d,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(d), None, None


def spike(d: Tensor, firing: FiringCondition, surrogate: Surrogate, training: bool) -> Tensor:
    """Spikes for d = v - threshold; differentiable through `surrogate` only when training."""
    if training and torch.is_grad_enabled():
        return _SurrogateSpike.apply(d, surrogate, firing)
    return heaviside(d, firing)
