"""Writing outputs safely: atomic files, strict JSON, writability checked before the work, one writer per bundle.

A reader never sees a half-written file and a crash never leaves one; a command refuses an output it
cannot write before it spends minutes on the work; two processes never write one bundle at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from seenn_deploy.errors import UserError

# What an output path names, for check_writable.
FILE = "file"  # a file created or replaced through a temporary file beside it (write_atomic)
FOLDER = "folder"  # a folder written into, created with its parents where missing
BUNDLE = "bundle"  # a folder staged beside itself and renamed into place, with its lock file beside it
# How a folder refuses a new file: permissions, a read-only mount, a file where a folder is due.
REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)


def umask_mode(base: int) -> int:
    """`base` (0o666 files, 0o777 folders) less the process umask, as open() and mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    A folder that refuses the file is a UserError: the net under outputs no check_writable saw first.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        with interrupts_deferred():  # a SIGINT between making the file and naming it would leave it behind
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmp = Path(name)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, umask_mode(0o666))  # mkstemp makes 0600; a checkpoint or bundle is meant to be shared
        raise_if_interrupted()
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if tmp is not None or exc.errno not in REFUSED:
            raise
        raise UserError(f"cannot write {path} ({exc.strerror}): choose a writable location") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object from `path`; a UserError names the file and ends with `fix` when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object: {fix}")
    return data


def finite_or_null(data: Any) -> Any:
    """`data` with every NaN, +inf and -inf float (numpy scalars and arrays included) replaced by None.

    Strict JSON has no NaN or Infinity, and parsers other than Python's reject the `-Infinity` that
    json.dumps writes by default; so in every file seenn-deploy writes, null where a number is due means
    "no finite value" (e.g. a threshold of -inf that lets every sample exit).
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(value) for value in data]
    if hasattr(data, "tolist") and hasattr(data, "dtype"):  # numpy scalar or array, without importing numpy
        return finite_or_null(data.tolist())
    return data


def json_text(data: Any) -> str:
    """Strict JSON (see finite_or_null), indented, with a final newline."""
    return json.dumps(finite_or_null(data), indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    text = json_text(data)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(path: Path, option: str, kind: str = FILE) -> Path:
    """Refuse, before any work, an output location this process cannot write; return `path`.

    `kind` says how the output is written: FILE, FOLDER or BUNDLE (see their comments). The folder that
    receives new entries is probed by creating and removing a file in it: os.access answers from mode bits,
    which root ignores, and misses read-only mounts and immutable folders. UserError names `option`.
    """
    path = Path(path)
    if kind == FILE and path.is_dir():
        raise UserError(f"{option} {path} is a folder: give a file name")
    if kind != FILE and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder: choose another {option}")
    folder = path.parent
    if kind == FOLDER:  # the nearest folder that exists: the command creates the rest (mkdir parents=True)
        folder = path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: folder {folder} does not exist: create it or choose another {option}")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder: choose another {option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".seenn-write-probe-", dir=folder)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}): choose a writable "
                        f"location for {option}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def lock_path(bundle: Path) -> Path:
    """The lock file of a bundle, made or not: `.NAME.lock` beside it, in its parent with symlinks resolved."""
    target = Path(os.path.abspath(bundle))
    return target.parent.resolve() / f".{target.name}.lock"


@contextlib.contextmanager
def bundle_lock(bundle: Path, command: str, fix: str = "wait for it to finish") -> Iterator[Path]:
    """Hold the one write lock of `bundle` (export, calibrate, build) while `command` writes it.

    An flock on `lock_path(bundle)`: the OS drops it when the process ends, however it ends, so a crash
    never leaves a stale lock. The holder writes its pid and command into the file for the message of the
    loser, which fails at once with a UserError (ending in `fix`) and leaves the file alone. The holder
    removes the file while still holding the lock, so a process that opened the removed file finds, once
    it has the lock, that the path no longer names it, and starts over on a new file.
    """
    import fcntl  # POSIX only: the runtime imports this module on any system

    lock = lock_path(bundle)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise UserError(f"cannot create the lock file {lock} ({exc.strerror or exc}): {command} needs to write "
                            f"in {lock.parent}; fix its permissions or choose another location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[0]}, {' '.join(holder[1:])}" if holder else "pid unknown"
            raise UserError(f"{bundle} is being written by another seenn-deploy process ({who}); {fix}") from None
        if _names(lock, fd):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


# Set by the command line's SIGINT handler before it raises KeyboardInterrupt (cli/__init__.py).
_INTERRUPT_REQUESTED = threading.Event()


def note_interrupt(requested: bool = True) -> None:
    """Record (or, with False, forget) that the user asked the process to stop."""
    if requested:
        _INTERRUPT_REQUESTED.set()
    else:
        _INTERRUPT_REQUESTED.clear()


def raise_if_interrupted() -> None:
    """Raise the KeyboardInterrupt of a SIGINT that never reached the command, before a commit point.

    Python runs a signal handler wherever the main thread happens to be, inside callbacks whose exceptions
    it ignores too (an import lock's weakref callback, a __del__): the KeyboardInterrupt is then printed
    as "Exception ignored" and the work goes on. Checked before renames that publish a result, so an
    interrupted command still leaves nothing behind. Never call it on a path that cleans up after an error.
    """
    if _INTERRUPT_REQUESTED.is_set() and threading.current_thread() is threading.main_thread():
        _INTERRUPT_REQUESTED.clear()
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT back while a few renames that belong together run, and deliver it after them.

    Python runs signal handlers in the main thread only, and cannot restore a handler set from C: in
    either case this does nothing.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a new folder beside `out` to fill; on success it replaces `out` whole, on failure it is removed.

    The swap runs with SIGINT held back, so `out` is always the old folder or the new one; a SIGINT the
    command never saw (raise_if_interrupted) stops it before the swap. The caller checks the target first.
    """
    out = Path(out)
    staging: Path | None = None
    try:
        with interrupts_deferred():  # a SIGINT between making the folder and naming it would leave it behind
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        staging.chmod(umask_mode(0o777))
        yield staging
        raise_if_interrupted()
        with interrupts_deferred():
            old = None
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                out.rename(old / out.name)
            try:
                staging.rename(out)
            except BaseException:
                if old is not None and not out.exists():  # put the previous folder back where it was
                    (old / out.name).rename(out)
                    shutil.rmtree(old, ignore_errors=True)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # gone already where the swap finished
        raise
