"""The record written next to each TensorRT plan (`<plan>.json`), and the checks made before loading one.

A plan only loads on the TensorRT version that built it (major.minor.patch) and on GPUs of the
compute capability it was built for. A plan built version-compatible
(`BuilderFlag.VERSION_COMPATIBLE`) also loads on later TensorRT releases of the same major version.
Pure Python: reading and checking records needs neither tensorrt nor a GPU.

    bundle/engines/step.fp16.orin.trt10.3.0.plan
    bundle/engines/step.fp16.orin.trt10.3.0.plan.json   <- EngineMeta
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.files import write_json_atomic
from seenn_deploy.runtime.bundle import bundle_path
from seenn_deploy.runtime.manifest import Manifest
from seenn_deploy.runtime.schema import ENGINE_SCHEMA, check_header, read_json_object, schema, validate

ENGINES_DIR = "engines"
PLAN_SUFFIX = ".plan"
META_SUFFIX = ".json"
META_FORMAT = "seenn-deploy.engine"
META_VERSION = 1
BUILD_HINT = "`seenn-deploy build BUNDLE`"


@dataclass
class EngineMeta:
    """What a plan was built from, with and for. `profile`: the batch range {min, opt, max} of its one profile."""

    role: str  # "step", "encoder" or "policy"
    plan: str  # file name of the plan, beside this record
    tensorrt_version: str  # tensorrt.__version__ at build time, e.g. "10.3.0"
    gpu_name: str  # cudaDeviceProp.name, e.g. "Orin"
    compute_capability: str  # "major.minor", e.g. "8.7"
    precision: str  # the bundle's precision the plan was built for: "fp32", "fp16", "int8", "int8+fp16"
    profile: dict[str, int] = field(default_factory=lambda: {"min": 1, "opt": 1, "max": 1})
    created: str = ""  # ISO 8601, UTC
    onnx_sha256: str = ""  # hash of the ONNX graph it was built from
    version_compatible: bool = False  # built with BuilderFlag.VERSION_COMPATIBLE
    build: dict[str, Any] = field(default_factory=dict)  # how: network typing, workspace, calibration data, ...

    def to_dict(self) -> dict[str, Any]:
        return {"format": META_FORMAT, "version": META_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "EngineMeta":
        """Check `d` against engine.schema.json (and min <= opt <= max) and build the record."""
        fix = f"rebuild the engine with {BUILD_HINT}"
        check_header(d, where, META_FORMAT, META_VERSION, "engine record", fix, fix)
        validate(d, ENGINE_SCHEMA, where, f"the record is malformed; {fix}")
        profile = {k: int(d["profile"][k]) for k in ("min", "opt", "max")}
        if not profile["min"] <= profile["opt"] <= profile["max"]:
            raise UserError(f"{where} has an invalid batch profile {profile} (min <= opt <= max): {fix}")
        optional = {k: v["default"] for k, v in schema(ENGINE_SCHEMA)["properties"].items() if "default" in v}
        d = {**optional, **d}
        return cls(role=d["role"], plan=d["plan"], tensorrt_version=d["tensorrt_version"], gpu_name=d["gpu_name"],
                   compute_capability=d["compute_capability"], precision=d["precision"], profile=profile,
                   created=d["created"], onnx_sha256=d["onnx_sha256"], version_compatible=d["version_compatible"],
                   build=copy.deepcopy(d["build"]))


def meta_path(plan: Path) -> Path:
    """The record beside a plan: `<plan>.json`."""
    plan = Path(plan)
    return plan.with_name(plan.name + META_SUFFIX)


def read_engine_meta(path: Path) -> EngineMeta:
    """Read a `<plan>.json` record; a UserError names the file and says to rebuild when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: every plan needs its record; rebuild the engine with {BUILD_HINT}")
    data = read_json_object(path, f"rebuild the engine with {BUILD_HINT}")
    return EngineMeta.from_dict(data, str(path))


