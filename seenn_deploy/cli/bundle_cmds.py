"""Commands that make and check bundles: `export`, `verify`, `build`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import (
    COUNT, EXIT_CHECK_FAILED, FRACTION, POSITIVE, allow_pickle_option, backend_options, batch_size_option, data_option, device_option, echo, emit_json, json_option, providers_option, samples_option, writable_bundle, writable_file,
)
from seenn_deploy.errors import UserError

# export/onnx_export.py's MIN_OPSET..MAX_OPSET and export/encoder_split.py's MODES, which import torch
OPSETS = click.IntRange(17, 21)
SPLIT_MODES = ("auto", "on", "off")


@cli.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_bundle,
              help="Bundle directory to write.")
@click.option("--opset", type=OPSETS, default=18, show_default=True)
@click.option("--max-batch", type=COUNT, default=256, show_default=True, help="Largest batch the graphs accept.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: a strongly typed FP16 graph (the precision lives in the graph).")
@click.option("--accumulate", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="How the exit head accumulates logits over timesteps.")
@click.option("--temperature", type=POSITIVE, default=1.0, show_default=True, help="Softmax temperature of the confidence.")
@click.option("--fp32-layers", default=None, metavar="NAME[,NAME...]",
              help="With --precision fp16: body layers (Conv2d, Linear) to keep in FP32; `verify` names candidates.")
@click.option("--fp16-weights", type=click.Choice(["pair", "single"]), default="pair", show_default=True,
              help="With --precision fp16: each weight as hi + lo FP16 numbers (two FP16 products summed in FP32), "
                   "or rounded once to FP16 (half the work, more spike flips).")
@click.option("--encoder-split", type=click.Choice(SPLIT_MODES), default="auto", show_default=True,
              help="Run the first conv + BN once per sample in encoder.onnx (on), inside every step (off), or where "
                   "that saves more compute than the bytes it adds cost (auto).")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--factory", default=None, metavar="PKG.MODULE:FUNCTION",
              help="Foreign model (SpikingJelly, snnTorch): a function that builds it; CHECKPOINT is then its weights file.")
@click.option("--input-shape", default=None, metavar="C,H,W", help="With --factory: one sample's shape.")
@click.option("--timesteps", "-T", type=COUNT, default=None, help="With --factory: T_max.")
@click.option("--sample-data", default=None, metavar="SPEC",
              help="With --factory: real samples for the parity check (default: uniform noise in [0, 1]).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@allow_pickle_option
def export_cmd(checkpoint, out, opset, max_batch, precision, accumulate, temperature, fp32_layers, fp16_weights,
               encoder_split, exporter, factory, input_shape, timesteps, sample_data, force, allow_pickle) -> None:
    """Export a checkpoint to a bundle: stateful single-timestep ONNX graphs and a manifest."""
    from seenn_deploy.lazy import require

    require("torch", "export")
    require("onnx", "export")
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    options = ExportOptions(opset=opset, max_batch=max_batch, precision=precision, accumulate=accumulate,
                            temperature=temperature, encoder_split=encoder_split, exporter=exporter, force=force,
                            fp32_layers=tuple(n.strip() for n in (fp32_layers or "").split(",") if n.strip()),
                            fp16_weights=fp16_weights)
    if factory is None:
        if input_shape or timesteps or sample_data:
            raise UserError("--input-shape, --timesteps and --sample-data go with --factory; a checkpoint records them")
        manifest = export_checkpoint(checkpoint, out, options, allow_pickle=allow_pickle)
    else:
        manifest = _export_factory(factory, checkpoint, out, input_shape, timesteps, sample_data, options, allow_pickle)
    graphs = ", ".join(f"{role}: {rel}" for role, rel in manifest.graphs.items())
    echo(f"bundle written to {out} ({graphs}; {len(manifest.states)} states, T_max {manifest.timesteps}, "
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
@samples_option("Verify on the first N samples of the test split.")
@batch_size_option()
@click.option("--min-agreement", type=FRACTION, default=None, help="Fail below this prediction agreement at any t (fp32 0.999, fp16 0.99).")
@click.option("--max-flip-rate", type=FRACTION, default=None, help="Fail above this spike-flip rate (fp32 1e-4, fp16 1e-2).")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True,
              help="ort: the ONNX graphs (--providers, default the CPU, which runs FP16 layers in FP32, outputs "
                   "unrounded). torch: the bundle's layout on torch ops (--device), real FP16 arithmetic.")
@device_option
@providers_option
@allow_pickle_option
@json_option
def verify_cmd(bundle, data_spec, checkpoint, samples, batch_size, min_agreement, max_flip_rate, backend, device,
               providers, allow_pickle, json_path) -> None:
    """Compare the bundle's ONNX step loop with the torch reference on real data; exit 1 past tolerance."""
    from seenn_deploy.lazy import require

    require("torch", "verify")
    from seenn_deploy.data import Normalisation, check_labels, parse_data_spec
    from seenn_deploy.files import file_sha256
    from seenn_deploy.export.verify import verify_bundle
    from seenn_deploy.runtime.manifest import read_manifest
    from seenn_deploy.snn.checkpoint import WEIGHTS_FILE, load_checkpoint

    options = backend_options(backend, device, providers)
    manifest = read_manifest(bundle)
    _check_graphs_parse(bundle, manifest.graphs.values())
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
    check_labels(data, manifest.num_classes, manifest.classes, f"bundle {bundle}")
    if samples is not None:
        data = data.subset(samples)
    report = verify_bundle(bundle, manifest, model, data, Normalisation.from_dict(config.normalisation), batch_size,
                           min_agreement, max_flip_rate, backend=backend, **options)
    echo(f"{bundle} ({backend}) vs {checkpoint} on {data.name}: {report.samples} samples, T={report.timesteps}, "
               f"{report.precision}")
    for t in range(report.timesteps):
        acc = ""
        if report.bundle_accuracy is not None:
            acc = f"  accuracy {100 * report.bundle_accuracy[t]:.2f}% (torch {100 * report.reference_accuracy[t]:.2f}%)"
        echo(f"  t={t + 1}: agreement {100 * report.agreement[t]:.3f}%  max |logit diff| "
                   f"{report.max_logit_diff[t]:.2e}{acc}")
    echo(f"  spike-flip rate {report.spike_flip_rate:.2e} over {report.spike_layers} spiking layers")
    if report.spike_flip_rate:
        echo("  by layer: " + ", ".join(f"{name} {rate:.1e}" for name, rate in report.layer_flip_rates.items()))
    if report.hint:
        echo(f"  {report.hint}")
    if report.precision == "fp16" and backend == "ort":
        echo("  note: ONNX Runtime's CPU provider runs the FP16 layers in FP32 on the FP16 weights, so outputs "
                   "are not rounded as on a GPU; --backend torch runs real FP16 arithmetic")
    echo("PASS" if report.passed else f"FAIL: agreement must stay >= {report.min_agreement} and the flip rate <= {report.max_flip_rate}")
    emit_json(json_path, {"bundle": str(bundle), "checkpoint": str(checkpoint), "data": data.name, **report.to_dict()})
    if not report.passed:
        sys.exit(EXIT_CHECK_FAILED)


