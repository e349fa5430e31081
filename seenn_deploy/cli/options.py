"""CLI definitions shared by several commands, made once (as pip-tools does): exit codes, numeric ranges,
options, output checks, and JSON output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from seenn_deploy.errors import UserError
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
JSON_TO_STDOUT = "seenn_deploy.json_to_stdout"  # ctx.meta key: --json - claims stdout, the report goes to stderr


def _json_target(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and str(value) == "-":
        ctx.meta[JSON_TO_STDOUT] = True
        return value
    return writable_file(ctx, param, value)


json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_json_target,
    help="Also write the results as JSON to this file ('-': stdout, and the report goes to stderr); NaN and "
         "infinities are written as null.",
)


def echo(message: str = "", err: bool = False) -> None:
    """click.echo for a command's report: on stderr when `--json -` writes the JSON to stdout."""
    ctx = click.get_current_context(silent=True)
    click.echo(message, err=err or bool(ctx is not None and ctx.meta.get(JSON_TO_STDOUT)))
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Allow .pt/.pth weights (read with torch.load(weights_only=True)).",
)


device_option = click.option(
    "--device", default=None, metavar="cpu|cuda[:N]",
    help="Where the graphs run: torch backend cpu (default) or cuda:N; trt backend the GPU cuda:N (default cuda:0).",
)
providers_option = click.option(
    "--providers", default=None, metavar="NAME[:N],...",
    help="ONNX Runtime execution providers in order of preference, e.g. cuda:1,cpu (short names cpu, cuda, tensorrt, "
         "... or full ones; default cpu). One that does not load is an error, not a silent fall back to the CPU.",
)


def backend_options(backend: str, device: str | None, providers: str | None, threads: int | None = None) -> dict:
    """Runtime options from --device, --providers and --threads for `backend`; UserError for one it does not take."""
    if backend == "ort":
        if device is not None:
            example = f"{device},cpu" if device.startswith("cuda") else "cpu"
            raise UserError(f"--device is for --backend torch and trt; ONNX Runtime takes --providers, e.g. "
                            f"--providers {example}")
        from seenn_deploy.runtime.executors.ort import parse_providers

        options: dict[str, Any] = {"providers": parse_providers(providers)} if providers else {}
        return {**options, "threads": threads} if threads is not None else options
    given = [name for name, value in (("--providers", providers), ("--threads", threads)) if value is not None]
    if given:
        raise UserError(f"{' and '.join(given)} are ONNX Runtime's options (--backend ort); --backend {backend} takes "
                        "--device")
    if device is None:
        return {}
    if backend == "torch":
        from seenn_deploy.lazy import require
        from seenn_deploy.runtime.executors.torch_executor import torch_device

        torch_device(require("torch", "the torch backend"), device)  # refused here, before any data is read
        return {"device": device}
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise UserError(f"--device {device}: --backend {backend} runs on a GPU; give cuda or cuda:N")
    return {"device": int(index or 0)}


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
