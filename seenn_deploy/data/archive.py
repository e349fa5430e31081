"""Image folders packed in a tar archive (.tar, .tar.gz, ...), read in place: nothing is extracted.

Images are decoded straight from the archive's members, so no name in the archive is ever used as
a path on disk (no path traversal, no links to follow) and no copy of 50,000 small files is left
behind; only the member listing and the decoded array are cached.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seenn_deploy.data.cache import cache_path, make_key, read_cached_json, write_cached_json
from seenn_deploy.data.image_layout import SPLIT_DIRS
from seenn_deploy.data.progress import progress_bar
from seenn_deploy.errors import UserError

_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile)


def check_archive(path: Path, spec: str) -> None:
    """UserError unless `path` is a tar archive, naming the command that makes a folder of it."""
    if tarfile.is_tarfile(path):
        return
    folder = path.with_suffix("")
    command = f"unzip {path} -d {folder}" if zipfile.is_zipfile(path) else f"extract {path} into {folder}"
    raise UserError(f"data path {path} is a file, not a folder or a .tar/.tar.gz archive (from spec {spec!r}): "
                    f"{command}, then write 'imagefolder:{folder}'")


def archive_key(path: Path) -> str:
    """Cache key of an archive: its absolute path, size and mtime."""
    stat = path.stat()
    return make_key("archive", str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class ArchiveListing:
    """Regular files and folders of an archive, named without `prefix` (a top folder wrapping everything)."""

    files: list[str]
    dirs: list[str]
    prefix: str


def list_archive(path: Path) -> ArchiveListing:
    """The archive's listing (one pass over it the first time, then from the cache)."""
    cached_at = cache_path("imagefolder-archive", archive_key(path), ".json")
    cached = read_cached_json(cached_at)
    if isinstance(cached, dict) and set(cached) == {"files", "dirs", "prefix"}:
        return ArchiveListing(**cached)
    files, dirs = [], []
    with _open(path, f"listing {path.name}") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isreg():
                files.append(name)
            elif member.isdir():
                dirs.append(name.rstrip("/"))
    prefix = _wrapper(files)
    listing = ArchiveListing([f.removeprefix(prefix) for f in files],
                             [d.removeprefix(prefix) for d in dirs if d.startswith(prefix)], prefix)
    write_cached_json(cached_at, listing.__dict__)
    return listing


def read_members(path: Path, prefix: str, wanted: dict[str, int]) -> Iterator[tuple[int, str, io.BytesIO]]:
    """(row, name, bytes) of each wanted regular file (listing name -> row), in archive order: one pass."""
    with _open(path) as tar:  # the caller's decode bar shows the progress
        for member in tar:
            name = member.name.removeprefix("./")
            row = wanted.get(name.removeprefix(prefix)) if name.startswith(prefix) else None
            if row is not None and member.isreg():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                yield row, f"{path}:{member.name}", io.BytesIO(data)


def _wrapper(files: list[str]) -> str:
    """"data/" when every file is under data/<folder>/ (and data is not a split folder), else ""."""
    tops = {f.split("/", 1)[0] for f in files}
    if len(tops) != 1 or not all(f.count("/") >= 2 for f in files):
        return ""
    top = tops.pop()
    return "" if top in SPLIT_DIRS else top + "/"


class _CountingReader(io.RawIOBase):
    """A file that moves a progress bar by the bytes read past the furthest point so far."""

    def __init__(self, f: Any, bar: Any) -> None:
        super().__init__()
        self.f, self.bar, self.done = f, bar, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.f.readinto(buffer)
        position = self.f.tell()
        if position > self.done:
            self.bar.update(position - self.done)
            self.done = position
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


@contextlib.contextmanager
def _open(path: Path, desc: str | None = None) -> Iterator[tarfile.TarFile]:
    """The archive open for reading, with a bar over its bytes when `desc` is given; read errors become UserError."""
    bar = progress_bar(path.stat().st_size, desc, unit="B") if desc else None
    try:
        with open(path, "rb") as raw, tarfile.open(
            fileobj=io.BufferedReader(_CountingReader(raw, bar)) if bar else raw, mode="r:*"
        ) as tar:
            yield tar
    except _READ_ERRORS as exc:
        raise UserError(f"cannot read the archive {path} ({exc}): download or create it again") from None
    finally:
        if bar is not None:
            bar.close()
