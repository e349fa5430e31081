"""`seenn-deploy build`: TensorRT plans for a bundle's graphs, each with its record, in `BUNDLE/engines/`.

Every plan has one optimisation profile covering batch 1..max for each input (x, reset and every
state of the step graph; x of the encoder and policy graphs), tuned for the opt batch. Written
against the TensorRT 10 and 11 Python APIs:

* Networks: on TensorRT 10 a strongly typed network takes `NetworkDefinitionCreationFlag.STRONGLY_TYPED`
  (EXPLICIT_BATCH has been ignored since 10.0 and is gone in 11); TensorRT 11 networks are always
  strongly typed (the flag is deprecated there and ignored), so no flag is passed.
* Precision lives in the graph (DESIGN.md). An fp32 bundle builds fp32 plans and an fp16 bundle
  (`seenn-deploy export --precision fp16`) fp16 plans, strongly typed on both versions. fp32 plans
  have TF32 turned off: TF32 rounding can flip a spike whose membrane sits at the threshold.
* fp16 from an fp32 bundle: TensorRT 10 only, a weakly typed network with `BuilderFlag.FP16`
  (TensorRT picks FP16 layer by layer, membranes and exit head included, where the fp16 export keeps
  them in FP32). TensorRT 11 removed the flag: the build refuses and says to export with --precision fp16.
* int8: a graph with explicit Q/DQ nodes (`seenn-deploy export --precision int8`, export/qdq.py) builds
  strongly typed on both versions, with no INT8 flag and no calibrator: the Q/DQ scales are in the graph
  (TensorRT 10 fails a strongly typed build that sets a precision flag). An int8 bundle builds int8
  engines only. An int8+fp16 bundle (`export --precision int8+fp16`: the same Q/DQ with FP16 scales, everything
  else FP16 with explicit Casts) builds the same way, strongly typed with no flag, and int8+fp16 engines only:
  "Setting layer precision and layer output types is not allowed" on a strongly typed network (TensorRT's
  NetworkDefinitionCreationFlag::kSTRONGLY_TYPED), whose types come from the graph's inputs, casts and Q/DQ
  scales (TensorRT 10's Quantize operator: the scale is "of type T1", its input's). From an fp32 bundle:
  TensorRT 10's `BuilderFlag.INT8` with an `IInt8EntropyCalibrator2` fed from --calib-data, its cache
  kept in engines/; TensorRT 11 removed implicit INT8 and the build says to export --precision int8.

Why the TensorRT API directly and not Polygraphy's loaders (NetworkFromOnnxPath, CreateConfig,
EngineBytesFromNetwork, Calibrator), which the project declared once and never imported: what they
would replace is a few calls each (parse, one profile, flags, timing cache), while the part that
needs care stays ours either way (which flags a TensorRT major takes: STRONGLY_TYPED on 10, none on
11, FP16/INT8 only on weakly typed 10 networks; records; version checks). Their calibrator moves
batches through Polygraphy's own ctypes CUDA wrapper, a second CUDA runtime binding beside
cuda-python in one process, for an API TensorRT 11 removed. Their failures come as Polygraphy's
log lines and a PolygraphyException, where a build here ends in one UserError naming the fix.
And one more package must then match the TensorRT on the machine (JetPack's 10.3 among them).

tensorrt and cuda-python are imported only after every check that needs neither has passed, and
no plan, record or timing cache is written until every plan is built: a failed build leaves them
as they were (an INT8 calibration table, a cache, is kept as soon as TensorRT hands it over).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.files import FILE, FOLDER, bundle_lock, check_writable, file_sha256, write_atomic
from seenn_deploy.runtime.engine_meta import (
    ENGINES_DIR, EngineMeta, engine_file_name, meta_path, version_triple, write_engine_meta,
)
from seenn_deploy.runtime.manifest import INT8_PRECISIONS, PRECISIONS, Manifest, read_manifest

DEFAULT_OPT_BATCH = 64
PURPOSE = "building TensorRT engines"
GPU_FIX = "building TensorRT engines needs an NVIDIA GPU and its driver: build on the machine that will run them"
# A NodeProto's op_type is field 4 (tag 0x22), then the length: these bytes are Q/DQ nodes' op types and not
# a name, doc string or the manifest in the metadata that happens to contain the words.
QDQ_MARKS = (b"\x22\x0eQuantizeLinear", b"\x22\x10DequantizeLinear")

# How a plan's network is typed and which precision flags its builder config takes.
STRONG = "strongly typed"  # precision from the graph; TensorRT 10 and 11
WEAK_FP16 = "weakly typed, BuilderFlag.FP16"  # TensorRT 10 only
CALIBRATED_INT8 = "weakly typed, BuilderFlag.INT8 + entropy calibrator"  # TensorRT 10 only


@dataclass
class BuildOptions:
    """Settings of `seenn-deploy build`; None takes the default in the comment."""

    precision: str | None = None  # the bundle's precision
    max_batch: int | None = None  # the bundle's max batch
    opt_batch: int | None = None  # min(64, max_batch)
    workspace_mb: int | None = None  # TensorRT's default (the GPU's memory)
    timing_cache: Path | None = None  # read when it exists, written back after the build
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE: loads on later TensorRT of the same major
    calib_data: str | None = None  # data spec for INT8 calibration (its train split)
    device: int = 0


@dataclass
class BuildPlan:
    """What a build will do, settled before tensorrt is imported."""

    bundle: Path
    manifest: Manifest
    precision: str
    opt_batch: int
    max_batch: int
    roles: list[str]  # the manifest's graphs: step (+ encoder, policy)
    quantized: bool  # the graphs carry explicit Q/DQ nodes
    options: BuildOptions

    @property
    def profile(self) -> dict[str, int]:
        return {"min": 1, "opt": self.opt_batch, "max": self.max_batch}

    def onnx(self, role: str) -> Path:
        return self.bundle / self.manifest.graphs[role]


@dataclass
class BuiltEngine:
    """One plan written by `build_engines`, with its record."""

    plan: Path
    meta: EngineMeta
    seconds: float  # build time of this plan


def graph_has_qdq(path: Path) -> bool:
    """Whether an ONNX graph quantizes explicitly (Quantize/DequantizeLinear nodes), read without the onnx package."""
    data = Path(path).read_bytes()
    return any(mark in data for mark in QDQ_MARKS)


def plan_build(bundle: Path, options: BuildOptions) -> BuildPlan:
    """Check the bundle and the options (no tensorrt needed); UserError names the problem and the fix."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    precision = options.precision or manifest.precision
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    max_batch = manifest.max_batch if options.max_batch is None else options.max_batch
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    if max_batch > manifest.max_batch:
        raise UserError(f"--max-batch {max_batch} is above the bundle's {manifest.max_batch}: its graphs take batch "
                        f"1..{manifest.max_batch}; re-export with `seenn-deploy export --max-batch {max_batch}`")
    opt_batch = min(DEFAULT_OPT_BATCH, max_batch) if options.opt_batch is None else options.opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise UserError(f"--opt-batch {opt_batch} is outside 1..{max_batch} (the profile's batch range, --max-batch)")
    if options.workspace_mb is not None and options.workspace_mb < 1:
        raise UserError(f"--workspace must be >= 1 MB, got {options.workspace_mb}")
    check_writable(bundle / ENGINES_DIR, "BUNDLE", FOLDER)
    if options.timing_cache is not None:
        check_writable(options.timing_cache, "--timing-cache", FILE)
    roles = list(manifest.graphs)
    quantized = any(graph_has_qdq(bundle / manifest.graphs[role]) for role in roles)
    if manifest.precision in INT8_PRECISIONS:
        own = manifest.precision
        if not quantized:
            raise UserError(f"{bundle} is an {own} bundle but its graphs carry no Q/DQ nodes: re-export it with "
                            f"`seenn-deploy export CHECKPOINT --precision {own}`")
        if precision != own:
            raise UserError(f"{bundle} is an {own} bundle: its graphs fix their precision (explicit Q/DQ, strongly "
                            f"typed), so they build {own} engines only; for {precision}, build from "
                            f"{'an fp32 export' if precision != 'int8' else 'an int8 export'} (`seenn-deploy export "
                            f"CHECKPOINT --precision {'fp32' if precision != 'int8' else 'int8'}`)")
    elif precision == "int8+fp16":
        raise UserError(f"{bundle} is an {manifest.precision} bundle: int8+fp16 engines come from an int8+fp16 export "
                        "(explicit Q/DQ with FP16 scales): `seenn-deploy export CHECKPOINT --precision int8+fp16`")
    if manifest.precision == "fp16" and not (precision == "fp16" or (precision == "int8" and quantized)):
        raise UserError(f"{bundle} is an fp16 bundle: its graphs fix their precision (strongly typed FP16), so they "
                        f"build fp16 engines only; for {precision}, build from an fp32 export "
                        "(`seenn-deploy export CHECKPOINT --precision fp32`)")
    calibrated = precision == "int8" and not quantized
    if calibrated and options.calib_data is None:
        raise UserError("--precision int8 needs --calib-data SPEC: samples (its train split) for TensorRT 10's INT8 "
                        "calibrator, since the bundle's graphs carry no Q/DQ nodes")
    if options.calib_data is not None:
        if not calibrated:
            raise UserError("--calib-data goes with --precision int8 of a graph without Q/DQ nodes; leave it out here")
        from seenn_deploy.data import parse_data_spec

        parse_data_spec(options.calib_data)  # checks the spec now; its samples are read when calibration runs
    return BuildPlan(bundle, manifest, precision, opt_batch, max_batch, roles, quantized, options)


