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
REFERENCE_SAMPLES = 32  # --factory: samples for the parity check, stored in the bundle for `verify`
FOREIGN_ONLY = ("--mean", "--std", "--readout", "--step-mode", "--sample-data")  # options that need --factory


@cli.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_bundle,
              help="Bundle directory to write.")
@click.option("--opset", type=OPSETS, default=None, help="ONNX opset [default: 18; 19 for --precision int8+fp16, whose "
              "FP16 Q/DQ scales need it].")
@click.option("--max-batch", type=COUNT, default=256, show_default=True, help="Largest batch the graphs accept.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8+fp16"]), default="fp32",
              show_default=True,
              help="fp16: a strongly typed FP16 graph (the precision lives in the graph). int8: explicit Q/DQ on the "
                   "spike-driven Conv/Linear layers (their spike inputs exact in INT8, per-channel INT8 weights), "
                   "the analog input, membranes and exit head in FP32; builds on TensorRT 10 and 11. int8+fp16: the "
                   "same INT8 layers with FP16 scales, the analog input layer, classifier and membranes in FP16 (the "
                   "exit head stays FP32).")
@click.option("--accumulate", type=click.Choice(["mean", "sum"]), default="mean", show_default=True,
              help="How the exit head accumulates logits over timesteps.")
@click.option("--temperature", type=POSITIVE, default=1.0, show_default=True, help="Softmax temperature of the confidence.")
@click.option("--fp32-layers", default=None, metavar="NAME[,NAME...]",
              help="With --precision fp16, int8 or int8+fp16: body layers (Conv2d, Linear) to keep in FP32; `verify` names "
                   "candidates.")
@click.option("--fp16-weights", type=click.Choice(["pair", "single"]), default="pair", show_default=True,
              help="With --precision fp16: each weight as hi + lo FP16 numbers (two FP16 products summed in FP32), "
                   "or rounded once to FP16 (half the work, more spike flips).")
@click.option("--int8-weights", type=click.Choice(["pair", "single", "tuned"]), default="pair", show_default=True,
              help="With --precision int8 or int8+fp16: each weight as a pair of INT8 numbers (high + its rounding "
                   "error / 254, one INT8 op of twice the channels, about 15-bit weights), rounded once (half the INT8 "
                   "work, more spike flips), or tuned: single weights whose per-channel rounding flips the fewest "
                   "spikes on calibration data (--calib-data).")
@click.option("--calib-data", default=None, metavar="SPEC",
              help="With --int8-weights tuned: data whose train split (outside the checkpoint's validation slice) "
                   "calibrates [default: the checkpoint's training data].")
@click.option("--calib-samples", type=COUNT, default=None,
              help="With --int8-weights tuned: calibration samples [default: 512].")
@click.option("--encoder-split", type=click.Choice(SPLIT_MODES), default="auto", show_default=True,
              help="Run the first conv + BN once per sample in encoder.onnx (on), inside every step (off), or where "
                   "that saves more compute than the bytes it adds cost (auto).")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--factory", default=None, metavar="PKG.MODULE:FUNCTION",
              help="Foreign model (SpikingJelly, snnTorch): a function that builds it; CHECKPOINT is then its weights file.")
@click.option("--input-shape", default=None, metavar="C,H,W", help="With --factory: one sample's shape.")
@click.option("--timesteps", "-T", type=COUNT, default=None, help="With --factory: T_max.")
@click.option("--sample-data", default=None, metavar="SPEC",
              help=f"With --factory: real samples (the first {REFERENCE_SAMPLES} of the test split) for the parity "
                   "check, kept in the bundle for `verify` (default: uniform noise in [0, 1]).")
@click.option("--classes", default=None, metavar="A,B,...|FILE",
              help="With --factory or a .nir file: class names, comma-separated or one per line in FILE "
                   "(default 0..K-1).")
@click.option("--mean", default=None, metavar="M[,M...]",
              help="With --factory: per-channel mean the bundle subtracts from raw inputs in [0, 1] (one value for "
                   "all channels, or one per channel).")
@click.option("--std", default=None, metavar="S[,S...]", help="With --factory: per-channel std the bundle divides by.")
@click.option("--readout", type=click.Choice(["spikes", "membrane"]), default=None,
              help="With --factory, snnTorch: which of (spikes, membrane) are the class scores [default: spikes].")
@click.option("--step-mode", type=click.Choice(["auto", "s", "m"]), default=None,
              help="With --factory: how the model runs over time, detected by default; one that contradicts the "
                   "model is refused.")
