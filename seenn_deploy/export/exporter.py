"""Export a spiking model to a bundle: encoder.onnx (static inputs), step.onnx, policy.onnx, manifest.json."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seenn_deploy import __version__
from seenn_deploy.data import Normalisation
from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.bundle_writer import staged_bundle
from seenn_deploy.export.encoder_split import MODES as SPLIT_MODES
from seenn_deploy.export.encoder_split import decide_split
from seenn_deploy.export.int8 import INT8_WEIGHTS, graph_form, quantized_layers
from seenn_deploy.export.precision import FP16_WEIGHTS, for_precision
from seenn_deploy.export.qdq import qdq_rewrite
from seenn_deploy.export.onnx_export import GraphSpec, check_opset, export_graph
from seenn_deploy.export.step_module import EncoderModule, StepModule, graph_states
from seenn_deploy.files import file_sha256, json_text
from seenn_deploy.runtime.manifest import (
    ACCUMULATIONS, CONFIDENCE, INT8_PRECISIONS, LOGITS, MAX_BATCH, METADATA_KEY, PRECISIONS, PREDICTION, RESET, X, ExitInfo, InputInfo, Manifest,
    write_manifest,
)
from seenn_deploy.snn.model import SpikingModel

EXAMPLE_BATCH = 2
DEFAULT_OPSET = 18
FP16_QDQ_OPSET = 19  # QuantizeLinear / DequantizeLinear take float16 scales from opset 19
EXPORT_INT8_WEIGHTS = (*INT8_WEIGHTS, "tuned")
CALIB_SAMPLES = 512  # "tuned": 512, 1024 and 2048 samples chose the same on the Fashion-MNIST validation slice
CALIB_BATCH = 128


@dataclass
class ExportOptions:
    """Settings of `seenn-deploy export`; see its --help."""

    opset: int | None = None  # DEFAULT_OPSET, or FP16_QDQ_OPSET for int8+fp16 (`graph_opset`)
    max_batch: int = 256
    precision: str = "fp32"
    accumulate: str = "mean"
    temperature: float = 1.0
    encoder_split: str = "auto"  # "auto" | "on" | "off" (export/encoder_split.py)
    fp32_layers: tuple[str, ...] = ()  # fp16 / int8 / int8+fp16: more layers kept in FP32 (precision.py, int8.py)
    fp16_weights: str = "pair"  # fp16 only: "pair" (hi + lo) or "single" FP16 weights (export/precision.py)
    int8_weights: str = "pair"  # int8 / int8+fp16: "pair" (high + low), "single" or "tuned" INT8 weights (int8.py,
    # int8_rounding.py: single weights chosen on calibration data)
    calib_data: str | None = None  # "tuned": data spec whose train split calibrates (default: the checkpoint's data)
    calib_samples: int | None = None  # "tuned": calibration samples (CALIB_SAMPLES)
    exporter: str = "dynamo"
    force: bool = False

    @property
    def graph_opset(self) -> int:
        """--opset, or by default 18 (19 for int8+fp16, whose FP16 Q/DQ scales need it)."""
        if self.opset is not None:
            return self.opset
        return FP16_QDQ_OPSET if self.precision == "int8+fp16" else DEFAULT_OPSET

    def check(self) -> None:
        check_opset(self.graph_opset)
        if self.precision == "int8+fp16" and self.graph_opset < FP16_QDQ_OPSET:
            raise UserError(f"--precision int8+fp16 needs --opset {FP16_QDQ_OPSET} or above (QuantizeLinear and "
                            f"DequantizeLinear take FP16 scales from opset {FP16_QDQ_OPSET}), got --opset "
                            f"{self.opset}: pass --opset {FP16_QDQ_OPSET}, or leave --opset out")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise UserError(f"--max-batch must be in 1..{MAX_BATCH}, got {self.max_batch}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.accumulate not in ACCUMULATIONS:
            raise UserError(f"--accumulate {self.accumulate!r} is not one of {', '.join(ACCUMULATIONS)}")
        if not 1e-6 <= self.temperature <= 1e6:
            raise UserError(f"--temperature must be in [1e-6, 1e6], got {self.temperature}")
        if self.fp32_layers and self.precision == "fp32":
            raise UserError("--fp32-layers applies to --precision fp16, int8 and int8+fp16 (an fp32 graph has every "
                            "layer in FP32)")
        if self.encoder_split not in SPLIT_MODES:
            raise UserError(f"--encoder-split {self.encoder_split!r} is not one of {', '.join(SPLIT_MODES)}")
        if self.fp16_weights not in FP16_WEIGHTS:
            raise UserError(f"--fp16-weights {self.fp16_weights!r} is not one of {', '.join(FP16_WEIGHTS)}")
        if self.int8_weights not in EXPORT_INT8_WEIGHTS:
            raise UserError(f"--int8-weights {self.int8_weights!r} is not one of {', '.join(EXPORT_INT8_WEIGHTS)}")
        given = [name for name, value in (("--calib-data", self.calib_data), ("--calib-samples", self.calib_samples))
                 if value is not None]
        if given and self.int8_weights != "tuned":
            raise UserError(f"{' and '.join(given)} go with --int8-weights tuned (weights chosen on calibration "
                            "data): drop them, or add --int8-weights tuned")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UserError(f"--calib-samples must be >= 1, got {self.calib_samples} ({CALIB_SAMPLES} is a good start)")
        for option, value, applies in (("--fp16-weights", self.fp16_weights, ("fp16",)),
                                       ("--int8-weights", self.int8_weights, INT8_PRECISIONS)):
            if value != "pair" and self.precision not in applies:  # "pair" is the default: harmless, given or not
                raise UserError(f"{option} {value} applies to --precision {' and '.join(applies)} only, not "
                                f"{self.precision}: drop it, or export with --precision {applies[0]}")

    @property
    def weights(self) -> str:
        """The weights' form recorded in the manifest (its fp16_weights field): the int8 one for an int8 export, where
        tuned weights are single ones (one INT8 product; the graph holds their values)."""
        if self.precision in INT8_PRECISIONS:
            return "single" if self.int8_weights == "tuned" else self.int8_weights
        return self.fp16_weights


@dataclass
class ExportSource:
    """The model and what the bundle records about it."""

    model: SpikingModel
    timesteps: int
    classes: list[str]
    normalisation: Normalisation | None = None
    event: bool = False
    arch: str = ""
    policy: nn.Module | None = None
    candidates: list[int] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # written into the bundle beside the graphs (relative names)


def _versions() -> dict[str, str]:
    """Versions of what made the graphs; onnxruntime may be absent (it comes from an extra) and is then recorded so."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    ort = next((v for v in (version("onnxruntime"), version("onnxruntime-gpu")) if v != "absent"), "absent")
    return {"seenn_deploy": __version__, "torch": torch.__version__, "onnx": version("onnx"), "onnxruntime": ort}


