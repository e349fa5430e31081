"""Commands that run bundles: `run`, `bench`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import (
    backend_options, data_option, device_option, echo, emit_json, json_option, providers_option, writable_folder,
)
from seenn_deploy.errors import UserError
from seenn_deploy.runtime.bundle import BACKENDS
from seenn_deploy.runtime.scheduler import MODES

MAX_THREADS = 4 * (os.cpu_count() or 1)  # past this, ONNX Runtime's pool only adds contention
threads_option = click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                              help=f"ONNX Runtime intra-op threads, 1..{MAX_THREADS} (default: ONNX Runtime's choice).")
batch_option = click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
                            help="Batch rows (up to the bundle's max batch).")
mode_option = click.option("--mode", type=click.Choice(MODES), default="slots", show_default=True)


@cli.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@data_option
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Run the first N samples only.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
@click.option("--exit", "exit_spec", default=None, metavar="fixed:T|confidence[:A][@T_CAP]|policy|policy+confidence[:A]",
              help="Exit policy (default: the bundle's calibrated one, else fixed:T_max).")
@mode_option
@batch_option
@threads_option
@device_option
@providers_option
@json_option
def run_cmd(bundle, data_spec, split, samples, backend, exit_spec, mode, batch, threads, device, providers,
            json_path) -> None:
    """Run a bundle over a dataset with early exit: accuracy, average timesteps, exit histogram, throughput."""
    from seenn_deploy.data import check_labels, parse_data_spec
    from seenn_deploy.runtime.api import Runtime
    from seenn_deploy.runtime.report import summarise

    source = parse_data_spec(data_spec)
    options = backend_options(backend, device, providers, threads)
    with Runtime.from_bundle(bundle, backend=backend, exit=exit_spec, mode=mode, batch=batch, **options) as runtime:
        data = source.load(split)
        check_labels(data, runtime.manifest.num_classes, runtime.manifest.classes, f"bundle {bundle}")
        if samples is not None:
            data = data.subset(samples)
        started = time.perf_counter()
        results = runtime.infer(data.x)
        seconds = time.perf_counter() - started
        summary = summarise(results, data.y, runtime.manifest.timesteps, seconds)
        placement = runtime.step.placement
    echo(f"{bundle} on {data.name}: {backend} on {placement}, {runtime.exit.describe()}, {mode} mode, batch {batch}")
    echo(summary.text())
    emit_json(json_path, {"bundle": str(bundle), "data": data.name, "backend": backend, "device": placement,
                          "exit": runtime.exit.describe(),
                          "mode": mode, "batch": batch, **summary.to_dict()})


@cli.command("bench")
@click.option("--engine", "engine", type=click.Path(path_type=Path), required=True,
              help="What to measure: a bundle directory, a plan in BUNDLE/engines/, or a lone ONNX step graph.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Default: trt for a plan, else ort.")
@batch_option
@mode_option
@threads_option
@device_option
@providers_option
@click.option("--exit", "exit_spec", default=None, metavar="fixed:T|confidence[:A][@T_CAP]|policy|policy+confidence[:A]")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Samples (test split). Default: the data the bundle's checkpoint was trained on, else --synthetic.")
@click.option("--synthetic", is_flag=True, help="Uniform random inputs of the bundle's shape.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Use the first N samples (synthetic default 2048).")
@click.option("--warmup-ms", type=click.FloatRange(min=0), default=200.0, show_default=True)
@click.option("--duration-s", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Answer this many passes' worth of samples (instead of --duration-s).")
@click.option("--percentiles", default="50,90,95,99", show_default=True)
@click.option("--compare", type=click.Choice(["fixed"]), default=None, help="Also run Fixed(T_max) on the same data.")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="What the speedup compares: wall seconds, or the CPU seconds of the thread that runs the steps "
                   "(needs --threads 1 with ONNX Runtime on the CPU; ignores other load on a shared machine).")
@click.option("--power", type=click.Choice(["auto", "nvml", "tegrastats", "none"]), default="auto", show_default=True,
              help="Measured energy: NVML samples the GPU the step graph runs on; auto takes tegrastats on a Jetson, "
                   "NVML for a GPU run, else none.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None, callback=writable_folder,
              help="Write latency.png, exits.png, power plots and summary.md here.")
@json_option
def bench_cmd(engine, backend, batch, mode, threads, device, providers, exit_spec, data_spec, synthetic, samples, warmup_ms,
              duration_s, iterations, percentiles, compare, clock, power, plot_dir, json_path) -> None:
    """Latency, throughput, early-exit speedup and energy of a bundle, plan or step graph on this machine."""
    from seenn_deploy.profile.bench import BenchSettings, run_bench, write_plots
    from seenn_deploy.profile.latency import parse_percentiles
    from seenn_deploy.profile.target import resolve_target

    target = resolve_target(engine)
    backend = target.check_backend(backend)
    options = backend_options(backend, device, providers, threads)
    manifest = target.manifest
    if data_spec is not None and synthetic:
        raise UserError("give one of --data SPEC or --synthetic")
    if data_spec is None and not synthetic:
        data_spec = manifest.provenance.get("data") or None
        synthetic = data_spec is None
        echo(f"data: {data_spec or 'synthetic'} (the bundle's training data; --data to choose)", err=True)
    try:
        pcts = parse_percentiles(percentiles)
    except ValueError as exc:
        raise UserError(f"--percentiles: {exc}") from None
    if synthetic:
        n = samples or 2048
        x = np.random.default_rng(0).uniform(0, 1, (n, *manifest.input.shape)).astype(np.float32)
        labels, name = None, f"synthetic uniform [0, 1], {n} samples"
    else:
        from seenn_deploy.data import check_labels, parse_data_spec

        data = parse_data_spec(data_spec).load("test")
        check_labels(data, manifest.num_classes, manifest.classes, f"{engine}")
        data = data.subset(samples) if samples else data
        x, labels, name = data.x, data.y, data.name
    settings = BenchSettings(backend=backend, batch=batch, mode=mode, exit=exit_spec, warmup_s=warmup_ms / 1000,
                             duration_s=duration_s, iterations=iterations, percentiles=pcts,
                             compare_fixed=compare == "fixed", power=power, clock=clock)
    report = run_bench(target, x, labels, name, settings, **options)
    echo(report.text())
    if plot_dir is not None:
        for path in write_plots(plot_dir, report):
            echo(f"wrote {path}")
    emit_json(json_path, report.to_dict())
