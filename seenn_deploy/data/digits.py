"""`digits`: the 8x8 handwritten digits bundled with the package (always available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seenn_deploy.data.dataset import ArrayDataset
from seenn_deploy.data.source import DataSource

DIGITS_FILE = Path(__file__).with_name("digits.npz")
DIGITS_TRAIN = 1437  # train = first 1437 rows, test = last 360


class DigitsSource(DataSource):
    """scikit-learn's 8x8 digits: 1797 grayscale images [N, 1, 8, 8] of the digits 0..9.

    Provenance: the UCI "Optical Recognition of Handwritten Digits" test set as shipped by
    scikit-learn (`sklearn.datasets.load_digits`, BSD-3-Clause), stored in digits.npz as `x` uint8
    [1797, 8, 8] with the raw 0..16 pixel counts and `y` uint8, rows shuffled once with
    `np.random.default_rng(0).permutation`, so the first N rows are a fair subset. Loading
    scales x by 1/16 to [0, 1]. Splits: train = first 1437 rows, test = last 360, all = all.
    """

    kind = "digits"
    syntax = "digits"

    def _load(self, split: str) -> ArrayDataset:
        with np.load(DIGITS_FILE, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
        rows = {"train": slice(0, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None), "all": slice(None)}[split]
        x = (x[rows].astype(np.float32) / np.float32(16))[:, None]
        classes = [str(i) for i in range(10)]
        return ArrayDataset(x, y[rows].astype(np.int64), classes, self.dataset_name(split))
