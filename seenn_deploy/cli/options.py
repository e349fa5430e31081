"""CLI options shared by several commands, defined once (as pip-tools does), and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

data_option = click.option(
    "--data", "data_spec", required=True, metavar="SPEC",
    help="Dataset: digits | fashion-mnist:PATH | npz:FILE | imagefolder:DIR | cifar10:DIR.",
)
json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the results as JSON to this file ('-' for stdout).",
)
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Allow .pt/.pth weights (read with torch.load(weights_only=True)).",
)


def emit_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    from seenn_deploy.files import write_atomic

    write_atomic(path, lambda tmp: tmp.write_text(text))

