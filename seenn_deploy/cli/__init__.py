"""The `seenn-deploy` command: a click group whose commands are thin calls into the library.

One module per family of commands. Heavy modules (torch) are imported inside the commands, so
`seenn-deploy --help` and the runtime commands work on a machine without torch. A UserError
becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from seenn_deploy.cli import bundle_cmds, calib_cmds, run_cmds, train_cmds  # noqa: F401  (they register commands)
from seenn_deploy.cli.group import cli
from seenn_deploy.errors import UserError

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="seenn-deploy", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


