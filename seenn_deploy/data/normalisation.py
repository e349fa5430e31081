"""Per-channel input normalisation: fit on data, apply, and store in a manifest as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from seenn_deploy.errors import UserError

_CHUNK = 1024  # samples per chunk when fitting: bounds the float64 working copy
_STD_FLOOR = 1e-6
_FIX = 'give {"mean": [...], "std": [...]} with one finite mean and one positive std per channel'


@dataclass(frozen=True)
class Normalisation:
    """(x - mean) / std per channel; channel axis -3 of [N, C, H, W] or [N, T, C, H, W]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            mean = tuple(float(m) for m in self.mean)
            std = tuple(float(s) for s in self.std)
        except (TypeError, ValueError) as exc:
            raise UserError(f"normalisation mean/std are not numbers ({exc}): {_FIX}") from None
        if not mean or len(mean) != len(std):
            raise UserError(
                f"normalisation has {len(mean)} means and {len(std)} stds: {_FIX}"
            )
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise UserError(f"normalisation has a non-finite value or a std <= 0 ({std}): {_FIX}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalisation:
        """Per-channel mean and std of x [N, C, H, W] or [N, T, C, H, W] over all other axes.

        Two passes in float64 over chunks of samples, so a large uint8/float32 array never needs
        a full float64 copy. Stds below 1e-6 (constant channels) are raised to 1e-6.
        """
        if x.ndim not in (4, 5) or len(x) == 0:
            raise UserError(
                f"cannot fit a normalisation to an array of shape {x.shape}: "
                "give [N, C, H, W] or [N, T, C, H, W] with N > 0"
            )
        channels = x.shape[-3]
        axes = tuple(i for i in range(x.ndim) if i != x.ndim - 3)
        count = x.size // channels
        total = np.zeros(channels)
        for start in range(0, len(x), _CHUNK):
            total += x[start : start + _CHUNK].sum(axis=axes, dtype=np.float64)
        mean = total / count
        shape = (channels, 1, 1)
        sq = np.zeros(channels)
        for start in range(0, len(x), _CHUNK):
            centred = x[start : start + _CHUNK].astype(np.float64) - mean.reshape(shape)
            sq += np.square(centred).sum(axis=axes)
        std = np.maximum(np.sqrt(sq / count), _STD_FLOOR)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 (x - mean) / std for x [..., C, H, W]; a new array of x's shape."""
        if x.ndim < 3 or x.shape[-3] != self.channels:
            raise UserError(
                f"normalisation is for {self.channels} channels but the data has shape {x.shape} "
                f"(channel axis -3): use data with {self.channels} channels or refit it"
            )
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        out = np.subtract(x, mean, dtype=np.float32)
        out /= std
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """{"mean": [...], "std": [...]}, ready for json.dumps."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Any) -> Normalisation:
        """Inverse of to_dict; UserError when `d` is not a valid normalisation."""
        if not isinstance(d, dict) or set(d) != {"mean", "std"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise UserError(f"normalisation must be a mapping with keys mean and std, got {got}: {_FIX}")
        mean, std = d["mean"], d["std"]
        if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)):
            raise UserError(f"normalisation mean and std must be lists: {_FIX}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*mean, *std)):
            raise UserError(f"normalisation mean/std hold something other than numbers: {_FIX}")
        return cls(tuple(mean), tuple(std))