@click.option("--dt", type=POSITIVE, default=None, help="With a .nir file: the discretisation time step.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@allow_pickle_option
def export_cmd(checkpoint, out, opset, max_batch, precision, accumulate, temperature, fp32_layers, fp16_weights,
               int8_weights, calib_data, calib_samples, encoder_split, exporter, factory, input_shape, timesteps, sample_data, classes, mean, std, readout,
               step_mode, dt, force, allow_pickle) -> None:
    """Export a checkpoint to a bundle: stateful single-timestep ONNX graphs and a manifest.

    CHECKPOINT is a directory from `seenn-deploy train`, the weights file of a --factory model
    (SpikingJelly, snnTorch), or a NIR graph (FILE.nir, with --input-shape and -T).
    """
    from seenn_deploy.lazy import require

    require("torch", "export")
    require("onnx", "export")
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    options = ExportOptions(opset=opset, max_batch=max_batch, precision=precision, accumulate=accumulate,
                            temperature=temperature, encoder_split=encoder_split, exporter=exporter, force=force,
                            fp32_layers=tuple(n.strip() for n in (fp32_layers or "").split(",") if n.strip()),
                            fp16_weights=fp16_weights, int8_weights=int8_weights, calib_data=calib_data,
                            calib_samples=calib_samples)
    foreign = dict(zip(FOREIGN_ONLY, (mean, std, readout, step_mode, sample_data)))
    nir = Path(checkpoint).suffix.lower() == ".nir"
    if nir:
        given = [name for name, value in {**foreign, "--factory": factory}.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} do not apply to a NIR graph (it takes --input-shape, -T, --dt and "
                            "--classes)")
        manifest = _export_nir(checkpoint, out, input_shape, timesteps, dt, classes, options)
    elif factory is None:
        given = [name for name, value in {**foreign, "--input-shape": input_shape, "--timesteps": timesteps,
                                          "--classes": classes, "--dt": dt}.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} go with --factory (or --dt with a .nir file); a checkpoint records "
                            "them")
        manifest = export_checkpoint(checkpoint, out, options, allow_pickle=allow_pickle)
    else:
        if dt is not None:
            raise UserError("--dt goes with a .nir file; a --factory model has its own time step")
        manifest = _export_factory(factory, checkpoint, out, input_shape, timesteps, sample_data, options, allow_pickle,
                                   classes=classes, mean=mean, std=std, readout=readout or "spikes",
                                   step_mode=step_mode or "auto")
    graphs = ", ".join(f"{role}: {rel}" for role, rel in manifest.graphs.items())
    tuning = manifest.provenance.get("int8_tuning")
    if tuning:
        echo(f"INT8 weights tuned on {tuning['samples']} samples of {tuning['data']} (train split): calibration spike "
             f"flips {tuning['flip_rate_before']:.2e} (max-abs) -> {tuning['flip_rate_after']:.2e}")
    echo(f"bundle written to {out} ({graphs}; {len(manifest.states)} states, T_max {manifest.timesteps}, "
         f"{manifest.precision}, batch 1..{manifest.max_batch})")


def _input_shape(input_shape: str | None, timesteps: int | None, what: str) -> tuple[int, ...]:
    if not input_shape or not timesteps:
        raise UserError(f"{what} needs --input-shape C,H,W and --timesteps T")
    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        raise UserError(f"--input-shape {input_shape!r} is not C,H,W integers, e.g. 1,28,28") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input-shape {input_shape!r} is not three positive integers C,H,W")
    return shape


def _class_names(classes: str | None) -> list[str] | None:
    """--classes: a,b,c, or a file with one name per line (blank lines skipped)."""
    if classes is None:
        return None
    path = Path(classes)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --classes file {path}: {exc}") from None
    else:
        names = [name.strip() for name in classes.split(",")]
    if not names or not all(names):
        raise UserError(f"--classes {classes!r} has an empty name: give A,B,... or a file with one name per line")
    if len(set(names)) != len(names):
        raise UserError(f"--classes {classes!r} names a class twice; every class needs its own name")
    return names


def _per_channel(value: str | None, option: str, channels: int, default: float) -> tuple[float, ...]:
    """--mean / --std: one number for every channel or one per channel."""
    if value is None:
        return (default,) * channels
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"{option} {value!r} is not comma-separated numbers, e.g. 0.5 or 0.49,0.48,0.45") from None
    if len(numbers) == 1:
        numbers = numbers * channels
    if len(numbers) != channels:
        raise UserError(f"{option} has {len(numbers)} values for {channels} input channels: give one, or one per "
                        "channel")
    return numbers


