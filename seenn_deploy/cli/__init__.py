"""The `seenn-deploy` command: a click group whose commands are thin calls into the library.

One module per family of commands. Heavy modules (torch) are imported inside the commands, so
`seenn-deploy --help` and the runtime commands work on a machine without torch. How a command ends
is its exit code (cli/options.py): 0 done, 1 a check failed, 2 bad input (one line on stderr), 130
interrupted (one line); anything else is a bug: exit 3 with its traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from typing import Iterator, NoReturn

import click

from seenn_deploy.cli import bundle_cmds, calib_cmds, convert_cmds, policy_cmds, run_cmds, serve_cmds, train_cmds  # noqa: F401  (they register commands)
from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED
from seenn_deploy.errors import UserError
from seenn_deploy.files import note_interrupt

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs one command and turns how it ended into an exit code and at most one line."""
    with _noting_interrupts() as interrupted:
        try:
            cli.main(args=argv, prog_name="seenn-deploy", standalone_mode=False)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001  (every ending gets its exit code)
            _end(exc, bool(interrupted))


def _end(exc: BaseException, interrupted: bool) -> NoReturn:
    # A SIGINT can surface as another exception: torch.export, for one, wraps what it interrupts. click has
    # closed the terminal's ^C echo with a newline where it saw the KeyboardInterrupt (Abort); else we do.
    if interrupted or isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        _exit(EXIT_INTERRUPTED, "interrupted" if isinstance(exc, click.exceptions.Abort) else "\ninterrupted")
    if isinstance(exc, UserError):
        _exit(EXIT_BAD_INPUT, f"error: {exc}")
    if isinstance(exc, click.UsageError):
        fix = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _exit(EXIT_BAD_INPUT, f"error: {exc.format_message()}{fix}")
    if isinstance(exc, click.ClickException):  # click.FileError: a file it could not open
        _exit(EXIT_BAD_INPUT, f"error: {exc.format_message()}")
    traceback.print_exception(exc)
    _exit(EXIT_INTERNAL, "internal error: a bug in seenn-deploy, not in your input; please report it with the "
                         "traceback above")


def _exit(code: int, line: str) -> NoReturn:
    click.echo(line, err=True)
    if code == EXIT_INTERRUPTED:
        _forget_library_interrupts()
    sys.exit(code)


def _forget_library_interrupts() -> None:
    """Keep exit code 130 from turning into death by SIGINT.

    CPython ends a `python -m` run by killing itself with SIGINT, whatever its exit code, once a
    KeyboardInterrupt has escaped code that a library ran through PyRun_* (the flag
    _Py_UnhandledKeyboardInterrupt; torch.export's machinery is where a SIGINT lands during export).
    The command has handled that interrupt and chosen its ending; PyRun_* clears the flag first.
    """
    import ctypes

    try:
        ctypes.pythonapi.PyRun_SimpleString(b"")
    except (AttributeError, OSError):  # not CPython: no such flag
        pass


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[list[bool]]:
    """Yield a list that a SIGINT appends to (before raising KeyboardInterrupt, as Python's default does).

    Left alone where SIGINT is not Python's default handler (ignored in a background job, or the host
    application's own) or off the main thread.
    """
    noted: list[bool] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield noted
        return

    def note(signum, frame):
        noted.append(True)
        note_interrupt()
        raise KeyboardInterrupt

    def hold(unraisable) -> None:
        # The handler ran inside a callback whose exceptions Python ignores (an import lock's weakref
        # callback, a __del__) and the command goes on: not worth a traceback, since the interrupt is
        # noted, and the next progress update or commit point (files.raise_if_interrupted) raises it.
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            ignored(unraisable)

    ignored = sys.unraisablehook
    note_interrupt(False)
    signal.signal(signal.SIGINT, note)
    sys.unraisablehook = hold
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = ignored
        note_interrupt(False)
