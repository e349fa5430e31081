"""The bundle manifest (`manifest.json`): what the graphs take, hold and give, read without torch.

A bundle is a directory: manifest.json, step.onnx (+ encoder.onnx, policy.onnx), engines/,
calib/. Every path in the manifest is relative and stays inside the bundle.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from seenn_deploy.errors import UserError
from seenn_deploy.files import write_json_atomic
from seenn_deploy.runtime.schema import MANIFEST_SCHEMA, check_header, read_json_object, schema, validate

MANIFEST = "manifest.json"
FORMAT = "seenn-deploy.bundle"
FORMAT_VERSION = 1
FIX = "re-export the bundle"
ACCUMULATIONS = ("mean", "sum")
PRECISIONS = ("fp32", "fp16", "int8", "int8+fp16")
INT8_PRECISIONS = ("int8", "int8+fp16")  # graphs with explicit Q/DQ nodes (export/qdq.py)
LAYOUTS = {"static": "CHW", "event": "TCHW"}  # input.kind -> input.layout
MAX_ELEMENTS = 1 << 28  # per sample, in any one shape: 1 GiB of float32
MAX_TIMESTEPS, MAX_BATCH = 4096, 65536  # the bounds bundle.schema.json sets on timesteps and max_batch

# Names of the step graph's fixed inputs and outputs (states add one input and one output each).
X, RESET = "x", "reset"
CONFIDENCE, PREDICTION, LOGITS = "confidence", "prediction", "logits"
NEXT_SUFFIX = ".next"
# Key of the ONNX metadata entry in which every exported graph carries its bundle's manifest (JSON).
METADATA_KEY = "seenn_deploy.manifest"


@dataclass(frozen=True)
class StateInfo:
    """One state tensor of the step graph: input `name`, output `name + '.next'`, shape without batch."""

    name: str
    shape: tuple[int, ...]
    init: float
    dtype: str = "float32"

    @property
    def output(self) -> str:
        return self.name + NEXT_SUFFIX


@dataclass(frozen=True)
class InputInfo:
    """The sample the user gives: shape without batch, layout, kind, normalisation the runtime applies."""

    shape: tuple[int, ...]
    layout: str  # "CHW" (static image) or "TCHW" (events, one frame per step)
    kind: str  # "static" or "event"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str = "float32"


@dataclass
class ExitInfo:
    """Exit settings: the policy the runtime uses by default, and how the graph's confidence is made.

    t_cap: a timestep cap on the exit (<= T_max), None for none below T_max.
    """

    kind: str = "confidence"
    alpha: float | None = None
    accumulate: str = "mean"
    temperature: float = 1.0
    candidates: list[int] = field(default_factory=list)
    t_cap: int | None = None


@dataclass
class Manifest:
    """The bundle format; `bundle.schema.json` documents every field and its range."""

    graphs: dict[str, str]  # "step" (required), "encoder", "policy" -> relative path
    input: InputInfo
    step_input_shape: tuple[int, ...]  # what the step graph's x takes per sample (encoder output when split)
    states: list[StateInfo]
    num_classes: int
    classes: list[str]
    timesteps: int  # T_max
    exit: ExitInfo
    precision: str = "fp32"
    fp32_layers: list[str] = field(default_factory=list)  # fp16 / int8(+fp16): weighted layers kept in FP32 besides the default ones
    fp16_weights: str = "pair"  # fp16 / int8(+fp16): "pair" (hi + lo FP16 or INT8 weights) or "single" (rounded once)
    max_batch: int = 256
    arch: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format": FORMAT, "version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> "Manifest":
        """Check `d` (check_manifest_dict) and build the manifest; missing optional fields take the schema's defaults."""
        check_manifest_dict(d, where)
        properties = schema(MANIFEST_SCHEMA)["properties"]
        top = _with_defaults(d, properties)
        inp = _with_defaults(d["input"], properties["input"]["properties"])
        ex = _with_defaults(d["exit"], properties["exit"]["properties"])
        state_fields = properties["states"]["items"]["properties"]
        return cls(
            graphs=dict(d["graphs"]),
            input=InputInfo(shape=_ints(inp["shape"]), layout=inp["layout"], kind=inp["kind"],
                            mean=tuple(float(v) for v in inp["mean"]), std=tuple(float(v) for v in inp["std"]),
                            dtype=inp["dtype"]),
            step_input_shape=_ints(d["step_input_shape"]),
            states=[StateInfo(s["name"], _ints(s["shape"]), float(s["init"]), s["dtype"])
                    for s in (_with_defaults(s, state_fields) for s in d["states"])],
            num_classes=int(d["num_classes"]),
            classes=list(d["classes"]),
            timesteps=int(d["timesteps"]),
            exit=ExitInfo(kind=ex["kind"], alpha=None if ex["alpha"] is None else float(ex["alpha"]),
                          accumulate=ex["accumulate"], temperature=float(ex["temperature"]),
                          candidates=[int(c) for c in ex["candidates"]],
                          t_cap=None if ex["t_cap"] is None else int(ex["t_cap"])),
            precision=top["precision"],
            fp32_layers=list(top["fp32_layers"]),
            fp16_weights=top["fp16_weights"],
            max_batch=int(top["max_batch"]),
            arch=top["arch"],
            provenance=copy.deepcopy(top["provenance"]),
            history=copy.deepcopy(top["history"]),
        )

    def check(self, where: str = MANIFEST) -> None:
        """The checks of a manifest read from disk, on this one (before it is written)."""
        check_manifest_dict(self.to_dict(), where)

    @property
    def has_encoder(self) -> bool:
        return "encoder" in self.graphs


