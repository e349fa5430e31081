"""Commands that run bundles: `run`, `bench`."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import data_option, emit_json, json_option
from seenn_deploy.errors import UserError


@cli.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@data_option
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--samples", type=int, default=None, help="Run the first N samples only.")
@click.option("--backend", type=click.Choice(["ort", "trt", "torch"]), default="ort", show_default=True)
@click.option("--exit", "exit_spec", default=None, metavar="fixed:T|confidence:A|confidence|policy",
              help="Exit policy (default: the bundle's calibrated one, else fixed:T_max).")
@click.option("--mode", type=click.Choice(["slots", "compact", "naive"]), default="slots", show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@json_option
def run_cmd(bundle, data_spec, split, samples, backend, exit_spec, mode, batch, threads, json_path) -> None:
    """Run a bundle over a dataset with early exit: accuracy, average timesteps, exit histogram, throughput."""
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.runtime.api import Runtime
    from seenn_deploy.runtime.report import summarise

    source = parse_data_spec(data_spec)
    options = {"threads": threads} if backend == "ort" else {}
    with Runtime.from_bundle(bundle, backend=backend, exit=exit_spec, mode=mode, batch=batch, **options) as runtime:
        data = source.load(split)
        if samples is not None:
            if samples < 1:
                raise UserError(f"--samples must be >= 1, got {samples}")
            data = data.subset(samples)
        import time

        started = time.perf_counter()
        results = runtime.infer(data.x)
        seconds = time.perf_counter() - started
        summary = summarise(results, data.y, runtime.manifest.timesteps, seconds)
    click.echo(f"{bundle} on {data.name}: {backend}, {runtime.exit.describe()}, {mode} mode, batch {batch}")
    click.echo(summary.text())
    emit_json(json_path, {"bundle": str(bundle), "data": data.name, "backend": backend, "exit": runtime.exit.describe(),
                          "mode": mode, "batch": batch, **summary.to_dict()})


@cli.command("bench")
@click.option("--engine", "engine", type=click.Path(path_type=Path), required=True,
              help="What to measure: a bundle directory, a plan in BUNDLE/engines/, or a lone ONNX step graph.")
@click.option("--backend", type=click.Choice(["ort", "trt", "torch"]), default=None,
              help="Default: trt for a plan, else ort.")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--mode", type=click.Choice(["slots", "compact", "naive"]), default="slots", show_default=True)
@click.option("--exit", "exit_spec", default=None, metavar="fixed:T|confidence:A|confidence|policy")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Samples (test split). Default: the data the bundle's checkpoint was trained on, else --synthetic.")
@click.option("--synthetic", is_flag=True, help="Uniform random inputs of the bundle's shape.")
@click.option("--samples", type=int, default=None, help="Use the first N samples (synthetic default 2048).")
@click.option("--warmup-ms", type=float, default=200.0, show_default=True)
@click.option("--duration-s", type=float, default=3.0, show_default=True)
@click.option("--iterations", type=int, default=None, help="Passes over the data (instead of --duration-s).")
@click.option("--percentiles", default="50,90,95,99", show_default=True)
@click.option("--compare", type=click.Choice(["fixed"]), default=None, help="Also run Fixed(T_max) on the same data.")
@click.option("--power", type=click.Choice(["auto", "nvml", "tegrastats", "none"]), default="auto", show_default=True)
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write latency.png, exits.png, power plots and summary.md here.")
@json_option
def bench_cmd(engine, backend, batch, mode, exit_spec, data_spec, synthetic, samples, warmup_ms, duration_s, iterations,
              percentiles, compare, power, plot_dir, json_path) -> None:
    """Latency, throughput, early-exit speedup and energy of a bundle, plan or step graph on this machine."""
    from seenn_deploy.profile.bench import BenchSettings, run_bench, write_plots
    from seenn_deploy.profile.latency import parse_percentiles
    from seenn_deploy.profile.target import resolve_target

    target = resolve_target(engine)
    backend = target.check_backend(backend)
    manifest = target.manifest
    if data_spec is not None and synthetic:
        raise UserError("give one of --data SPEC or --synthetic")
    if data_spec is None and not synthetic:
        data_spec = manifest.provenance.get("data") or None
        synthetic = data_spec is None
        click.echo(f"data: {data_spec or 'synthetic'} (the bundle's training data; --data to choose)", err=True)
    try:
        pcts = parse_percentiles(percentiles)
    except ValueError as exc:
        raise UserError(f"--percentiles: {exc}") from None
    if synthetic:
        n = samples or 2048
        x = np.random.default_rng(0).uniform(0, 1, (n, *manifest.input.shape)).astype(np.float32)
        labels, name = None, f"synthetic uniform [0, 1], {n} samples"
    else:
        from seenn_deploy.data import parse_data_spec

        data = parse_data_spec(data_spec).load("test")
        data = data.subset(samples) if samples else data
        x, labels, name = data.x, data.y, data.name
    settings = BenchSettings(backend=backend, batch=batch, mode=mode, exit=exit_spec, warmup_s=warmup_ms / 1000,
                             duration_s=duration_s, iterations=iterations, percentiles=pcts,
                             compare_fixed=compare == "fixed", power=power)
    report = run_bench(target, x, labels, name, settings)
    click.echo(report.text())
    if plot_dir is not None:
        for path in write_plots(plot_dir, report):
            click.echo(f"wrote {path}")
    emit_json(json_path, report.to_dict())