def _export_nir(path, out, input_shape, timesteps, dt, classes, options):
    """A NIR graph (Norse, Sinabs, snnTorch, spyx, Lava export it) through export_nir."""
    shape = _input_shape(input_shape, timesteps, "a .nir file")
    from seenn_deploy.export.nir import export_nir

    return export_nir(Path(path), out, input_shape=shape, timesteps=timesteps, options=options, dt=dt,
                      classes=_class_names(classes))


def _export_factory(factory, weights, out, input_shape, timesteps, sample_data, options, allow_pickle, *,
                    classes=None, mean=None, std=None, readout="spikes", step_mode="auto"):
    """A foreign model (SpikingJelly, snnTorch) built by a factory function, through export_model."""
    import os

    import numpy as np
    import torch

    from seenn_deploy.data import Normalisation
    from seenn_deploy.export.foreign import export_model, load_factory_model
    from seenn_deploy.files import file_sha256

    shape = _input_shape(input_shape, timesteps, "--factory")
    norm = Normalisation(_per_channel(mean, "--mean", shape[0], 0.0), _per_channel(std, "--std", shape[0], 1.0))
    names = _class_names(classes)
    if sample_data:
        from seenn_deploy.data import parse_data_spec

        data = parse_data_spec(sample_data).load("test").subset(REFERENCE_SAMPLES)
        data.check_sample_shape(shape, "--input-shape")
        raw = data.x
    else:
        raw = np.random.default_rng(0).random((REFERENCE_SAMPLES, *shape), dtype=np.float32)
    mean_a = np.asarray(norm.mean, np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(norm.std, np.float32).reshape(-1, 1, 1)
    sample = torch.from_numpy((np.subtract(raw, mean_a, dtype=np.float32) / std_a).astype(np.float32))
    module = load_factory_model(factory, weights, allow_pickle)
    origin = {"factory": factory, "weights": str(Path(weights).resolve()), "weights_sha256": file_sha256(weights),
              "cwd": os.getcwd()}
    return export_model(module, sample, out, timesteps=timesteps, options=options, classes=names,
                        normalisation=norm, readout=readout, step_mode=None if step_mode == "auto" else step_mode,
                        origin=origin)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@data_option
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The source checkpoint (default: the one the bundle records).")
@samples_option("Verify on the first N samples of the test split.")
@batch_size_option()
@click.option("--min-agreement", type=FRACTION, default=None, help="Fail below this prediction agreement at any t (fp32 0.999, fp16 and int8 0.99, int8+fp16 0.98).")
@click.option("--max-flip-rate", type=FRACTION, default=None, help="Fail above this spike-flip rate (fp32 1e-4, fp16, int8 and int8+fp16 1e-2).")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True,
              help="ort: the ONNX graphs (--providers, default the CPU, which runs FP16 layers in FP32, outputs "
                   "unrounded). torch: the bundle's layout on torch ops (--device), real FP16 arithmetic.")
@device_option
@providers_option
@allow_pickle_option
@json_option
def verify_cmd(bundle, data_spec, checkpoint, samples, batch_size, min_agreement, max_flip_rate, backend, device,
               providers, allow_pickle, json_path) -> None:
    """Compare the bundle's ONNX step loop with the torch reference on real data; exit 1 past tolerance.

    A foreign bundle (SpikingJelly, snnTorch) is compared with its framework: the outputs stored at
    export, and the framework rerun on the data when its recorded factory and weights (or
    --checkpoint WEIGHTS) rebuild the model.
    """
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
    if "foreign" in manifest.provenance:
        if backend != "ort":
            raise UserError(f"{bundle} holds a foreign model ({manifest.arch}), which verify checks on ONNX Runtime "
                            "against its framework: use --backend ort")
        if max_flip_rate is not None:
            raise UserError(f"{bundle} holds a foreign model, whose spikes verify does not compare (its graph's "
                            "threshold comparisons do not map onto layers): drop --max-flip-rate")
        _verify_foreign(bundle, manifest, source, data_spec, checkpoint, samples, batch_size, min_agreement,
                        allow_pickle, json_path, options.get("providers"))
        return
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
    if report.precision == "int8" and backend == "ort":
        echo("  note: ONNX Runtime's CPU provider runs the INT8 Linear layers on its integer kernel "
             "(MatMulIntegerToFloat) and the INT8 convolutions in FP32 on the INT8 weights, with the same results")
    if report.precision == "int8+fp16" and backend == "ort":
        echo("  note: ONNX Runtime's CPU provider has no FP16 arithmetic: it casts each FP16 op to FP32 (membranes "
             "round to FP16 only between steps, as state outputs) and runs the INT8 layers in FP32 on FP16 weights, "
             "no integer kernel; --backend torch runs the FP16 layout, and TensorRT the fused INT8 kernels")
    echo("PASS" if report.passed else f"FAIL: agreement must stay >= {report.min_agreement} and the flip rate <= {report.max_flip_rate}")
    emit_json(json_path, {"bundle": str(bundle), "checkpoint": str(checkpoint), "data": data.name, **report.to_dict()})
    if not report.passed:
        sys.exit(EXIT_CHECK_FAILED)


