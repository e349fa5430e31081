"""A cache of decoded arrays under `SEENN_DEPLOY_CACHE` (default ~/.cache/seenn-deploy), never next to the data."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

CACHE_ENV = "SEENN_DEPLOY_CACHE"
CACHE_VERSION = 1  # bump when the cached array's meaning changes


def cache_dir() -> Path:
    """The cache root: $SEENN_DEPLOY_CACHE, else ~/.cache/seenn-deploy."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "seenn-deploy"


def files_key(root: Path, files: list[Path]) -> str:
    """Hex key for a file set: absolute root, file count, total size, newest mtime, path list."""
    sizes, newest = 0, 0
    names = hashlib.sha256()
    for path in files:
        stat = path.stat()
        sizes += stat.st_size
        newest = max(newest, stat.st_mtime_ns)
        names.update(os.fsencode(path.relative_to(root)) + b"\0")
    fields = [CACHE_VERSION, str(root.resolve()), len(files), sizes, newest, names.hexdigest()]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]


def cache_path(namespace: str, key: str) -> Path:
    return cache_dir() / namespace / f"{key}.npy"


def read_cached(path: Path) -> np.ndarray | None:
    """The cached array, or None when absent or unreadable (it is then rebuilt)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def write_cached(path: Path, array: np.ndarray) -> None:
    """Write atomically (temp file, then os.replace); warn and go on when the cache is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"could not write the data cache {path} ({exc}); set {CACHE_ENV} to a "
                      "writable directory to avoid decoding again", stacklevel=3)
