"""A cache of decoded data, never next to the data: `--cache-dir`, else $SEENN_DEPLOY_CACHE, else ~/.cache/seenn-deploy.

What it holds: decoded image folders and archives as uint8 .npy (CIFAR-10's 50,000 training
images take 154 MB), and the file listings of archives. Each entry is keyed by the files it was
made from (paths, sizes, mtimes), so a changed data set is decoded again; deleting the folder is
always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE_ENV = "SEENN_DEPLOY_CACHE"
CACHE_VERSION = 1  # bump when a cached entry's meaning changes

_override: Path | None = None


def set_cache_dir(path: Path | None) -> None:
    """Use `path` as the cache root from now on (the CLI's --cache-dir); None goes back to the environment."""
    global _override
    _override = None if path is None else Path(path).expanduser()


def cache_dir() -> Path:
    """The cache root: set_cache_dir's, else $SEENN_DEPLOY_CACHE, else ~/.cache/seenn-deploy."""
    if _override is not None:
        return _override
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "seenn-deploy"


def make_key(*fields: Any) -> str:
    """32 hex digits from JSON-able fields and the cache version."""
    return hashlib.sha256(json.dumps([CACHE_VERSION, *fields]).encode()).hexdigest()[:32]


def names_digest(names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(os.fsencode(name) + b"\0")
    return digest.hexdigest()


def files_key(root: Path, files: list[Path]) -> str:
    """Key for a file set: absolute root, file count, total size, newest mtime, path list."""
    sizes, newest = 0, 0
    for path in files:
        stat = path.stat()
        sizes += stat.st_size
        newest = max(newest, stat.st_mtime_ns)
    names = names_digest([str(path.relative_to(root)) for path in files])
    return make_key(str(root.resolve()), len(files), sizes, newest, names)


def cache_path(namespace: str, key: str, suffix: str = ".npy") -> Path:
    return cache_dir() / namespace / f"{key}{suffix}"


def read_cached(path: Path) -> np.ndarray | None:
    """The cached array, or None when absent or unreadable (it is then rebuilt)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def read_cached_json(path: Path) -> Any:
    """The cached JSON value, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_cached(path: Path, array: np.ndarray) -> None:
    _write(path, lambda f: np.save(f, array, allow_pickle=False))


def write_cached_json(path: Path, value: Any) -> None:
    _write(path, lambda f: f.write(json.dumps(value).encode()))


def _write(path: Path, write: Callable[[Any], None]) -> None:
    """Write atomically (temp file, then os.replace); warn and go on when the cache is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"could not write the data cache {path} ({exc}); pass --cache-dir DIR or set {CACHE_ENV} "
                      "to a writable folder to avoid decoding again", stacklevel=4)
