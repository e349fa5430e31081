"""Turning raw arrays into `ArrayDataset` fields: layouts, dtypes, labels, class names; safe npz reads."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from seenn_deploy.errors import UserError

_CHANNEL_COUNTS = (1, 3, 4)
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, required: tuple[str, ...] = ("x",)) -> dict[str, np.ndarray]:
    """All arrays of an .npz file (no pickles), or UserError naming the file and the problem."""
    not_npz = UserError(f"{path} is a single .npy array, not an .npz archive: "
                        "save it with np.savez(path, x=..., y=...)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise not_npz
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except UserError:
        raise
    except _READ_ERRORS as exc:
        raise UserError(f"cannot read {path} as an .npz archive ({exc}): "
                        "re-create it with np.savez(path, x=..., y=...)") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(f"{path} has no array {missing[0]!r} (it has {sorted(arrays) or 'none'}): "
                        f"save the samples as {missing[0]}=... with np.savez")
    return arrays


def to_float_samples(x: np.ndarray, where: str) -> np.ndarray:
    """float32 samples [N, C, H, W] or [N, T, C, H, W] from x of any supported layout.

    Layouts: [N, H, W] (grayscale, C=1), [N, C, H, W], [N, H, W, C] (taken as channels-last when
    the last dim is 1, 3 or 4 and dim 1 is not), [N, T, C, H, W] events. uint8 is divided by 255;
    floats become float32 unchanged (no clipping); bool and other integers are cast.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in _CHANNEL_COUNTS and x.shape[1] not in _CHANNEL_COUNTS:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (4, 5):
        raise UserError(
            f"{where} has x of shape {x.shape}: use [N, H, W], [N, C, H, W], [N, H, W, C] "
            "or [N, T, C, H, W] (events)"
        )
    if x.dtype == np.uint8:
        out = np.empty(x.shape, dtype=np.float32)
        np.divide(x, np.float32(255), out=out, dtype=np.float32)
        return out
    if x.dtype.kind not in "biuf":
        raise UserError(f"{where} has x of dtype {x.dtype}: store numbers (uint8 0..255 or floats)")
    return np.ascontiguousarray(x, dtype=np.float32)


def to_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """int64 labels [N] from y; UserError when y is not one non-negative integer per sample."""
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{where} has {n} samples but y of shape {y.shape}: give one label per sample")
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise UserError(f"{where} has labels of dtype {y.dtype}: store integer class indices")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise UserError(f"{where} has a negative label {y.min()}: labels are class indices 0..K-1")
    return y


def to_classes(classes: np.ndarray | list[str] | None, y: np.ndarray | None, where: str) -> list[str]:
    """Class names; "0", "1", ... up to the largest label when the source names none."""
    if classes is None:
        count = int(y.max()) + 1 if y is not None and len(y) else 0
        return [str(i) for i in range(count)]
    names = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(classes).ravel()]
    if y is not None and len(y) and int(y.max()) >= len(names):
        raise UserError(f"{where} has label {int(y.max())} but only {len(names)} class names: "
                        "list one name per class in `classes`")
    return names
