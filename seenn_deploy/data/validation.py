"""The validation slice a checkpoint holds out of its training split, rebuilt identically by every later command.

Choices made on data (the epoch to keep, the exit threshold alpha) are made on this slice and
scored once on test, as the SEENN paper does. The rows come from a splitmix64 hash of each row
index, ranked: they depend only on the number of rows, the fraction and the seed, on any machine
and any numpy version (numpy's Generator streams are not promised stable across versions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from seenn_deploy.data.dataset import ArrayDataset
from seenn_deploy.data.spec import parse_data_spec
from seenn_deploy.errors import UserError

METHOD = "splitmix64-rank"  # recorded, so that a new method can never silently give other rows
_KEYS = {"data", "fraction", "seed", "train_rows", "method"}


@dataclass(frozen=True)
class ValidationSlice:
    """`fraction` of the train split of data spec `data`, drawn with `seed`.

    train_rows: the train split's size when the slice was drawn (None: unknown); a different size
    now means different rows, so loading refuses it.
    """

    data: str
    fraction: float
    seed: int
    train_rows: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data.strip():
            raise UserError(f"validation slice data {self.data!r} is not a data spec: give e.g. 'digits' or 'npz:FILE'")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0.0 < self.fraction < 1.0:
            raise UserError(f"validation fraction {self.fraction!r} is not in (0, 1): give e.g. 0.1 for 10 %")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserError(f"validation seed {self.seed!r} is not an integer: give e.g. 0")
        if self.train_rows is not None and (isinstance(self.train_rows, bool) or not isinstance(self.train_rows, int)
                                            or self.train_rows < 1):
            raise UserError(f"validation train_rows {self.train_rows!r} is not a positive integer: omit it or fix it")
        object.__setattr__(self, "fraction", float(self.fraction))

    def describe(self) -> str:
        return f"{100 * self.fraction:g}% of the train split of {self.data}, seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The record stored in a checkpoint config (`validation`) and a bundle's provenance."""
        d: dict[str, Any] = {"data": self.data, "fraction": self.fraction, "seed": self.seed, "method": METHOD}
        if self.train_rows is not None:
            d["train_rows"] = self.train_rows
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ValidationSlice:
        """Inverse of to_dict; `where` names the record's home (a file) in the UserError a bad record raises."""
        fix = "re-create it with `seenn-deploy train`, or give held-out data explicitly"
        if not isinstance(d, dict):
            raise UserError(f"{where} has a validation record of type {type(d).__name__}, not a mapping: {fix}")
        unknown = sorted(set(d) - _KEYS)
        missing = sorted({"data", "fraction", "seed"} - set(d))
        if unknown or missing:
            what = f"unknown keys {unknown}" if unknown else f"no {', '.join(missing)}"
            raise UserError(f"{where} has a validation record with {what}: {fix}")
        if d.get("method", METHOD) != METHOD:
            raise UserError(f"{where} draws its validation rows with method {d['method']!r}, which this seenn-deploy "
                            f"does not know (it uses {METHOD!r}): upgrade seenn-deploy")
        try:
            return cls(d["data"], d["fraction"], d["seed"], d.get("train_rows"))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None


def rank_order(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) [n] fixed by (n, seed) alone: rows ranked by a splitmix64 hash of (seed, row)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) + (np.arange(1, n + 1, dtype=np.uint64) * golden)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return np.argsort(z, kind="stable")  # a bijection of the row: no ties, the same order on every machine


def sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct rows of range(n), in increasing order, fixed by (n, count, seed)."""
    return np.sort(rank_order(n, seed)[:count])


def validation_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of range(n), disjoint, each increasing; round(n * fraction) >= 1 validation rows."""
    count = max(1, math.floor(n * fraction + 0.5))
    if count >= n:
        raise UserError(f"a {100 * fraction:g}% validation slice of {n} training samples leaves none to train on: "
                        "lower --val-fraction, or use more data")
    order = rank_order(n, seed)
    return np.sort(order[count:]), np.sort(order[:count])


def split_validation(train: ArrayDataset, vs: ValidationSlice) -> tuple[ArrayDataset, ArrayDataset]:
    """(fit, validation): the train split without the slice, and the slice; copies, rows in split order."""
    if vs.train_rows is not None and len(train) != vs.train_rows:
        raise UserError(
            f"the train split of {vs.data} has {len(train)} samples but had {vs.train_rows} when the validation "
            "slice was drawn, so the slice would be other rows (some of them trained on): use the data the "
            "checkpoint was trained on, or give held-out data explicitly"
        )
    fit, val = validation_rows(len(train), vs.fraction, vs.seed)
    return (train.take(fit, f"{vs.data} (train without the validation slice)"),
            train.take(val, f"{vs.data} (validation slice, {100 * vs.fraction:g}% of train, seed {vs.seed})"))


def load_validation(vs: ValidationSlice) -> ArrayDataset:
    """The slice's samples: loads the train split of `vs.data` and splits it."""
    try:
        train = parse_data_spec(vs.data).load("train")
    except UserError as exc:
        raise UserError(f"the validation slice is {vs.describe()}, and that train split cannot be loaded "
                        f"({exc}); give held-out data explicitly instead") from None
    return split_validation(train, vs)[1]
