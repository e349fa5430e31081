"""Progress bars and notes on stderr for long phases (decode, train, validate), with one switch to silence them.

`quiet()` (a context manager) turns every bar and note off for the code it wraps, so a command's
`--quiet` reaches the data loaders without threading a flag through every call. tqdm is imported
only when a bar is shown, and a bar without tqdm installed is silent.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from typing import Any

from seenn_deploy.files import raise_if_interrupted

_enabled = True


@contextlib.contextmanager
def progress_enabled(enabled: bool) -> Iterator[None]:
    """Show (True) or silence (False) every bar and note inside the block; restores the previous setting."""
    global _enabled
    previous, _enabled = _enabled, enabled and _enabled
    try:
        yield
    finally:
        _enabled = previous


def quiet() -> contextlib.AbstractContextManager[None]:
    """Silence every bar and note inside the block."""
    return progress_enabled(False)


class _NoBar:
    """What `progress_bar` returns when bars are off: the tqdm calls we use, doing nothing."""

    def update(self, n: int = 1) -> None:
        raise_if_interrupted()

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm bar on stderr (cleared when closed), or a silent stand-in when bars are off or tqdm is absent."""
    if not _enabled:
        return _NoBar()
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return _NoBar()
    return _Bar(tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False,
                     dynamic_ncols=True))


class _Bar(_NoBar):
    """A tqdm bar. Its updates, like the silent bar's, raise an interrupt that Python delivered where no one saw it
    (files.raise_if_interrupted), so long work stops at its next step, not at its next write."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int = 1) -> None:
        raise_if_interrupted()
        self._bar.update(n)

    def set_postfix(self, **kwargs: Any) -> None:
        self._bar.set_postfix(**kwargs)

    def close(self) -> None:
        self._bar.close()


def note(message: str) -> None:
    """One line on stderr, e.g. where a cache is written; silent when bars are off."""
    if _enabled:
        print(message, file=sys.stderr)
