"""CLI definitions shared by several commands, made once (as pip-tools does): exit codes, numeric ranges,
options, output checks, and JSON output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from seenn_deploy.files import BUNDLE, FILE, FOLDER, check_writable, json_text, write_json_atomic

# How a command ends besides 0 (done); the README documents them.
EXIT_CHECK_FAILED = 1  # the command ran and its check failed (verify: parity below tolerance)
EXIT_BAD_INPUT = 2  # a UserError or a click usage error: one line on stderr naming the problem and the fix
EXIT_INTERNAL = 3  # a bug in seenn-deploy: its traceback, to report
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report a process it ended: 128 + 2


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (click lets nan through any range)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


COUNT = click.IntRange(min=1)  # samples, batch sizes, megabytes: at least one
FRACTION = FiniteFloat(0, 1)  # agreement, flip rate: 0..1
POSITIVE = FiniteFloat(min=0, min_open=True)  # temperature, durations: > 0


def _writable(kind: str):
    """A click callback refusing an output path this process cannot write, before the command starts."""

    def callback(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
        if value is None or str(value) == "-":
            return value
        return check_writable(value, param.opts[0], kind)

    return callback


writable_file = _writable(FILE)  # a file written with write_atomic (--json, --timing-cache)
writable_folder = _writable(FOLDER)  # a folder created or written into (train --out, bench --plot)
writable_bundle = _writable(BUNDLE)  # a bundle staged beside itself (export --out)

data_option = click.option(
    "--data", "data_spec", required=True, metavar="SPEC",
    help="Dataset: digits | fashion-mnist:PATH | npz:FILE | imagefolder:DIR | cifar10:DIR.",
)
json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=writable_file,
    help="Also write the results as JSON to this file ('-' for stdout); NaN and infinities are written as null.",
)
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Allow .pt/.pth weights (read with torch.load(weights_only=True)).",
)


def samples_option(help: str = "Use the first N samples only."):
    return click.option("--samples", type=COUNT, default=None, metavar="N", help=help)


def batch_size_option(default: int = 256):
    return click.option("--batch-size", type=COUNT, default=default, show_default=True, help="Rows per graph call.")


def emit_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write `data` as strict JSON to `path` (atomically), to stdout for '-', nowhere for None."""
    if path is None:
        return
    if str(path) == "-":
        click.echo(json_text(data), nl=False)
    else:
        write_json_atomic(path, data)
