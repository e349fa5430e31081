"""`calibrate`: choose the exit threshold of a bundle."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import emit_json, json_option
from seenn_deploy.errors import UserError


@cli.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Profile the bundle on this data (default: reuse the bundle's stored profile).")
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--samples", type=int, default=None, help="Profile the first N samples only.")
@click.option("--target-drop", type=float, default=None, metavar="PTS",
              help="Fewest timesteps with accuracy within PTS percentage points of Fixed(T_max).")
@click.option("--target-timesteps", type=float, default=None, metavar="T", help="Most accurate within T average timesteps.")
@click.option("--alpha", type=float, default=None, help="Use this alpha and report it.")
@click.option("--metric", type=click.Choice(["confidence", "entropy"]), default="confidence", show_default=True)
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--no-write", is_flag=True, help="Report only; leave the bundle's exit settings as they are.")
@click.option("--no-plots", is_flag=True)
@json_option
def calibrate_cmd(bundle, data_spec, split, samples, target_drop, target_timesteps, alpha, metric, backend,
                  batch_size, no_write, no_plots, json_path) -> None:
    """Choose the exit threshold alpha: exact sweep, AET, plots; writes alpha into the bundle."""
    from seenn_deploy.calib.calibrate import (
        CALIB_DIR, PROFILE_FILE, Target, analyse, load_profile, make_plots, write_alpha, write_report,
    )
    from seenn_deploy.calib.profile import profile_bundle
    from seenn_deploy.runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    target = Target(target_drop, target_timesteps, alpha)
    target.check()
    if data_spec is None:
        profile = load_profile(bundle, manifest)
    else:
        from seenn_deploy.data import parse_data_spec
        from seenn_deploy.runtime.api import Runtime

        data = parse_data_spec(data_spec).load(split)
        if samples is not None:
            if samples < 1:
                raise UserError(f"--samples must be >= 1, got {samples}")
            data = data.subset(samples)
        runtime = Runtime.from_bundle(bundle, backend=backend, exit="fixed:1")
        with runtime:
            runtime.prepare(data.x[:1])  # shape and dtype check with the runtime's message
            profile = profile_bundle(bundle, manifest, runtime.step, runtime.encoder, data.x, data.y, data.name, batch_size)
        (Path(bundle) / CALIB_DIR).mkdir(exist_ok=True)
        profile.save(Path(bundle) / CALIB_DIR / PROFILE_FILE)
    report, chosen = analyse(profile, metric, target)
    if not no_plots:
        report.plots = make_plots(bundle, profile, report, chosen)
    write_report(bundle, report)
    click.echo(f"{bundle}: {profile.samples} samples of {profile.data}, T_max {profile.timesteps}, metric {metric}")
    if report.fixed:
        click.echo("  fixed T:  " + "  ".join(f"T={f['timesteps']}: {100 * f['accuracy']:.2f}%" for f in report.fixed))
        click.echo(f"  AET {report.aet:.3f}   empirical AET {report.empirical_aet:.3f}   "
                   f"exact sweep over {len(report.pareto)} Pareto points in {1000 * report.sweep_seconds:.1f} ms")
        click.echo("  alpha        accuracy  avg T   exits per t")
        for row in report.table:
            shares = " ".join(f"{100 * s:5.1f}" for s in row["exit_shares"])
            alpha_text = "0" if row["alpha"] == float("-inf") else f"{row['alpha']:.6g}"
            click.echo(f"  {alpha_text:<11}  {100 * row['accuracy']:6.2f}%  {row['avg_timesteps']:5.3f}   {shares}")
    if chosen is not None:
        acc = "" if np.isnan(chosen.accuracy) else f"{100 * chosen.accuracy:.2f}% "
        click.echo(f"  chosen alpha {chosen.alpha:.6g}: {acc}at {chosen.avg_timesteps:.3f} average timesteps")
        if not no_write:
            write_alpha(bundle, manifest, chosen, metric, profile.data)
            click.echo(f"  written to {bundle}/manifest.json (exit confidence:{chosen.alpha:.6g})")
    for plot in report.plots:
        click.echo(f"  plot: {bundle}/{plot}")
    emit_json(json_path, report.to_dict())
