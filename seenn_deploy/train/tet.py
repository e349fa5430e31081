"""TET loss (Deng et al. 2022): supervise every timestep's output, not only their mean."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def tet_loss(outputs: Tensor, labels: Tensor, lambda_mse: float = 0.0, phi: float = 1.0) -> Tensor:
    """(1 - lambda) * mean_t CE(o_t, y) + lambda * mean_t MSE(o_t, phi).  outputs [T, B, K], labels [B]."""
    steps = outputs.shape[0]
    ce = F.cross_entropy(outputs.flatten(0, 1), labels.repeat(steps))
    if lambda_mse == 0.0:
        return ce
    mse = F.mse_loss(outputs, torch.full_like(outputs, phi))
    return (1.0 - lambda_mse) * ce + lambda_mse * mse
