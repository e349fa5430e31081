"""The quantization-clip-floor-shift (QCFS) activation of Bu et al. (ICLR 2022), for ANNs made to be converted.

    y = lambda * clamp(floor(x * L / lambda + 1/2) / L, 0, 1)

`lambda` (one per layer, learnt) becomes the threshold of the IF neuron that replaces the
activation, and the shift of 1/2 becomes its initial membrane lambda / 2: with that start, an IF
neuron fed a constant x for T = L steps fires exactly floor(x L / lambda + 1/2) times (clipped to
0..L), so its mean output equals y. The floor passes gradients straight through.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError


class _FloorStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        return grad_out


class QCFS(nn.Module):
    """x [B, ...] -> y [B, ...] with L = `levels` steps between 0 and the learnt `threshold` (lambda)."""

    def __init__(self, levels: int = 4, threshold: float = 8.0) -> None:
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise UserError(f"QCFS levels must be an integer >= 1, got {levels!r}: the paper uses 4 for CIFAR")
        if not threshold > 0:
            raise UserError(f"the QCFS threshold (lambda) must start > 0, got {threshold}")
        self.levels = levels
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def forward(self, x: Tensor) -> Tensor:
        steps = _FloorStraightThrough.apply(x * self.levels / self.threshold + 0.5) / self.levels
        return self.threshold * steps.clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={self.threshold.item():.4g}"
