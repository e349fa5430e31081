"""The click group every command module registers on."""

from __future__ import annotations

import click

from seenn_deploy import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seenn-deploy")
def cli() -> None:
    """Spiking neural networks with temporal early exit, from training to edge GPUs."""
