"""`ArrayDataset`, the in-memory result of loading any data spec, and the split names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seenn_deploy.errors import UserError

SPLITS: tuple[str, ...] = ("train", "test", "all")

# Single-file sources: "train" is this fraction of a fixed permutation, "test" the rest.
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 9, 10
SPLIT_SEED = 0


def check_split(split: str, spec: str) -> None:
    """Raise UserError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for data {spec!r}: use one of {', '.join(SPLITS)}")


def single_file_rows(n: int, split: str) -> np.ndarray | slice:
    """Rows of a single-file source that form `split`.

    "train" is the first 90% (rounded down) of `np.random.default_rng(0).permutation(n)`,
    "test" the remaining 10%, "all" every row in file order. The permutation depends only on n,
    so the two splits are disjoint and stable across runs.
    """
    if split == "all":
        return slice(None)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = n * TRAIN_FRACTION_NUM // TRAIN_FRACTION_DEN
    return perm[:cut] if split == "train" else perm[cut:]


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass
class ArrayDataset:
    """Samples and labels held in memory.

    x: float32, values from the source scaled to [0, 1] for 8-bit sources; static images
       [N, C, H, W], event data [N, T, C, H, W].
    y: int64 [N], or None when the source has no labels.
    classes: class names, indexed by y (["0", "1", ...] when the source names none).
    name: what the data is, for messages, e.g. "digits (test)".
    """

    x: np.ndarray
    y: np.ndarray | None
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        if self.x.ndim not in (4, 5):
            raise UserError(
                f"data {self.name!r} has x of shape {self.x.shape}: expected [N, C, H, W] images "
                "or [N, T, C, H, W] events"
            )
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.int64)
            if self.y.shape != (len(self.x),):
                raise UserError(
                    f"data {self.name!r} has {len(self.x)} samples but y of shape {self.y.shape}: "
                    "give one label per sample"
                )
        self.classes = [str(c) for c in self.classes]

    @property
    def event(self) -> bool:
        """True for event data [N, T, C, H, W]."""
        return self.x.ndim == 5

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (T, C, H, W)."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int) -> ArrayDataset:
        """The first n samples (all of them when n >= len); views, not copies."""
        if n < 0:
            raise UserError(f"cannot take {n} samples of data {self.name!r}: give a count >= 0")
        y = None if self.y is None else self.y[:n]
        return ArrayDataset(self.x[:n], y, list(self.classes), self.name)

    def check_sample_shape(self, expected: tuple[int, ...], what: str = "the model") -> None:
        """Raise UserError unless one sample has shape `expected`.

        For event data, a 3-dim `expected` (C, H, W) is compared with one frame, since a step
        model takes one frame per timestep and T is chosen at run time.
        """
        expected = tuple(int(d) for d in expected)
        got = self.sample_shape
        if got == expected or (self.event and len(expected) == 3 and got[1:] == expected):
            return
        layout = "event samples (T x C x H x W)" if self.event else "images (C x H x W)"
        raise UserError(
            f"data {self.name!r} has {_dims(got)} {layout} but {what} expects {_dims(expected)}: "
            "pick data of that size or train a model for this data"
        )
