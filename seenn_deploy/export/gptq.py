"""GPTQ rounding for INT8 weights, scored against a layer's real inputs (used by export/int8_rounding.py).

`LayerGram` gathers a QuantCompute layer's calibration inputs as Gram matrices (integer steps,
float64): over every row (output position), and per output channel over the rows whose FP32
membrane is near the threshold. `gptq_round` rounds weights column by column, pushing each column's
error onto the columns not yet rounded through the inverse Gram matrix (GPTQ, Frantar et al. 2023),
then `refine` moves single weights by one step while that lowers e^T H e.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seenn_deploy.export.int8 import QMAX, QuantCompute

REFINE_SWEEPS = 8  # coordinate-descent sweeps after GPTQ (it stops earlier once nothing moves)
GPTQ_DAMPING = 0.1  # added to the Gram matrix's diagonal, times its mean: inputs seen rarely stay well-posed
RISK_WIDTH = 2.0  # "at risk": |FP32 membrane - threshold| < RISK_WIDTH x the max-abs rounding error's std
RISK_BLEND = 0.001  # weight of the other inputs in a channel's Gram matrix, per row, against an at-risk row's 1
RISK_MAX_FAN_IN = 512  # one Gram matrix and factorisation per channel: kept to layers where that is cheap


def gptq_round(weight: Tensor, scale: Tensor, gram: Tensor, shared: Tensor) -> Tensor:
    """Round weight [C_out, n] to integers q (|q| <= 127) in steps of scale [C_out], column by column, each column's
    error compensated on the later columns through the Cholesky factor of the inverse damped Gram matrix (one
    [n, n] for every channel, or one per channel [C_out, n, n]), then `refine`d. Columns go in order of
    decreasing input energy in `shared` [n, n] (stable), as GPTQ's "act order"."""
    n = weight.shape[1]
    order = torch.argsort(-shared.diagonal(), stable=True)
    h = damped(gram)[..., order, :][..., :, order]
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    upper = upper.expand(weight.shape[0], n, n)
    w = weight[:, order].clone()
    q = torch.empty_like(w)
    for i in range(n):
        q[:, i] = torch.round(w[:, i] / scale).clamp(-QMAX, QMAX)
        error = (w[:, i] - q[:, i] * scale) / upper[:, i, i]
        w[:, i + 1:] -= error[:, None] * upper[:, i, i + 1:]
    out = torch.empty_like(q)
    out[:, order] = q
    return refine(weight, scale, out, damped(gram))


def damped(gram: Tensor) -> Tensor:
    """gram [..., n, n] + GPTQ_DAMPING x its mean diagonal (1 where that is 0) on the diagonal."""
    mean = gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    damping = torch.where(mean > 0, GPTQ_DAMPING * mean, torch.ones_like(mean))
    return gram + torch.diag_embed(damping.expand(*gram.shape[:-1]))


def refine(weight: Tensor, scale: Tensor, q: Tensor, h: Tensor) -> Tensor:
    """Coordinate descent on e^T H e per channel (e = w - scale q, H [n, n] or [C_out, n, n]): single q moved by
    +-1 where that lowers it, up to REFINE_SWEEPS sweeps; GPTQ's greedy pass leaves such moves behind."""
    q = q.clone()
    e = weight - q * scale[:, None]
    g = e @ h if h.dim() == 2 else torch.einsum("cij,cj->ci", h, e)  # H e (H symmetric)
    for _ in range(REFINE_SWEEPS):
        moved = 0
        for i in range(weight.shape[1]):
            row = h[i][None, :] if h.dim() == 2 else h[:, i, :]  # [1 or C, n]
            curvature = scale**2 * row[:, i]
            up = curvature - 2 * scale * g[:, i]  # change of e^T H e for q_i + 1 (e_i - scale)
            down = curvature + 2 * scale * g[:, i]
            step = torch.where((up < down) & (up < 0) & (q[:, i] < QMAX), 1.0,
                               torch.where((down < 0) & (q[:, i] > -QMAX), -1.0, 0.0))
            if bool(step.any()):
                moved += 1
                q[:, i] += step
                g -= (step * scale)[:, None] * row
        if not moved:
            break
    return q


GRAM_CHUNK = 64  # input rows unfolded at once (conv): bounds the float64 temporary


class LayerGram:
    """The Gram matrices of one layer's calibration inputs (integer steps, float64): `total` [n, n] over every
    row (output position), and with membranes known `risk` [C_out, n, n], each channel's at-risk rows."""

    def __init__(self, layer: QuantCompute, margins: list[Tensor] | None, scale: Tensor) -> None:
        self.layer, self.margins, self.scale = layer, margins, scale.double()
        self.total: Tensor | None = None
        self.risk: Tensor | None = None

    def add(self, x: Tensor, batch: int) -> None:
        """Add the rows of one batch's input x [T*B, ...] (its margins: self.margins[batch])."""
        steps = torch.round(x.detach().float() / self.layer.input_scale).clamp(-QMAX - 1, QMAX)  # integers, exact
        margins = self.margins[batch].split(GRAM_CHUNK) if self.margins is not None else [None] * len(steps)
        for chunk, margin in zip(steps.split(GRAM_CHUNK), margins):
            rows = self._rows(chunk)
            gram = rows.T @ rows
            self.total = gram if self.total is None else self.total + gram
            if margin is not None:
                self._add_risk(rows, margin)

    def _rows(self, x: Tensor) -> Tensor:
        """x [N, ...] -> [rows, n] float64: one row per output position (conv: the unfolded patches)."""
        if self.layer.kind == "conv":
            conv = self.layer.layer
            cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
        return x.reshape(x.shape[0], -1).double()

    def _add_risk(self, rows: Tensor, margin: Tensor) -> None:
        """Per channel, the rows whose FP32 |membrane - threshold| is within RISK_WIDTH x the std of max-abs
        rounding's error in this row's input current (scale_c / sqrt 12 x |row| in input-scale units)."""
        margin = margin.double().movedim(1, -1).reshape(len(rows), -1)  # [rows, C]
        spread = rows.norm(dim=1) * self.layer.input_scale / 12 ** 0.5  # [rows]
        at_risk = margin.abs() < RISK_WIDTH * spread[:, None] * self.scale[None, :]
        if self.risk is None:
            self.risk = torch.zeros(margin.shape[1], rows.shape[1], rows.shape[1], dtype=torch.float64)
        for c in range(margin.shape[1]):
            picked = rows[at_risk[:, c]]
            if len(picked):
                self.risk[c] += picked.T @ picked

    def risk_hessians(self) -> Tensor:
        """[C, n, n]: each channel's Gram matrix, its at-risk rows weighted 1 and every other row RISK_BLEND."""
        return self.risk * (1 - RISK_BLEND) + RISK_BLEND * self.total[None]
