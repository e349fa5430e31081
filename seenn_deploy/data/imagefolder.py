"""`imagefolder:DIR`: class-per-folder images, decoded once with Pillow and cached as uint8."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from seenn_deploy.data.cache import cache_path, files_key, read_cached, write_cached
from seenn_deploy.data.dataset import ArrayDataset, single_file_rows
from seenn_deploy.data.source import PathSource
from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require

SPLIT_DIRS = ("train", "test")


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(root: Path, classes: list[str], extensions: set[str]) -> tuple[list[Path], np.ndarray]:
    """Image files under root/<class>/ (recursive, sorted) and their class indices [N]."""
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions
                       and p.is_file() and not p.name.startswith("."))
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def decode_images(files: list[Path], desc: str) -> np.ndarray:
    """uint8 [N, C, H, W]: RGB (C=3) unless every image is grayscale "L" (C=1)."""
    image_module = require("PIL", "imagefolder datasets").Image
    bar = _progress(files, desc)
    out: np.ndarray | None = None
    first_size: tuple[int, int] = (0, 0)
    all_gray = True
    for i, path in enumerate(bar):
        try:
            with image_module.open(path) as im:
                if out is None:
                    first_size = im.size
                    out = np.empty((len(files), first_size[1], first_size[0], 3), dtype=np.uint8)
                elif im.size != first_size:
                    raise UserError(
                        f"{path} is {im.size[0]}x{im.size[1]} but {files[0]} is "
                        f"{first_size[0]}x{first_size[1]} (W x H): resize the images to one size"
                    )
                if im.mode == "L":
                    out[i] = np.asarray(im)[..., None]
                else:
                    all_gray = False
                    out[i] = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise UserError(f"cannot read image {path} ({exc}): remove or replace the file") from None
    assert out is not None
    if all_gray:
        out = out[..., :1]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _progress(files: list[Path], desc: str) -> Iterable[Path]:
    """A tqdm bar on stderr when tqdm is installed, else the plain list."""
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return files
    return tqdm(files, desc=desc, unit="img", file=sys.stderr, leave=False)


class ImageFolderSource(PathSource):
    """`imagefolder:DIR`: DIR/<class>/*.jpg, or DIR/train/<class>/... and DIR/test/<class>/....

    With train/ or test/ subfolders those are the splits (all = both, train first); otherwise DIR
    holds the class folders and is split like a single-file source (train = first 90% of a fixed
    permutation, test = the rest, all = every image). Classes are the sorted folder names, the
    same list for every split. Decoded images are cached as uint8 .npy under the cache dir
    (see `seenn_deploy.data.cache`), keyed by the folder and its files' count, size and mtime.
    """

    kind = "imagefolder"
    syntax = "imagefolder:DIR"
    path_kind = "dir"

    def _load(self, split: str) -> ArrayDataset:
        name = self.dataset_name(split)
        has_splits = [d for d in SPLIT_DIRS if (self.path / d).is_dir()]
        extensions = {ext.lower() for ext in require("PIL.Image", "imagefolder datasets").registered_extensions()}
        if not has_splits:
            classes = self._class_names([self.path])
            x, y = self._read(self.path, classes, extensions)
            rows = single_file_rows(len(y), split)
            return self._dataset(x[rows], y[rows], classes, name)
        if split not in ("all", *has_splits):
            raise UserError(f"{self.path} has no {split}/ folder: put the {split} images in "
                            f"{self.path / split}/<class>/ or load split {has_splits[0]!r}")
        classes = self._class_names([self.path / d for d in has_splits])
        wanted = has_splits if split == "all" else [split]
        parts = [self._read(self.path / d, classes, extensions) for d in wanted]
        x = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return self._dataset(x, y, classes, name)

    def _class_names(self, roots: list[Path]) -> list[str]:
        names = sorted({d.name for root in roots for d in _visible_dirs(root)})
        if not names:
            raise UserError(f"{roots[0]} has no class folders: put the images in "
                            f"{roots[0]}/<class name>/")
        return names

    def _read(self, root: Path, classes: list[str], extensions: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, C, H, W] and labels [N] of one file set, through the cache."""
        files, labels = list_images(root, classes, extensions)
        if not files:
            raise UserError(f"{root} has no images in its class folders: put image files "
                            f"({', '.join(sorted(extensions)[:6])}, ...) in {root}/<class>/")
        path = cache_path("imagefolder", files_key(root, files))
        x = read_cached(path)
        if x is None or x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(files):
            x = decode_images(files, f"decoding {root}")
            write_cached(path, x)
        return x, labels

    @staticmethod
    def _dataset(x: np.ndarray, y: np.ndarray, classes: list[str], name: str) -> ArrayDataset:
        samples = np.empty(x.shape, dtype=np.float32)
        np.divide(x, np.float32(255), out=samples, dtype=np.float32)
        return ArrayDataset(samples, y, classes, name)