def write_engine_meta(path: Path, meta: EngineMeta) -> None:
    """Write the record atomically (a reader never sees half of it)."""
    write_json_atomic(Path(path), meta.to_dict())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; 'Orin' -> 'orin'. The vendor word is dropped."""
    words = [w for w in _slug(gpu_name).split("-") if w and w != "nvidia"]
    return "-".join(words) or "gpu"


def version_triple(version: str) -> tuple[int, int, int]:
    """'10.3.0' -> (10, 3, 0); '10.0.1.6' and '10.3.0.post1' -> their first three numbers; missing ones are 0."""
    numbers = [int(n) for n in re.findall(r"\d+", str(version).split("+")[0])[:3]]
    if not numbers:
        raise UserError(f"{version!r} is not a TensorRT version (expected major.minor.patch, e.g. 10.3.0)")
    return tuple(numbers + [0] * (3 - len(numbers)))  # type: ignore[return-value]


def _version_text(version: str) -> str:
    return ".".join(map(str, version_triple(version)))


def engine_file_name(role: str, precision: str, gpu_name: str, trt_version: str) -> str:
    """`step.fp16.orin.trt10.3.0.plan`: role, precision, GPU and TensorRT version, safe as a file name."""
    return f"{_slug(role) or 'graph'}.{_slug(precision) or 'fp32'}.{gpu_slug(gpu_name)}.trt{_version_text(trt_version)}{PLAN_SUFFIX}"


def check_engine_compat(meta: EngineMeta, trt_version: str, gpu_name: str, compute_capability: str,
                        version_compatible: bool = False) -> None:
    """UserError unless this machine (its TensorRT version, GPU and compute capability) can load the plan.

    Same major.minor.patch is required, unless the plan was built version-compatible
    (`meta.version_compatible`, or `version_compatible=True` to assert it): then a TensorRT of the
    same major version, no older than the builder, loads it. The compute capability must match.
    """
    built, here = version_triple(meta.tensorrt_version), version_triple(trt_version)
    built_text, here_text = _version_text(meta.tensorrt_version), _version_text(trt_version)
    rebuild = f"rebuild it on this machine with {BUILD_HINT}"
    if meta.version_compatible or version_compatible:
        if built[0] != here[0]:
            raise UserError(f"engine {meta.plan} was built version-compatible with TensorRT {built_text}, this machine "
                            f"has {here_text}: version-compatible plans only load within TensorRT {built[0]}.x; {rebuild}")
        if here < built:
            raise UserError(f"engine {meta.plan} was built with TensorRT {built_text}, this machine has the older "
                            f"{here_text}: a version-compatible plan loads on the same or a later {built[0]}.x only; "
                            f"{rebuild}")
    elif built != here:
        raise UserError(f"engine {meta.plan} was built with TensorRT {built_text}, this machine has {here_text}: "
                        f"TensorRT plans only load on the version that built them; {rebuild}")
    if str(meta.compute_capability).strip() != str(compute_capability).strip():
        raise UserError(f"engine {meta.plan} was built for compute capability {meta.compute_capability} "
                        f"({meta.gpu_name}), this GPU ({gpu_name}) is {compute_capability}: plans only load on GPUs "
                        f"of the capability they were built for; {rebuild}")


def check_engine_source(meta: EngineMeta, onnx_sha256: str, graph: str, bundle: Path | str = "BUNDLE") -> None:
    """UserError unless the plan was built from the graph whose sha256 is `onnx_sha256` (the bundle's `graph` now)."""
    if meta.onnx_sha256 == onnx_sha256:
        return
    why = ("its record does not say which graph it was built from" if not meta.onnx_sha256 else
           f"it was built from another {graph} (sha256 {meta.onnx_sha256[:12]}..., the bundle's is now "
           f"{onnx_sha256[:12]}...): the bundle was re-exported since")
    raise UserError(f"engine {meta.plan} is stale: {why}; rebuild it with `seenn-deploy build {bundle}`")


def _describe(plan: Path) -> str:
    try:
        meta = read_engine_meta(meta_path(plan))
    except UserError:
        return f"{plan.name} (no readable {plan.name}{META_SUFFIX} record)"
    return (f"{plan.name} ({meta.role}, {meta.precision}, {meta.gpu_name} sm {meta.compute_capability}, "
            f"TensorRT {meta.tensorrt_version})")


def find_engine(bundle: Path, manifest: Manifest, role: str, precision: str | None = None,
                trt_version: str | None = None, gpu_name: str | None = None,
                compute_capability: str | None = None, onnx_sha256: str | None = None) -> Path:
    """The plan in `bundle/engines/` for `role` at `precision` (default: the bundle's).

    Given the sha256 of the role's graph now, plans built from another graph are set aside (and
    refused, naming the rebuild command, when only such plans exist). Given this machine's TensorRT
    version and compute capability, the first plan that loads here is chosen (exact TensorRT version
    first); when plans for the role exist but none loads here, the compatibility error of the
    closest one says why. UserErrors list what the directory holds.
    """
    bundle = Path(bundle)
    precision = precision or manifest.precision
    if role not in manifest.graphs:
        raise UserError(f"{bundle} has no {role} graph (it has {', '.join(sorted(manifest.graphs))})")
    bundle_path(bundle, ENGINES_DIR, "the engines folder")  # refuses an engines/ symlink to elsewhere
    where = bundle / ENGINES_DIR
    plans = sorted(where.glob(f"*{PLAN_SUFFIX}")) if where.is_dir() else []
    build = f"build them on this machine with `seenn-deploy build {bundle}`"
    if not plans:
        raise UserError(f"{where} holds no TensorRT engines: {build}")
    candidates: list[tuple[Path, EngineMeta]] = []
    for plan in plans:
        try:
            meta = read_engine_meta(meta_path(plan))
        except UserError:
            continue
        if meta.role == role and meta.precision == precision:
            candidates.append((plan, meta))
    if not candidates:
        listing = "; ".join(_describe(p) for p in plans)
        raise UserError(f"{where} has no {precision} engine for the {role} graph (it holds: {listing}): {build}")
    if onnx_sha256 is not None:
        fresh = [c for c in candidates if c[1].onnx_sha256 == onnx_sha256]
        if not fresh:
            check_engine_source(candidates[0][1], onnx_sha256, manifest.graphs[role], bundle)
        candidates = fresh
    if trt_version is None or compute_capability is None:
        return candidates[0][0]
    exact = [c for c in candidates if version_triple(c[1].tensorrt_version) == version_triple(trt_version)]
    ordered = exact + [c for c in candidates if c not in exact]
    for plan, meta in ordered:
        try:
            check_engine_compat(meta, trt_version, gpu_name or "this GPU", compute_capability)
        except UserError:
            continue
        return plan
    same_gpu = [c for c in ordered if c[1].compute_capability == compute_capability]
    plan, meta = (same_gpu or ordered)[0]
    check_engine_compat(meta, trt_version, gpu_name or "this GPU", compute_capability)  # raises, naming both sides
    raise InternalError("check_engine_compat passed for a plan that failed it")  # pragma: no cover
