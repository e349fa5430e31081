"""Feeding numpy datasets to models: normalise, batch, and lay event data out time-first."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from seenn_deploy.data import ArrayDataset, Normalisation


def model_input(x: np.ndarray, normalisation: Normalisation, timesteps: int) -> Tensor:
    """Normalised batch: [B, C, H, W] static, or [T, B, C, H, W] from the first T frames of events [B, T', C, H, W]."""
    if x.ndim == 5:
        return torch.from_numpy(normalisation.apply(x[:, :timesteps])).transpose(0, 1).contiguous()
    return torch.from_numpy(normalisation.apply(x))


def iterate_batches(
    data: ArrayDataset, batch_size: int, shuffle: bool = False, seed: int = 0, skip: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y) numpy batches; `shuffle` draws a fresh permutation from `seed`; the first `skip` batches are left out."""
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
    for start in range(skip * batch_size, len(data), batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], (data.y[idx] if data.y is not None else None)