def _check_graphs_parse(bundle: Path, graphs) -> None:
    """A graph that does not parse is bad input (exit 2), not a failed parity check (exit 1)."""
    from seenn_deploy.lazy import require

    onnx = require("onnx", "verify")
    for rel in graphs:
        path = Path(bundle) / rel
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path} is not a valid ONNX graph ({reason}): re-export the bundle with "
                            "`seenn-deploy export`") from None


@cli.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default: the bundle's. fp16 from an fp32 bundle and int8 without Q/DQ need TensorRT 10.")
@click.option("--max-batch", type=COUNT, default=None, help="Largest batch of the profile (default: the bundle's).")
@click.option("--opt-batch", type=COUNT, default=None, help="Batch TensorRT tunes for (default: min(64, max batch)).")
@click.option("--workspace", "workspace_mb", type=COUNT, default=None, metavar="MB",
              help="Workspace memory pool limit (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              callback=writable_file,
              help="Read tactic timings from FILE when it exists; write them back after the build.")
@click.option("--version-compatible", is_flag=True,
              help="Plans that also load on later TensorRT releases of the same major version.")
@click.option("--calib-data", default=None, metavar="SPEC",
              help="With --precision int8: samples (train split) for TensorRT 10's INT8 calibrator.")
@json_option
def build_cmd(bundle, precision, max_batch, opt_batch, workspace_mb, timing_cache, version_compatible, calib_data,
              json_path) -> None:
    """TensorRT engines for the bundle's graphs, with their records, in BUNDLE/engines/ (needs a GPU)."""
    from seenn_deploy.engine import BuildOptions, build_engines

    options = BuildOptions(precision=precision, max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace_mb,
                           timing_cache=timing_cache, version_compatible=version_compatible, calib_data=calib_data)
    engines = build_engines(bundle, options, log=echo)
    for engine in engines:
        echo(f"wrote {engine.plan} ({engine.meta.role}, {engine.meta.precision}, batch "
                   f"{engine.meta.profile['min']}..{engine.meta.profile['max']}, {engine.seconds:.1f} s)")
    emit_json(json_path, {"bundle": str(bundle), "engines": [
        {"path": str(e.plan), "seconds": e.seconds, **e.meta.to_dict()} for e in engines]})