def _with_defaults(d: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v["default"] for k, v in properties.items() if "default" in v}, **d}


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def check_manifest_dict(d: Any, where: str = MANIFEST) -> None:
    """UserError naming the field, its value and the fix unless `d` is a valid manifest: the schema
    (bundle.schema.json: types, ranges, lengths) and the cross-field rules it cannot state."""
    check_header(d, where, FORMAT, FORMAT_VERSION, "bundle manifest", FIX, "re-export the bundle or upgrade seenn-deploy")
    validate(d, MANIFEST_SCHEMA, where, FIX)
    problems = _cross_field_problems(d)
    if problems:
        raise UserError(f"{where} is inconsistent: {'; '.join(problems)}: {FIX}")


def _escapes(rel: str) -> bool:
    """Whether a manifest path is absolute or climbs out (POSIX or Windows spelling)."""
    win = PureWindowsPath(rel)
    return PurePosixPath(rel).is_absolute() or win.is_absolute() or bool(win.drive) or ".." in win.parts


def _cross_field_problems(d: dict[str, Any]) -> list[str]:
    """The rules bundle.schema.json states in words only; `d` already satisfies the schema."""
    problems = []
    graphs, inp, ex, timesteps = d["graphs"], d["input"], d["exit"], d["timesteps"]
    shape, kind = list(inp["shape"]), inp["kind"]
    for role, rel in graphs.items():
        if _escapes(rel):
            problems.append(f"graphs.{role} {rel!r} is not a relative path inside the bundle")
    if len(set(graphs.values())) != len(graphs):
        problems.append(f"graphs {graphs} name one file for two roles")
    if inp["layout"] != LAYOUTS[kind] or len(shape) != len(LAYOUTS[kind]):
        problems.append(f"input.kind {kind!r}, input.layout {inp['layout']!r} and input.shape {shape} disagree "
                        "(static inputs are CHW [C, H, W], event inputs TCHW [T, C, H, W])")
    else:
        channels = shape[-3]
        if not len(inp["mean"]) == len(inp["std"]) == channels:
            problems.append(f"input.mean has {len(inp['mean'])} values and input.std {len(inp['std'])} for the "
                            f"{channels} channels of input.shape {shape}: one of each per channel")
        per_step = shape[1:] if kind == "event" else shape
        if kind == "event" and shape[0] < timesteps:
            problems.append(f"input.shape {shape} holds {shape[0]} frames, fewer than timesteps {timesteps}")
        if kind == "event" and "encoder" in graphs:
            problems.append("graphs.encoder is set for event inputs, which feed a new frame every step")
        if "encoder" not in graphs and list(d["step_input_shape"]) != per_step:
            problems.append(f"step_input_shape {list(d['step_input_shape'])} is not the per-step input {per_step} "
                            "and there is no encoder graph")
    shapes = [("input.shape", shape), ("step_input_shape", d["step_input_shape"])]
    shapes += [(f"states[{i}].shape", s["shape"]) for i, s in enumerate(d["states"])]
    for name, dims in shapes:
        if math.prod(int(v) for v in dims) > MAX_ELEMENTS:
            problems.append(f"{name} {list(dims)} has more than {MAX_ELEMENTS} elements per sample")
    if len(d["classes"]) != d["num_classes"]:
        problems.append(f"classes has {len(d['classes'])} names for num_classes {d['num_classes']}")
    names = [s["name"] for s in d["states"]]
    tensors = [X, RESET, CONFIDENCE, PREDICTION, LOGITS, *names, *(n + NEXT_SUFFIX for n in names)]
    repeated = sorted({n for n in tensors if tensors.count(n) > 1})
    if repeated:
        problems.append(f"states name the graph tensors {repeated[:8]} twice (state NAME is input NAME and output "
                        f"NAME{NEXT_SUFFIX}; {X}, {RESET}, {CONFIDENCE}, {PREDICTION} and {LOGITS} are taken)")
    t_cap, candidates = ex.get("t_cap"), ex.get("candidates", [])
    if t_cap is not None and t_cap > timesteps:
        problems.append(f"exit.t_cap {t_cap} is above timesteps {timesteps}")
    if any(c > timesteps for c in candidates):
        problems.append(f"exit.candidates {list(candidates)[:16]} go above timesteps {timesteps}")
    if ex.get("kind") == "policy" and "policy" not in graphs:
        problems.append("exit.kind is 'policy' but graphs has no policy graph")
    if "policy" in graphs and not candidates:
        problems.append("graphs.policy is set but exit.candidates is empty: the policy scores one entry per candidate")
    return problems


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    """Check and write `bundle/manifest.json` atomically."""
    manifest.check()
    write_json_atomic(Path(bundle) / MANIFEST, manifest.to_dict())


def read_manifest(bundle: Path) -> Manifest:
    """Read and check `bundle/manifest.json`; the bundle directory must exist and hold one, and every graph it
    lists must lie inside it (symlinks resolved)."""
    from seenn_deploy.runtime.bundle import bundle_path  # bundle.py builds on this module

    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise UserError(f"bundle {bundle} is not a directory: give the directory `seenn-deploy export` wrote")
    if not path.is_file():
        raise UserError(f"{bundle} holds no {MANIFEST}, so it is not a seenn-deploy bundle: export one with `seenn-deploy export`")
    data = read_json_object(path, FIX)
    manifest = Manifest.from_dict(data, str(path))
    for role, rel in manifest.graphs.items():
        if not bundle_path(bundle, rel, f"the {role} graph").is_file():
            raise UserError(f"{bundle} lacks {rel} ({role} graph) that its manifest lists: the bundle is incomplete; re-export it")
    return manifest
