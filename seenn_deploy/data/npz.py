"""`npz:FILE` (any arrays in an .npz) and `fashion-mnist:PATH` (the two-file layout or one file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seenn_deploy.data.arrays import read_npz, to_classes, to_float_samples, to_labels
from seenn_deploy.data.dataset import ArrayDataset, single_file_rows
from seenn_deploy.data.source import PathSource
from seenn_deploy.errors import UserError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {"train": "fashion_mnist_train.npz", "test": "fashion_mnist_test.npz"}


def load_npz_file(path: Path, split: str, name: str,
                  default_classes: list[str] | None = None) -> ArrayDataset:
    """One .npz file with `x` (required), `y` and `classes` (optional), cut to a single-file split.

    Single-file splits: train = first 90% (rounded down) of a fixed permutation
    (`np.random.default_rng(0)`), test = the other 10%, all = every row in file order.
    """
    arrays = read_npz(path)
    x, y = arrays["x"], arrays.get("y")
    where = str(path)
    if x.ndim == 0:
        raise UserError(f"{where} has a scalar x: store samples as [N, ...] arrays")
    labels = None if y is None else to_labels(y, len(x), where)
    classes = to_classes(arrays.get("classes", default_classes), labels, where)
    rows = single_file_rows(len(x), split)
    samples = to_float_samples(x[rows], where)
    return ArrayDataset(samples, None if labels is None else labels[rows], classes, name)


class NpzSource(PathSource):
    """`npz:FILE`: arrays `x` (required), `y` and `classes` (optional); see `load_npz_file`."""

    kind = "npz"
    syntax = "npz:FILE"

    def _load(self, split: str) -> ArrayDataset:
        return load_npz_file(self.path, split, self.dataset_name(split))


class FashionMnistSource(PathSource):
    """`fashion-mnist:PATH`: a directory with fashion_mnist_{train,test}.npz, or one .npz file.

    In a directory, train and test are the two files and all is both concatenated (train first);
    a single file is split like any single-file source (see `load_npz_file`).
    """

    kind = "fashion-mnist"
    syntax = "fashion-mnist:PATH"
    path_kind = "file or dir"

    def _load(self, split: str) -> ArrayDataset:
        name = self.dataset_name(split)
        if self.path.is_file():
            return load_npz_file(self.path, split, name, FASHION_MNIST_CLASSES)
        parts = ["train", "test"] if split == "all" else [split]
        files = [self.path / FASHION_MNIST_FILES[part] for part in parts]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{self.path} has no {', '.join(missing)}: put the Fashion-MNIST files "
                            "there or give the path of one .npz file")
        loaded = [load_npz_file(f, "all", name, FASHION_MNIST_CLASSES) for f in files]
        if len(loaded) == 1:
            return loaded[0]
        first, second = loaded
        if first.sample_shape != second.sample_shape or first.classes != second.classes:
            raise UserError(f"{files[0]} and {files[1]} differ in sample shape or classes: "
                            "use files from the same dataset")
        if (first.y is None) != (second.y is None):
            raise UserError(f"only one of {files[0]} and {files[1]} has labels: give both a `y`")
        y = None if first.y is None else np.concatenate([first.y, second.y])
        return ArrayDataset(np.concatenate([first.x, second.x]), y, first.classes, name)
