"""The bundle manifest (`manifest.json`): what the graphs take, hold and give, read without torch.

A bundle is a directory: manifest.json, step.onnx (+ encoder.onnx, policy.onnx), engines/,
calib/. Every path in the manifest is relative and stays inside the bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from seenn_deploy.errors import UserError
from seenn_deploy.files import read_json_object, write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "seenn-deploy.bundle"
FORMAT_VERSION = 1
ACCUMULATIONS = ("mean", "sum")
EXIT_KINDS = ("fixed", "confidence", "policy")
PRECISIONS = ("fp32", "fp16")

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
    """Exit settings: the policy the runtime uses by default, and how the graph's confidence is made."""

    kind: str = "confidence"
    alpha: float | None = None
    accumulate: str = "mean"
    temperature: float = 1.0
    candidates: list[int] = field(default_factory=list)


@dataclass
class Manifest:
    graphs: dict[str, str]  # "step" (required), "encoder", "policy" -> relative path
    input: InputInfo
    step_input_shape: tuple[int, ...]  # what the step graph's x takes per sample (encoder output when split)
    states: list[StateInfo]
    num_classes: int
    classes: list[str]
    timesteps: int  # T_max
    exit: ExitInfo
    precision: str = "fp32"
    fp32_layers: list[str] = field(default_factory=list)  # fp16: weighted layers kept in FP32 besides the default ones
    fp16_weights: str = "pair"  # fp16: "pair" (hi + lo FP16 weights) or "single" (rounded once)
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
        if d.get("format") != FORMAT:
            raise UserError(f"{where} is not a seenn-deploy bundle manifest (format {d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{where} has bundle format version {d.get('version')}; this seenn-deploy reads version "
                f"{FORMAT_VERSION}: re-export the bundle or upgrade seenn-deploy"
            )
        try:
            inp = d["input"]
            manifest = cls(
                graphs=dict(d["graphs"]),
                input=InputInfo(
                    shape=tuple(inp["shape"]), layout=inp["layout"], kind=inp["kind"],
                    mean=tuple(inp["mean"]), std=tuple(inp["std"]), dtype=inp.get("dtype", "float32"),
                ),
                step_input_shape=tuple(d["step_input_shape"]),
                states=[StateInfo(s["name"], tuple(s["shape"]), float(s["init"]), s.get("dtype", "float32"))
                        for s in d["states"]],
                num_classes=int(d["num_classes"]),
                classes=list(d["classes"]),
                timesteps=int(d["timesteps"]),
                exit=ExitInfo(**d["exit"]),
                precision=d.get("precision", "fp32"),
                fp32_layers=list(d.get("fp32_layers", [])),
                fp16_weights=str(d.get("fp16_weights", "single")),  # bundles from before the field had single
                max_batch=int(d.get("max_batch", 256)),
                arch=d.get("arch", ""),
                provenance=dict(d.get("provenance", {})),
                history=list(d.get("history", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where} is malformed ({type(exc).__name__}: {exc}): re-export the bundle") from None
        manifest.check(where)
        return manifest

    def check(self, where: str = MANIFEST) -> None:
        """Internal consistency; graph-level checks happen when the graphs are loaded."""
        problems = []
        if "step" not in self.graphs:
            problems.append("no step graph")
        for role, rel in self.graphs.items():
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or not rel:
                problems.append(f"graph path {rel!r} ({role}) is not relative inside the bundle")
        if self.exit.accumulate not in ACCUMULATIONS:
            problems.append(f"exit.accumulate {self.exit.accumulate!r} is not one of {ACCUMULATIONS}")
        if self.exit.kind not in EXIT_KINDS:
            problems.append(f"exit.kind {self.exit.kind!r} is not one of {EXIT_KINDS}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.timesteps < 1 or self.max_batch < 1:
            problems.append("timesteps and max_batch must be >= 1")
        if len(self.classes) != self.num_classes:
            problems.append(f"{len(self.classes)} class names for {self.num_classes} classes")
        names = [s.name for s in self.states]
        if len(set(names)) != len(names):
            problems.append("state names repeat")
        if problems:
            raise UserError(f"{where} is inconsistent: {'; '.join(problems)}: re-export the bundle")

    @property
    def has_encoder(self) -> bool:
        return "encoder" in self.graphs


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    """Check and write `bundle/manifest.json` atomically."""
    manifest.check()
    write_json_atomic(Path(bundle) / MANIFEST, manifest.to_dict())


def read_manifest(bundle: Path) -> Manifest:
    """Read and check `bundle/manifest.json`; the bundle directory must exist and hold one."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise UserError(f"bundle {bundle} is not a directory: give the directory `seenn-deploy export` wrote")
    if not path.is_file():
        raise UserError(f"{bundle} holds no {MANIFEST}, so it is not a seenn-deploy bundle: export one with `seenn-deploy export`")
    data = read_json_object(path, "the bundle is corrupt; re-export it")
    manifest = Manifest.from_dict(data, str(path))
    for role, rel in manifest.graphs.items():
        if not (bundle / rel).is_file():
            raise UserError(f"{bundle} lacks {rel} ({role} graph) that its manifest lists: the bundle is incomplete; re-export it")
    return manifest