def network_mode(precision: str, bundle_precision: str, quantized: bool, trt_major: int) -> str:
    """STRONG, WEAK_FP16 or CALIBRATED_INT8 for building `precision` from a `bundle_precision` bundle on this
    TensorRT major version; UserError where that TensorRT cannot (11 removed the precision flags)."""
    if precision == bundle_precision or (precision == "int8" and quantized):
        return STRONG  # int8+fp16 is built from an int8+fp16 bundle only (plan_build)
    if bundle_precision != "fp32":  # plan_build refuses these first
        raise InternalError(f"no way to build {precision} from an {bundle_precision} bundle")
    if trt_major >= 11:
        if precision == "fp16":
            raise UserError("TensorRT 11 removed BuilderFlag.FP16: precision comes from the graph. Export an fp16 "
                            "bundle (`seenn-deploy export CHECKPOINT --precision fp16`) and build that")
        raise UserError("TensorRT 11 removed implicit INT8 (BuilderFlag.INT8 and the calibrators): an int8 engine needs "
                        "a graph with explicit Q/DQ nodes: export an int8 bundle (`seenn-deploy export CHECKPOINT "
                        "--precision int8`) and build that, or use TensorRT 10 (JetPack 6 on Jetson)")
    return WEAK_FP16 if precision == "fp16" else CALIBRATED_INT8