def export_bundle(source: ExportSource, out: Path, options: ExportOptions | None = None) -> Manifest:
    """Write the bundle for `source` to `out` (all or nothing) and return its manifest."""
    options = options or ExportOptions()
    options.check()
    model = source.model
    if not isinstance(model, SpikingModel):
        raise UserError(f"export takes a SpikingModel, got {type(model).__name__}: wrap foreign models with export_model()")
    if source.timesteps < 1:
        raise UserError(f"timesteps must be >= 1, got {source.timesteps}")
    if len(source.classes) != model.num_classes:
        raise UserError(f"{len(source.classes)} class names for a model with {model.num_classes} outputs")
    dtype = torch.float32  # graph inputs and outputs; FP16 and INT8 live inside (export/precision.py, int8.py), and
    # int8+fp16 neuron states are FP16 (graph_states)
    model = for_precision(model, options.precision, options.fp32_layers, options.weights)
    channels = model.input_spec.channels
    norm = source.normalisation or Normalisation(tuple([0.0] * channels), tuple([1.0] * channels))
    tuning = _tune_int8(model, source, options, norm) if options.int8_weights == "tuned" else None
    decision = decide_split(model, options.encoder_split, source.event)
    split = decision.split
    sample = torch.zeros(EXAMPLE_BATCH, *model.input_spec.shape, dtype=dtype)
    with torch.no_grad():
        step_sample = model.encoder(sample).to(dtype) if split else sample
    states = graph_states(model)
    manifest = Manifest(
        graphs={"step": "step.onnx", **({"encoder": "encoder.onnx"} if split else {})},
        input=InputInfo(
            shape=((source.timesteps,) if source.event else ()) + model.input_spec.shape,
            layout="TCHW" if source.event else "CHW",
            kind="event" if source.event else "static",
            mean=tuple(norm.mean), std=tuple(norm.std),
        ),
        step_input_shape=tuple(step_sample.shape[1:]),
        states=states,
        num_classes=model.num_classes,
        classes=list(source.classes),
        timesteps=source.timesteps,
        exit=ExitInfo(kind="fixed" if source.policy is None else "policy", alpha=None, accumulate=options.accumulate,
                      temperature=options.temperature, candidates=list(source.candidates)),
        precision=options.precision,
        fp32_layers=list(options.fp32_layers),
        fp16_weights=options.weights,
        max_batch=options.max_batch,
        arch=source.arch,
        provenance={**source.provenance, "exporter": f"seenn-deploy {__version__} (torch.onnx, {options.exporter})",
                    "opset": options.graph_opset, "versions": _versions(), "encoder_split": decision.to_dict(),
                    **({"int8_input_scales": {q.name: q.input_scale for q in quantized_layers(model)}}
                       if options.precision in INT8_PRECISIONS else {}),
                    **({"int8_tuning": tuning} if tuning else {}),
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    )
    if source.policy is not None:
        if not source.candidates:
            raise UserError("a policy network needs its timestep candidates")
        manifest.graphs["policy"] = "policy.onnx"
    metadata = {METADATA_KEY: json_text(manifest.to_dict())}

    def export(module: nn.Module, args: tuple, spec: GraphSpec, path: Path) -> None:
        with graph_form(module):  # int8: the quantized layers trace plain, then get their Q/DQ nodes (export/qdq.py)
            export_graph(module, args, spec, path, options.graph_opset, options.max_batch, options.exporter, metadata,
                         qdq_rewrite(module))

    with staged_bundle(out, options.force) as staging:
        if split:
            export(EncoderModule(model), (sample,), GraphSpec([X], ["encoded"]), staging / "encoder.onnx")
        step = StepModule(model, states, options.accumulate, options.temperature, encoded=split)
        reset = torch.zeros(EXAMPLE_BATCH, dtype=torch.bool)
        state_args = [torch.full((EXAMPLE_BATCH, *s.shape), s.init, dtype=getattr(torch, s.dtype)) for s in states]
        spec = GraphSpec([X, RESET, *[s.name for s in states]],
                         [CONFIDENCE, PREDICTION, LOGITS, *[s.output for s in states]])
        export(step, (step_sample, reset, *state_args), spec, staging / "step.onnx")
        if source.policy is not None:
            policy = copy.deepcopy(source.policy).eval().to(device="cpu", dtype=torch.float32)
            export(policy, (sample,), GraphSpec([X], ["scores"]), staging / "policy.onnx")
        for name, content in source.files.items():
            _write_extra(staging, name, content)
        write_manifest(staging, manifest)
    return manifest


def _tune_int8(model: SpikingModel, source: ExportSource, options: ExportOptions, norm: Normalisation) -> dict[str, Any]:
    """--int8-weights tuned: in place, the laid-out model's single INT8 weights chosen on calibration data
    (int8_rounding.py) from the train split of --calib-data (default: the checkpoint's data) outside the checkpoint's
    validation slice. Returns the provenance record: what calibrated, and the calibration spike flips before/after."""
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.data.progress import progress_bar
    from seenn_deploy.data.spec import same_data
    from seenn_deploy.data.validation import ValidationSlice
    from seenn_deploy.export.int8_rounding import CALIBRATION_SEED, calibration_set, planned_passes, tune_int8_weights
    from seenn_deploy.train.batches import model_input

    spec = options.calib_data or source.provenance.get("data")
    if not spec:
        raise UserError("--int8-weights tuned needs calibration data: give --calib-data SPEC (its train split "
                        "calibrates, never its test split)")
    record = source.provenance.get("validation")
    held_out = ValidationSlice.from_dict(record, "the checkpoint's config.json") if record else None
    train = parse_data_spec(spec).load("train")
    # The same kind and size under another spelling or path is taken for the same data (excluding a slice of other
    # data costs a few rows; calibrating on held-out rows would fit the validation slice).
    if held_out is not None and not same_data(held_out.data, spec) and not (
            spec.partition(":")[0] == held_out.data.partition(":")[0] and held_out.train_rows in (None, len(train))):
        held_out = None  # other data: none of its rows were held out
    sample_shape = tuple(train.x.shape[2:] if source.event else train.x.shape[1:])
    if sample_shape != tuple(source.model.input_spec.shape):
        raise UserError(f"calibration data {spec} has samples of shape {list(sample_shape)}, the model takes "
                        f"{list(source.model.input_spec.shape)}: give --calib-data of the data the model was trained on")
    calib = calibration_set(train, options.calib_samples or CALIB_SAMPLES, held_out)
    batches = [model_input(calib.x[i:i + CALIB_BATCH], norm, source.timesteps)
               for i in range(0, len(calib), CALIB_BATCH)]
    bar = progress_bar(planned_passes(model), "tuning INT8 weights", unit="pass")
    try:
        report = tune_int8_weights(model, source.model, batches, None if source.event else source.timesteps,
                                   progress=bar.update)
    finally:
        bar.close()
    return {"data": spec, "split": "train", "samples": len(calib), "seed": CALIBRATION_SEED,
            "held_out": held_out.describe() if held_out else None,
            "flip_rate_before": report.flip_rate_before, "flip_rate_after": report.flip_rate_after,
            "layers": {t.name: {"flips_before": t.flips_before, "flips_after": t.flips_after, "accepted": t.accepted,
                                "choices": t.choices} for t in report.layers}}


def _write_extra(staging: Path, name: str, content: bytes) -> None:
    """One of ExportSource.files: a plain relative name that stays inside the bundle and clashes with nothing."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InternalError(f"bundle file name {name!r} must be relative and stay inside the bundle")
    path = staging / rel
    if path.exists():
        raise InternalError(f"bundle file {name!r} clashes with a file the exporter writes")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def export_checkpoint(checkpoint: Path, out: Path, options: ExportOptions | None = None,
                      allow_pickle: bool = False) -> Manifest:
    """Export a checkpoint directory made by `seenn-deploy train` (or convert)."""
    from seenn_deploy.snn.checkpoint import POLICY_WEIGHTS_FILE, WEIGHTS_FILE, load_checkpoint, load_policy

    options = options or ExportOptions()
    options.check()
    model, config = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    kind = (config.model.get("neuron") or {}).get("kind", "lif")
    if kind in ("qcfs", "relu"):
        raise UserError(f"{checkpoint} is an ANN ({kind} activations): convert it to an SNN first with "
                        f"`seenn-deploy convert {checkpoint} --out SNN_CHECKPOINT`")
    if not isinstance(model, SpikingModel):
        raise UserError(f"{checkpoint} holds {config.arch}, which is not a spiking model")
    weights = Path(checkpoint) / WEIGHTS_FILE if Path(checkpoint).is_dir() else Path(checkpoint)
    provenance = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": file_sha256(weights),
                  "data": config.data, "metrics": config.metrics,
                  "validation": config.validation}
    policy = load_policy(checkpoint, config) if Path(checkpoint).is_dir() else None
    if policy is not None:  # which policy: what it was trained for, and its weights
        provenance["policy"] = {"sha256": file_sha256(Path(checkpoint) / POLICY_WEIGHTS_FILE),
                                **{k: config.policy[k] for k in ("beta", "reward") if k in config.policy}}
    source = ExportSource(
        model=model, timesteps=config.timesteps, classes=config.classes,
        policy=policy[0] if policy else None, candidates=policy[1] if policy else [],
        normalisation=Normalisation.from_dict(config.normalisation), event=config.input_kind == "event",
        arch=config.arch, provenance=provenance,
    )
    return export_bundle(source, out, options)
