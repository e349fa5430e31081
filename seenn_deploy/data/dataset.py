"""`ArrayDataset`, the in-memory result of loading any data spec, and the split names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seenn_deploy.errors import UserError

SPLITS: tuple[str, ...] = ("train", "test", "all")

# Single-file sources: "train" is this fraction of a fixed permutation, "test" the rest.
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 9, 10
SPLIT_SEED = 0
_FINITE_CHUNK = 4096  # rows per np.isfinite pass: bounds the boolean temporary


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
        if n < 1:
            raise UserError(f"cannot take {n} samples of data {self.name!r}: give a count >= 1")
        y = None if self.y is None else self.y[:n]
        return ArrayDataset(self.x[:n], y, list(self.classes), self.name)

    def take(self, rows: np.ndarray, name: str) -> ArrayDataset:
        """The samples at `rows` [M] (a copy), in that order, as data called `name`."""
        y = None if self.y is None else self.y[rows]
        return ArrayDataset(self.x[rows], y, list(self.classes), name)

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


def check_loaded(data: ArrayDataset, spec: str) -> None:
    """Refuse a loaded split with no samples, or with NaN/Inf in any sample (they would pass as answers)."""
    if len(data) == 0:
        raise UserError(f"data {data.name!r} holds no samples: point {spec!r} at data that has samples "
                        "in this split, or load another split")
    flat = data.x.reshape(len(data), -1)
    bad: list[np.ndarray] = []
    for start in range(0, len(flat), _FINITE_CHUNK):
        finite = np.isfinite(flat[start : start + _FINITE_CHUNK]).all(axis=1)
        if not finite.all():
            bad.append(start + np.flatnonzero(~finite))
    if bad:
        rows = np.concatenate(bad)
        raise UserError(f"data {data.name!r} has NaN or Inf values in {len(rows)} of {len(data)} samples, the "
                        f"first at row {int(rows[0])}: clean or drop those samples")


def _numbered(classes: list[str]) -> bool:
    """Whether `classes` are the placeholder names "0", "1", ... of a source that names none."""
    return list(classes) == [str(i) for i in range(len(classes))]


def check_labels(data: ArrayDataset, num_classes: int, classes: list[str] | None, where: str) -> None:
    """Refuse labels a model with `num_classes` outputs cannot predict, and class names that disagree with its own.

    `where` names the model in messages (e.g. "bundle runs/x.seenn"). Unlabelled data passes.
    Names are compared index by index when both sides name their classes (not the "0", "1", ...
    placeholders): data may lack trailing classes, but class i must be the same class on both sides.
    """
    if data.y is None:
        return
    if len(data.y) and int(data.y.max()) >= num_classes:
        outside = data.y >= num_classes
        raise UserError(f"data {data.name!r} has label {int(data.y.max())} ({int(outside.sum())} samples, the first "
                        f"at row {int(np.argmax(outside))}) but {where} has {num_classes} classes, labels "
                        f"0..{num_classes - 1}: use data labelled for this model")
    if not classes or _numbered(data.classes) or _numbered(classes):
        return
    if len(data.classes) > len(classes):
        raise UserError(f"data {data.name!r} has {len(data.classes)} classes but {where} has {len(classes)}: "
                        "use data with the model's classes (an empty or extra class folder adds a class)")
    for i, (ours, theirs) in enumerate(zip(data.classes, classes)):
        if ours != theirs:
            raise UserError(f"data {data.name!r} has class {i} = {ours!r} but {where} has {theirs!r} there: "
                            "use data with the model's class names, in the same order")
