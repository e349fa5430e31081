"""A restricted unpickler for numpy-array pickles from outside: anything but array rebuilding is refused."""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.errors import UserError

try:  # numpy >= 2 moved the module; pickles from either era name one of the two paths
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

# The globals a pickled ndarray needs: its rebuild function, ndarray, dtype, and `_codecs.encode`,
# which protocol-2 pickles use for bytes (the CIFAR-10 batches were written by Python 2 cPickle).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is a UserError."""

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(
                f"{self.source} asks to run {module}.{name} while unpickling, which is refused "
                "(only numpy arrays are allowed): use an original, unmodified copy of the file"
            ) from None


def load_restricted_pickle(path: Path, encoding: str = "bytes") -> Any:
    """The object pickled in `path`, unpickled with `RestrictedUnpickler`."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, str(path), encoding=encoding).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise UserError(f"cannot unpickle {path} ({type(exc).__name__}: {exc}): "
                        "use an original, unmodified copy of the file") from None
