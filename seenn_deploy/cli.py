"""The `seenn-deploy` command: a click group whose commands are thin calls into the library.

Heavy modules (torch) are imported inside the commands, so `seenn-deploy --help` and the
runtime commands work on a machine without torch. A UserError becomes one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from seenn_deploy import __version__
from seenn_deploy.errors import UserError

# -- options shared by several commands (defined once, as pip-tools does) -------------------
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seenn-deploy")
def cli() -> None:
    """Spiking neural networks with temporal early exit, from training to edge GPUs."""


@cli.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from seenn_deploy.snn.zoo import list_models

    for entry in list_models():
        kind = "snn" if entry.spiking else "ann"
        click.echo(f"{entry.name:<16} {kind}  {entry.summary}")


@cli.command("train")
@click.option("--arch", required=True, help="Model name (see `seenn-deploy models`).")
@data_option
@click.option("--timesteps", "-T", type=int, required=True, help="Timesteps per sample in training.")
@click.option("--epochs", type=int, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Checkpoint directory to create.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate (SGD, cosine schedule).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--lambda-mse", type=float, default=0.0, show_default=True, help="TET's lambda: weight of the MSE regulariser.")
@click.option("--neuron", type=click.Choice(["lif", "if"]), default="lif", show_default=True)
@click.option("--tau", type=float, default=0.5, show_default=True, help="LIF decay factor.")
@click.option("--threshold", type=float, default=1.0, show_default=True)
@click.option("--firing", type=click.Choice([">=", ">"]), default=">=", show_default=True)
@click.option("--surrogate", type=click.Choice(["triangle", "tanh"]), default="triangle", show_default=True)
@click.option("--surrogate-param", type=float, default=1.0, show_default=True, help="Triangle gamma, or tanh b.")
@click.option("--width", type=int, default=None, help="Width multiplier for archs that take one (resnet20).")
@click.option("--augment", is_flag=True, help="Random crop (pad 4) and horizontal flip, for natural images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def train_cmd(arch, data_spec, timesteps, epochs, out, batch_size, lr, weight_decay, lambda_mse, neuron, tau,
              threshold, firing, surrogate, surrogate_param, width, augment, seed, resume, quiet, json_path) -> None:
    """Train an SNN with the TET loss and write a checkpoint directory."""
    from seenn_deploy.lazy import require

    require("torch", "training")
    from seenn_deploy.snn.neuron_config import NeuronConfig
    from seenn_deploy.train.trainer import TrainConfig, train

    config = TrainConfig(
        arch=arch, data=data_spec, timesteps=timesteps, epochs=epochs, out=out, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, lambda_mse=lambda_mse,
        neuron=NeuronConfig(kind=neuron, tau=tau, v_threshold=threshold, firing=firing, surrogate=surrogate,
                            surrogate_param=surrogate_param),
        model_kwargs={} if width is None else {"width": width}, augment=augment, seed=seed, resume=resume,
    )
    history = train(config, log=click.echo, progress=not quiet)
    click.echo(f"checkpoint written to {out}")
    emit_json(json_path, {"checkpoint": str(out), "history": [vars(r) for r in history]})


@cli.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_option
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--timesteps", "-T", type=int, default=None, help="Timesteps to run (default: the checkpoint's).")
@click.option("--samples", type=int, default=None, help="Evaluate the first N samples only.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@allow_pickle_option
@json_option
def evaluate_cmd(checkpoint, data_spec, split, timesteps, samples, batch_size, allow_pickle, json_path) -> None:
    """Per-timestep accuracy of a checkpoint (mean of the first t outputs, t = 1..T)."""
    from seenn_deploy.lazy import require

    require("torch", "evaluation")
    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.snn.checkpoint import load_checkpoint
    from seenn_deploy.train.evaluate import timestep_accuracy

    source = parse_data_spec(data_spec)
    model, config = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    data = source.load(split)
    if samples is not None:
        if samples < 1:
            raise UserError(f"--samples must be >= 1, got {samples}")
        data = data.subset(samples)
    steps = timesteps or config.timesteps
    if steps < 1:
        raise UserError(f"--timesteps must be >= 1, got {steps}")
    result = timestep_accuracy(model, data, Normalisation.from_dict(config.normalisation), steps, batch_size)
    click.echo(f"{config.arch} on {data.name}, {result.samples} samples")
    for t, acc in enumerate(result.accuracy, start=1):
        click.echo(f"  T={t}: {100 * acc:.2f}%")
    emit_json(json_path, {"checkpoint": str(checkpoint), "data": data.name, **result.to_dict()})


@cli.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle directory to write.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--max-batch", type=int, default=256, show_default=True, help="Largest batch the graphs accept.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: a strongly typed FP16 graph (the precision lives in the graph).")
@click.option("--accumulate", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="How the exit head accumulates logits over timesteps.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Softmax temperature of the confidence.")
@click.option("--fp32-layers", default=None, metavar="NAME[,NAME...]",
              help="With --precision fp16: body layers (Conv2d, Linear) to keep in FP32; `verify` names candidates.")
@click.option("--fp16-weights", type=click.Choice(["pair", "single"]), default="pair", show_default=True,
              help="With --precision fp16: each weight as hi + lo FP16 numbers (two FP16 products summed in FP32), "
                   "or rounded once to FP16 (half the work, more spike flips).")
@click.option("--no-encoder-split", is_flag=True, help="Keep the first conv + BN in the step graph.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--factory", default=None, metavar="PKG.MODULE:FUNCTION",
              help="Foreign model (SpikingJelly, snnTorch): a function that builds it; CHECKPOINT is then its weights file.")
@click.option("--input-shape", default=None, metavar="C,H,W", help="With --factory: one sample's shape.")
@click.option("--timesteps", "-T", type=int, default=None, help="With --factory: T_max.")
@click.option("--sample-data", default=None, metavar="SPEC",
              help="With --factory: real samples for the parity check (default: uniform noise in [0, 1]).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@allow_pickle_option
def export_cmd(checkpoint, out, opset, max_batch, precision, accumulate, temperature, fp32_layers, fp16_weights,
               no_encoder_split, exporter, factory, input_shape, timesteps, sample_data, force, allow_pickle) -> None:
    """Export a checkpoint to a bundle: stateful single-timestep ONNX graphs and a manifest."""
    from seenn_deploy.lazy import require

    require("torch", "export")
    require("onnx", "export")
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    options = ExportOptions(opset=opset, max_batch=max_batch, precision=precision, accumulate=accumulate,
                            temperature=temperature, encoder_split=not no_encoder_split, exporter=exporter, force=force,
                            fp32_layers=tuple(n.strip() for n in (fp32_layers or "").split(",") if n.strip()),
                            fp16_weights=fp16_weights)
    if factory is None:
        if input_shape or timesteps or sample_data:
            raise UserError("--input-shape, --timesteps and --sample-data go with --factory; a checkpoint records them")
        manifest = export_checkpoint(checkpoint, out, options, allow_pickle=allow_pickle)
    else:
        manifest = _export_factory(factory, checkpoint, out, input_shape, timesteps, sample_data, options, allow_pickle)
    graphs = ", ".join(f"{role}: {rel}" for role, rel in manifest.graphs.items())
    click.echo(f"bundle written to {out} ({graphs}; {len(manifest.states)} states, T_max {manifest.timesteps}, "
               f"{manifest.precision}, batch 1..{manifest.max_batch})")


def _export_factory(factory, weights, out, input_shape, timesteps, sample_data, options, allow_pickle):
    """A foreign model (SpikingJelly, snnTorch) built by a factory function, through export_model."""
    import torch

    from seenn_deploy.export.foreign import export_model, load_factory_model

    if not input_shape or not timesteps:
        raise UserError("--factory needs --input-shape C,H,W and --timesteps T")
    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        raise UserError(f"--input-shape {input_shape!r} is not C,H,W integers, e.g. 1,28,28") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape {input_shape!r} is not three positive integers C,H,W")
    if sample_data:
        from seenn_deploy.data import parse_data_spec

        data = parse_data_spec(sample_data).load("test").subset(8)
        data.check_sample_shape(shape, "--input-shape")
        sample = torch.from_numpy(data.x)
    else:
        sample = torch.rand(8, *shape, generator=torch.Generator().manual_seed(0))
    module = load_factory_model(factory, weights, allow_pickle)
    return export_model(module, sample, out, timesteps=timesteps, options=options)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@data_option
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The source checkpoint (default: the one the bundle records).")
@click.option("--samples", type=int, default=None, help="Verify on the first N samples of the test split.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--min-agreement", type=float, default=None, help="Fail below this prediction agreement at any t (fp32 0.999, fp16 0.99).")
@click.option("--max-flip-rate", type=float, default=None, help="Fail above this spike-flip rate (fp32 1e-4, fp16 1e-2).")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True,
              help="ort: the ONNX graphs (CPU provider; it runs FP16 layers in FP32, outputs unrounded). "
                   "torch: the bundle's layout on torch ops, real FP16 arithmetic.")
@allow_pickle_option
@json_option
def verify_cmd(bundle, data_spec, checkpoint, samples, batch_size, min_agreement, max_flip_rate, backend, allow_pickle,
               json_path) -> None:
    """Compare the bundle's ONNX step loop with the torch reference on real data; exit 1 past tolerance."""
    from seenn_deploy.lazy import require

    require("torch", "verify")
    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.files import file_sha256
    from seenn_deploy.export.verify import verify_bundle
    from seenn_deploy.runtime.manifest import read_manifest
    from seenn_deploy.snn.checkpoint import WEIGHTS_FILE, load_checkpoint

    manifest = read_manifest(bundle)
    source = parse_data_spec(data_spec)
    recorded = manifest.provenance.get("checkpoint")
    checkpoint = checkpoint or (Path(recorded) if recorded else None)
    if checkpoint is None:
        raise UserError(f"{bundle} records no source checkpoint: pass --checkpoint")
    model, config = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    weights = Path(checkpoint) / WEIGHTS_FILE if Path(checkpoint).is_dir() else Path(checkpoint)
    expected_hash = manifest.provenance.get("checkpoint_sha256")
    if expected_hash and file_sha256(weights) != expected_hash:
        raise UserError(f"{checkpoint} is not the checkpoint {bundle} was exported from (weights hash differs): "
                        "pass the right --checkpoint or re-export")
    data = source.load("test")
    if samples is not None:
        if samples < 1:
            raise UserError(f"--samples must be >= 1, got {samples}")
        data = data.subset(samples)
    report = verify_bundle(bundle, manifest, model, data, Normalisation.from_dict(config.normalisation), batch_size,
                           min_agreement, max_flip_rate, backend=backend)
    click.echo(f"{bundle} ({backend}) vs {checkpoint} on {data.name}: {report.samples} samples, T={report.timesteps}, "
               f"{report.precision}")
    for t in range(report.timesteps):
        acc = ""
        if report.bundle_accuracy is not None:
            acc = f"  accuracy {100 * report.bundle_accuracy[t]:.2f}% (torch {100 * report.reference_accuracy[t]:.2f}%)"
        click.echo(f"  t={t + 1}: agreement {100 * report.agreement[t]:.3f}%  max |logit diff| "
                   f"{report.max_logit_diff[t]:.2e}{acc}")
    click.echo(f"  spike-flip rate {report.spike_flip_rate:.2e} over {report.spike_layers} spiking layers")
    if report.spike_flip_rate:
        click.echo("  by layer: " + ", ".join(f"{name} {rate:.1e}" for name, rate in report.layer_flip_rates.items()))
    if report.hint:
        click.echo(f"  {report.hint}")
    if report.precision == "fp16" and backend == "ort":
        click.echo("  note: ONNX Runtime's CPU provider runs the FP16 layers in FP32 on the FP16 weights, so outputs "
                   "are not rounded as on a GPU; --backend torch runs real FP16 arithmetic")
    click.echo("PASS" if report.passed else f"FAIL: agreement must stay >= {report.min_agreement} and the flip rate <= {report.max_flip_rate}")
    emit_json(json_path, {"bundle": str(bundle), "checkpoint": str(checkpoint), "data": data.name, **report.to_dict()})
    if not report.passed:
        sys.exit(1)


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


