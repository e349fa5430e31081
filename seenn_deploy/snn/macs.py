"""Multiply-accumulates of Conv2d and Linear layers, counted from one forward pass."""

from __future__ import annotations

import torch
from torch import nn


def layer_macs(layer: nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates per sample of one call of a Conv2d or Linear: outputs x fan-in."""
    if isinstance(layer, nn.Conv2d):
        fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        return int(out[0].numel() * fan_in)
    return int(out.shape[-1] * layer.in_features)


@torch.no_grad()
def module_macs(module: nn.Module, sample: torch.Tensor, **call_kwargs) -> int:
    """MACs per sample of every Conv2d / Linear inside `module` on `sample` [B, ...], in the module's current
    mode; call_kwargs go to the call (e.g. timesteps=1: one step of an SNN)."""
    total = 0

    def hook(layer, inputs, out):
        nonlocal total
        total += layer_macs(layer, out)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        module(sample, **call_kwargs)
    finally:
        for h in handles:
            h.remove()
    return total
