"""`cifar10:DIR`: the "CIFAR-10 python version" pickled batches, read with a restricted unpickler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.data.dataset import ArrayDataset
from seenn_deploy.data.source import PathSource
from seenn_deploy.data.unpickle import load_restricted_pickle
from seenn_deploy.errors import UserError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META_FILE = "batches.meta"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
_SUBDIR = "cifar-10-batches-py"  # what the official tarball extracts to
_PIXELS = 3 * 32 * 32


class Cifar10Source(PathSource):
    """`cifar10:DIR`: data_batch_1..5 (train), test_batch (test), batches.meta (class names).

    Each batch is a pickled dict with b"data" uint8 [N, 3072] (1024 R, then G, then B, each a
    row-major 32x32 image) and b"labels". All = train then test. DIR may also be the folder that
    holds cifar-10-batches-py/. Without batches.meta the standard CIFAR-10 names are used.
    """

    kind = "cifar10"
    syntax = "cifar10:DIR"
    path_kind = "dir"

    def _load(self, split: str) -> ArrayDataset:
        root = self.path / _SUBDIR if (self.path / _SUBDIR).is_dir() else self.path
        names = {"train": TRAIN_BATCHES, "test": TEST_BATCHES, "all": TRAIN_BATCHES + TEST_BATCHES}[split]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise UserError(f"{root} lacks the CIFAR-10 batch files {', '.join(missing)}: extract "
                            "cifar-10-python.tar.gz there, or use imagefolder:DIR for images")
        xs, ys = zip(*(_read_batch(root / n) for n in names), strict=True)
        y = np.concatenate(ys)
        classes = _read_classes(root / META_FILE, int(y.max()) + 1 if len(y) else 0)
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        samples = np.empty(x.shape, dtype=np.float32)
        np.divide(x, np.float32(255), out=samples, dtype=np.float32)
        return ArrayDataset(samples, y, classes, self.dataset_name(split))


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 3, 32, 32] and int64 labels [N] of one batch file."""
    batch = load_restricted_pickle(path)
    data = _get(batch, b"data", path)
    labels = np.asarray(_get(batch, b"labels", path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _PIXELS:
        raise UserError(f"{path} has data that is not uint8 [N, {_PIXELS}]: "
                        "use the CIFAR-10 python version batches")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise UserError(f"{path} has {len(data)} images but labels of shape {labels.shape}: "
                        "use the CIFAR-10 python version batches")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_classes(path: Path, needed: int) -> list[str]:
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = _get(load_restricted_pickle(path), b"label_names", path)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(classes) < needed:
        raise UserError(f"{path} names {len(classes)} classes but the labels need {needed}: "
                        "use the batches.meta that came with the batches")
    return classes


def _get(batch: Any, key: bytes, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise UserError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict: "
                        "use the CIFAR-10 python version batches")
    if key in batch:
        return batch[key]
    if key.decode() in batch:  # a batch re-pickled by Python 3 with str keys
        return batch[key.decode()]
    raise UserError(f"{path} has no {key.decode()!r} entry: use the CIFAR-10 python version batches")