@cli.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the bundle's. fp16 from an fp32 bundle and int8 without Q/DQ need TensorRT 10.")
@click.option("--max-batch", type=int, default=None, help="Largest batch of the profile (default: the bundle's).")
@click.option("--opt-batch", type=int, default=None, help="Batch TensorRT tunes for (default: min(64, max batch)).")
@click.option("--workspace", "workspace_mb", type=int, default=None, metavar="MB",
              help="Workspace memory pool limit (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Read tactic timings from FILE when it exists; write them back after the build.")
@click.option("--version-compatible", is_flag=True,
              help="Plans that also load on later TensorRT releases of the same major version.")
@click.option("--calib-data", default=None, metavar="SPEC",
              help="With --precision int8: samples (train split) for TensorRT 10's INT8 calibrator.")
@json_option
def build_cmd(bundle, precision, max_batch, opt_batch, workspace_mb, timing_cache, version_compatible, calib_data,
              json_path) -> None:
    """TensorRT engines for the bundle's graphs, with their records, in BUNDLE/engines/ (needs a GPU)."""
    from seenn_deploy.build import BuildOptions, build_engines

    options = BuildOptions(precision=precision, max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace_mb,
                           timing_cache=timing_cache, version_compatible=version_compatible, calib_data=calib_data)
    engines = build_engines(bundle, options, log=click.echo)
    for engine in engines:
        click.echo(f"wrote {engine.plan} ({engine.meta.role}, {engine.meta.precision}, batch "
                   f"{engine.meta.profile['min']}..{engine.meta.profile['max']}, {engine.seconds:.1f} s)")
    emit_json(json_path, {"bundle": str(bundle), "engines": [
        {"path": str(e.plan), "seconds": e.seconds, **e.meta.to_dict()} for e in engines]})


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


if __name__ == "__main__":
    main()
