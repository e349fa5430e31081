"""`imagefolder:DIR` or `imagefolder:ARCHIVE`: class-per-folder images, decoded once with Pillow and cached as uint8."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from seenn_deploy.data.archive import ArchiveListing, archive_key, check_archive, list_archive, read_members
from seenn_deploy.data.cache import cache_path, files_key, make_key, names_digest, read_cached, write_cached
from seenn_deploy.data.dataset import ArrayDataset, single_file_rows
from seenn_deploy.data.image_layout import ImageLayout
from seenn_deploy.data.progress import note, progress_bar
from seenn_deploy.data.source import DataSource, PathSource
from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require

# (row, name for messages, file path or bytes) of one image to decode
ImageRef = tuple[int, str, "Path | BinaryIO"]


def decode_images(images: Iterable[ImageRef], count: int, desc: str) -> np.ndarray:
    """uint8 [count, C, H, W] from `count` images in any row order: RGB (C=3) unless every image is grayscale "L"."""
    image_module = require("PIL", "imagefolder datasets").Image
    bar = progress_bar(count, desc)
    out: np.ndarray | None = None
    first: tuple[str, tuple[int, int]] = ("", (0, 0))
    all_gray = True
    decoded = 0
    try:
        for row, name, source in images:
            try:
                with image_module.open(source) as im:
                    if out is None:
                        first = (name, im.size)
                        out = np.empty((count, im.size[1], im.size[0], 3), dtype=np.uint8)
                    elif im.size != first[1]:
                        raise UserError(
                            f"{name} is {im.size[0]}x{im.size[1]} but {first[0]} is {first[1][0]}x{first[1][1]} "
                            "(W x H): resize the images to one size"
                        )
                    if im.mode == "L":
                        out[row] = np.asarray(im)[..., None]
                    else:
                        all_gray = False
                        out[row] = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, image_module.DecompressionBombError) as exc:
                raise UserError(f"cannot read image {name} ({exc}): remove or replace the file") from None
            decoded += 1
            bar.update(1)
    finally:
        bar.close()
    if out is None or decoded != count:
        raise UserError(f"{desc}: found {decoded} of {count} images; the files changed while reading, try again")
    if all_gray:
        out = out[..., :1]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def image_extensions() -> set[str]:
    """File endings Pillow can open, lower case with the dot."""
    return {ext.lower() for ext in require("PIL.Image", "imagefolder datasets").registered_extensions()}


class ImageFolderSource(PathSource):
    """`imagefolder:DIR`: DIR/<class>/*.jpg, or DIR/train/<class>/... and DIR/test/<class>/....

    DIR may also be a tar archive (.tar, .tar.gz, ...) holding that layout, read in place
    (see `seenn_deploy.data.archive`); one top folder wrapping everything is looked through.
    With train/ or test/ folders those are the splits (all = both, train first); otherwise the
    class folders are split like a single-file source (train = first 90% of a fixed permutation,
    test = the rest, all = every image). Classes are the sorted folder names, the same list for
    every split; an empty class folder is an error (it would silently become a class of its own).
    Decoded images are cached as uint8 .npy under the cache dir (see `seenn_deploy.data.cache`),
    keyed by the files' names, count, size and mtime (an archive's: its path, size and mtime).
    """

    kind = "imagefolder"
    syntax = "imagefolder:DIR"
    path_kind = "file or dir"

    @classmethod
    def parse(cls, spec: str, arg: str | None) -> DataSource:
        source = super().parse(spec, arg)
        assert isinstance(source, ImageFolderSource)
        if source.path.is_file():
            check_archive(source.path, spec)
        return source

    def _load(self, split: str) -> ArrayDataset:
        extensions = image_extensions()
        listing = list_archive(self.path) if self.path.is_file() else None
        files, dirs = (listing.files, listing.dirs) if listing else _walk(self.path)
        layout = ImageLayout.from_paths([f for f in files if os.path.splitext(f)[1].lower() in extensions], dirs,
                                        str(self.path))
        parts = [self._read(layout, group, listing) for group in layout.groups_for(split)]
        x = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        y = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        if not layout.has_splits:
            rows = single_file_rows(len(y), split)
            x, y = x[rows], y[rows]
        samples = np.empty(x.shape, dtype=np.float32)
        np.divide(x, np.float32(255), out=samples, dtype=np.float32)
        return ArrayDataset(samples, y, layout.classes, self.dataset_name(split))

    def _read(self, layout: ImageLayout, group: str, listing: ArchiveListing | None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, C, H, W] and labels [N] of one group of the layout (from the archive of `listing`), cached."""
        names, labels = layout.images(group)
        where = f"{self.path}/{group}" if group else str(self.path)
        if listing is not None:
            key = make_key(archive_key(self.path), group, names_digest(names))
        else:
            key = files_key(self.path, [self.path / n for n in names])
        cached_at = cache_path("imagefolder", key)
        x = read_cached(cached_at)
        if x is not None and x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(names):
            return x, labels
        if listing is not None:
            rows = {name: row for row, name in enumerate(names)}
            images: Iterable[ImageRef] = read_members(self.path, listing.prefix, rows)
        else:
            images = ((row, str(self.path / name), self.path / name) for row, name in enumerate(names))
        x = decode_images(images, len(names), f"decoding {where}")
        note(f"caching {len(names)} decoded images ({x.nbytes / 1e6:.0f} MB) in {cached_at.parent} "
             "(--cache-dir or $SEENN_DEPLOY_CACHE to move it; safe to delete)")
        write_cached(cached_at, x)
        return x, labels


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(files, folders) under root, relative with "/" separators; hidden folders are not entered."""
    files: list[str] = []
    dirs: list[str] = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel = Path(folder).relative_to(root).as_posix()
        base = "" if rel == "." else rel + "/"
        dirs += [base + d for d in subdirs]
        files += [base + n for n in names if not n.startswith(".")]
    return files, dirs
