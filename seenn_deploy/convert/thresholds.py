"""Each activation's threshold: the learnt lambda of a QCFS layer, or a percentile of a ReLU's outputs on training rows.

The percentile is exact without holding every activation: for percentile p of n values, the
answer is the k-th largest with k = n - ceil(p/100 (n - 1)), and only the k largest values
seen so far are kept (0.1 % of them at p = 99.9).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.qcfs import QCFS


def activations(model: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    """The model's activations of one kind (QCFS or nn.ReLU) by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, kind)}


def qcfs_thresholds(model: nn.Module) -> dict[str, float]:
    """Each QCFS layer's learnt lambda."""
    found = {name: m.threshold.item() for name, m in activations(model, QCFS).items()}
    bad = {name: th for name, th in found.items() if not th > 0}
    if bad:
        name, th = next(iter(bad.items()))
        raise UserError(f"QCFS layer {name} learnt lambda {th:.4g} <= 0, which no IF threshold can take: retrain the "
                        "ANN (a lower --lr, or a larger --lambda-init)")
    return found


class TopValues:
    """The k largest of a stream of tensors, kept with one topk per batch."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values = torch.empty(0)

    def add(self, x: Tensor) -> None:
        both = torch.cat([self.values, x.detach().flatten().float()])
        self.values = both.topk(min(self.k, both.numel()), sorted=False).values

    def smallest(self) -> float:
        return float(self.values.min())


def check_percentile(percentile: float) -> None:
    if not 0.0 < percentile <= 100.0:
        raise UserError(f"--percentile must be in (0, 100], got {percentile}: 99.9 is usual, 100 takes the maximum")


def percentile_rank(n: int, percentile: float) -> int:
    """How many of the largest of n values reach the percentile (numpy's method 'higher')."""
    return n - math.ceil(percentile / 100.0 * (n - 1))


@torch.no_grad()
def percentile_thresholds(model: nn.Module, batches: Iterable[Tensor], samples: int, percentile: float) -> dict[str, float]:
    """The `percentile` of each ReLU's outputs over `samples` inputs (batches [B, ...] that add up to them)."""
    check_percentile(percentile)
    relus = activations(model, nn.ReLU)
    tops: dict[str, TopValues] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs, out: Tensor) -> None:
            if name not in tops:  # the first batch fixes the per-sample size, so k for all `samples`
                tops[name] = TopValues(percentile_rank(samples * out[0].numel(), percentile))
            tops[name].add(out)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in relus.items()]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x, timesteps=1)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    found = {name: tops[name].smallest() for name in relus}
    dead = [name for name, th in found.items() if not th > 0]
    if dead:
        raise UserError(f"ReLU {dead[0]} is 0 at the {percentile:g}th percentile on {samples} training samples, so it "
                        "would never fire: raise --percentile (100 takes the maximum) or --samples")
    return found