def _verify_foreign(bundle, manifest, source, data_spec, weights, samples, batch_size, min_agreement, allow_pickle,
                    json_path, providers) -> None:
    """verify for a SpikingJelly / snnTorch bundle: against the framework's outputs stored at export, and the framework
    rerun on the data when the recorded factory and weights (or --checkpoint WEIGHTS) rebuild the model."""
    from seenn_deploy.data import check_labels
    from seenn_deploy.export.foreign import load_factory_model
    from seenn_deploy.export.verify import verify_foreign
    from seenn_deploy.files import file_sha256

    origin = manifest.provenance["foreign"].get("origin") or {}
    module, note = None, None
    if origin.get("factory"):
        path = Path(weights) if weights else Path(origin.get("weights", ""))
        if weights and not path.is_file():
            raise UserError(f"--checkpoint {path}: no such weights file")
        if not path.is_file():
            note = f"weights {path} not found (pass --checkpoint WEIGHTS)"
        else:
            if origin.get("weights_sha256") and file_sha256(path) != origin["weights_sha256"]:
                raise UserError(f"{path} is not the weights file {bundle} was exported from (its hash differs): pass "
                                "the right --checkpoint WEIGHTS or re-export")
            try:
                module = load_factory_model(origin["factory"], path, allow_pickle, search_path=origin.get("cwd"))
            except UserError as exc:
                if weights:
                    raise
                note = f"cannot rebuild the model ({exc})"
    elif weights:
        raise UserError(f"{bundle} records no --factory to build the model from: it was exported in memory, so only "
                        "its stored reference set can be checked (drop --checkpoint)")
    else:
        note = "exported in memory, with no factory recorded"
    data = None
    if module is not None:
        data = source.load("test")
        check_labels(data, manifest.num_classes, manifest.classes, f"bundle {bundle}")
        if samples is not None:
            data = data.subset(samples)
    report = verify_foreign(bundle, manifest, data=data, module=module, batch_size=batch_size,
                            min_agreement=min_agreement, providers=providers)
    foreign = manifest.provenance["foreign"]
    echo(f"{bundle} (ort) vs {foreign.get('framework')} {foreign.get('framework_version')}: T={report.timesteps}, "
         f"{report.precision}")
    if note:
        unused = f" (--samples {samples} unused)" if samples is not None else ""
        echo(f"  {note}: checked on the reference set stored at export only, not on {data_spec}{unused}")
    for check in report.checks:
        echo(f"  {check.source}: {check.samples} samples, logits within {check.tolerance:g} for "
             f"{100 * (1 - check.mismatch_rate):.2f}% of them")
        for t in range(len(check.agreement)):
            acc = ""
            if check is report.checks[0] and report.bundle_accuracy is not None and data is not None:
                acc = (f"  accuracy {100 * report.bundle_accuracy[t]:.2f}% ({foreign.get('framework')} "
                       f"{100 * report.reference_accuracy[t]:.2f}%)")
            echo(f"    t={t + 1}: agreement {100 * check.agreement[t]:.3f}%  max |logit diff| "
                 f"{check.max_logit_diff[t]:.2e}{acc}")
        if check.loop_timesteps is not None:
            echo(f"    the model's own {check.loop_timesteps}-step call vs the bundle at t={check.loop_timesteps}: "
                 f"agreement {100 * check.loop_agreement:.3f}%  max |logit diff| {check.loop_max_logit_diff:.2e}")
    for problem in report.problems:
        echo(f"  {problem}")
    echo("PASS" if report.passed else f"FAIL: agreement must stay >= {report.min_agreement} and the logits agree "
         "within the tolerance for as large a share")
    emit_json(json_path, {"bundle": str(bundle), "framework": foreign.get("framework"),
                          "data": data.name if data is not None else None, "note": note, **report.to_dict()})
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
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8+fp16"]), default=None,
              help="Default: the bundle's. An int8 or int8+fp16 bundle (explicit Q/DQ) builds on TensorRT 10 and 11; "
                   "fp16 from an fp32 bundle and int8 without Q/DQ need TensorRT 10.")
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