def build_engines(bundle: Path, options: BuildOptions | None = None,
                  log: Callable[[str], None] = print) -> list[BuiltEngine]:
    """Build a plan per graph of the bundle, then write the plans, their records and the timing cache.

    Holds the bundle's lock after the checks: an export, calibrate or build of the same bundle fails at once.
    """
    plan = plan_build(bundle, options or BuildOptions())
    with bundle_lock(bundle, "build"):
        return _build(plan, log)


def _build(plan: BuildPlan, log: Callable[[str], None]) -> list[BuiltEngine]:
    from seenn_deploy.runtime.executors.cuda_runtime import CudaCalls, gpu_info, load_cudart
    from seenn_deploy.runtime.executors.trt import load_tensorrt, trt_logger

    options = plan.options
    trt = load_tensorrt(PURPOSE)
    cuda = CudaCalls(load_cudart(PURPOSE))
    gpu_name, capability = gpu_info(cuda.rt, options.device, GPU_FIX)
    major = version_triple(trt.__version__)[0]
    mode = network_mode(plan.precision, plan.manifest.precision, plan.quantized, major)
    # TensorRT 11 is always strongly typed (its STRONGLY_TYPED flag is deprecated and ignored): no flag there
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == STRONG and major < 11 else 0
    if mode == WEAK_FP16:
        log("note: fp16 from an fp32 bundle is weakly typed (BuilderFlag.FP16): TensorRT picks FP16 layer by layer, "
            "membranes included; an fp16 export (`seenn-deploy export --precision fp16`) keeps them in FP32")
    cuda("cudaSetDevice", options.device)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    engines = plan.bundle / ENGINES_DIR
    calibration = _Calibration(plan, cuda, log) if mode == CALIBRATED_INT8 else None
    timing = _TimingCache(options.timing_cache, log)
    built: list[tuple[str, bytes, float]] = []
    for role in plan.roles:
        started = time.perf_counter()
        log(f"building the {role} graph ({plan.manifest.graphs[role]}): {plan.precision}, {mode}, batch 1.."
            f"{plan.max_batch} (opt {plan.opt_batch}) on {gpu_name}")
        network, parser = _parse(trt, builder, logger, plan.onnx(role), flags)
        config = builder.create_builder_config()
        config.add_optimization_profile(_profile(builder, network, (1, plan.opt_batch, plan.max_batch), plan.onnx(role)))
        _configure(trt, config, plan, mode)
        timing.attach(config)
        calibrator = calibration.attach(trt, builder, network, config, role) if calibration else None
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.free()
        if calibrator is not None and calibrator.error is not None:
            raise calibrator.error
        if serialized is None:
            raise UserError(f"TensorRT could not build {plan.onnx(role)} (its log above says why); nothing was written")
        built.append((role, bytes(serialized), time.perf_counter() - started))
    engines.mkdir(exist_ok=True)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results = []
    for role, data, seconds in built:
        name = engine_file_name(role, plan.precision, gpu_name, trt.__version__)
        meta = EngineMeta(role=role, plan=name, tensorrt_version=trt.__version__, gpu_name=gpu_name,
                          compute_capability=capability, precision=plan.precision, profile=plan.profile,
                          created=created, onnx_sha256=file_sha256(plan.onnx(role)),
                          version_compatible=options.version_compatible,
                          build={"network": mode, "tf32": plan.precision != "fp32",
                                 "workspace_mb": options.workspace_mb, "calib_data": options.calib_data})
        write_atomic(engines / name, lambda tmp, data=data: tmp.write_bytes(data))
        write_engine_meta(meta_path(engines / name), meta)
        results.append(BuiltEngine(engines / name, meta, seconds))
    timing.save()
    return results


