"""The click group every command module registers on, and the options that apply to every command."""

from __future__ import annotations

from pathlib import Path

import click

from seenn_deploy import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seenn-deploy")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Where decoded data sets are cached (CIFAR-10's training images: 154 MB). Default: "
                   "$SEENN_DEPLOY_CACHE, else ~/.cache/seenn-deploy. Safe to delete.")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None) -> None:
    """Spiking neural networks with temporal early exit, from training to edge GPUs."""
    from seenn_deploy.data.cache import set_cache_dir

    if cache_dir is not None:
        set_cache_dir(cache_dir)
        ctx.call_on_close(lambda: set_cache_dir(None))  # in-process callers (tests) get the default back
