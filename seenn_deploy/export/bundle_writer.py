"""Writing a bundle directory all at once: staged beside the target, renamed into place at the end."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from seenn_deploy.errors import UserError
from seenn_deploy.files import BUNDLE, bundle_lock, check_writable, staged_folder
from seenn_deploy.runtime.manifest import MANIFEST


def check_bundle_target(out: Path, force: bool) -> None:
    """Refuse a target that holds anything but an old bundle (which --force may replace)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is a file, not a bundle: choose another --out")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise UserError(f"{out} exists and is not a seenn-deploy bundle: choose another --out (nothing was written)")
    if not force:
        raise UserError(f"bundle {out} exists: pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def staged_bundle(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it replaces `out`, on failure it is removed.

    The export holds the bundle's lock throughout (another export, calibrate or build of `out` fails at
    once), checks the target under it (a bundle another export just finished needs --force too), and
    swaps the folders with SIGINT held back, so `out` is always the old bundle or the new one.
    """
    out = Path(out)
    check_writable(out, "--out", BUNDLE)
    with bundle_lock(out, "export", fix="wait for it or choose another --out"):
        check_bundle_target(out, force)
        with staged_folder(out) as staging:
            yield staging