def _parse(trt, builder, logger, onnx: Path, flags: int):
    """(network, parser) for an ONNX graph. The parser holds the weights the network points to: keep it until
    the plan is built."""
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "its log above says why"
        raise UserError(f"TensorRT cannot parse {onnx}: {errors}")
    return network, parser


def _profile(builder, network, batch: tuple[int, int, int], onnx: Path):
    """An optimisation profile giving every input the batch range (min, opt, max); only dimension 0 may vary."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if not shape or shape[0] != -1 or any(d < 0 for d in shape[1:]):
            raise UserError(f"{onnx}: input {tensor.name} has shape {list(shape)}; a bundle's graphs have a dynamic "
                            "batch dimension and fixed rows: re-export the bundle with `seenn-deploy export`")
        rows = shape[1:]
        profile.set_shape(tensor.name, (batch[0], *rows), (batch[1], *rows), (batch[2], *rows))
    return profile


def _configure(trt, config, plan: BuildPlan, mode: str) -> None:
    options = plan.options
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if hasattr(trt.BuilderFlag, "TF32"):  # every precision: fp16 bundles keep their threshold-side layers in FP32
        config.clear_flag(trt.BuilderFlag.TF32)
    if mode == WEAK_FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    if mode == CALIBRATED_INT8:
        config.set_flag(trt.BuilderFlag.INT8)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


class _TimingCache:
    """One ITimingCache for every plan of a build: read from `path` when it exists, written back by save()."""

    def __init__(self, path: Path | None, log: Callable[[str], None]) -> None:
        self.path = None if path is None else Path(path)
        self.log = log
        self.cache = None

    def attach(self, config) -> None:
        if self.path is None:
            return
        if self.cache is None:
            blob = self.path.read_bytes() if self.path.is_file() else b""
            self.cache = config.create_timing_cache(blob)
            if blob and (self.cache is None or not config.set_timing_cache(self.cache, ignore_mismatch=False)):
                self.log(f"note: {self.path} was made by another TensorRT version or GPU: a new timing cache replaces it")
                self.cache = config.create_timing_cache(b"")
        config.set_timing_cache(self.cache, ignore_mismatch=False)

    def save(self) -> None:
        if self.cache is not None:
            blob = bytes(self.cache.serialize())
            write_atomic(self.path, lambda tmp: tmp.write_bytes(blob))


class _Calibration:
    """TensorRT 10's implicit INT8: the --calib-data samples, and a calibrator per graph with its cache."""

    def __init__(self, plan: BuildPlan, cuda, log: Callable[[str], None]) -> None:
        from seenn_deploy.engine.calibration import CALIB_BATCH, CALIB_SAMPLES
        from seenn_deploy.data import parse_data_spec

        data = parse_data_spec(plan.options.calib_data).load("train").subset(CALIB_SAMPLES)
        if len(data.x) == 0:
            raise UserError(f"--calib-data {plan.options.calib_data} has no samples in its train split")
        self.plan, self.cuda, self.log, self.data = plan, cuda, log, data
        self.batch = min(CALIB_BATCH, len(data.x), plan.max_batch)

    def attach(self, trt, builder, network, config, role: str):
        from seenn_deploy.engine.calibration import cache_path, calibration_feeds, make_calibrator

        plan = self.plan
        cache = cache_path(plan.bundle / ENGINES_DIR, role, file_sha256(plan.onnx(role)), plan.options.calib_data,
                           len(self.data.x))
        self.log(f"  INT8 calibration on {self.data.name}, {len(self.data.x)} samples (cache {cache.name})")
        cache.parent.mkdir(exist_ok=True)
        feeds = calibration_feeds(plan.bundle, plan.manifest, role, self.data.x, self.batch)
        calibrator = make_calibrator(trt, self.cuda, feeds, cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(_profile(builder, network, (self.batch,) * 3, plan.onnx(role)))
        return calibrator
