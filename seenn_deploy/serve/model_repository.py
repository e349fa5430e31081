"""A Triton model repository generated from a bundle's manifest (every `config.pbtxt` written here, never by hand).

    REPO/
      seenn-repository.json        what was generated, from which bundle, with which options
      NAME/                        Python backend: one request per sample -> prediction, confidence, timesteps
        config.pbtxt               dynamic batching; the runtime (slots, the bundle's exit) runs in each instance
        1/model.py                 imports seenn_deploy.serve.triton_model (seenn-deploy in the server's Python)
        1/bundle/                  the bundle's manifest and graphs (and engines for --backend trt)
      NAME_step/                   the step graph as a stateful model for Triton's ONNX Runtime backend
        config.pbtxt               sequence batcher, direct strategy (a batch slot per sequence), one implicit
                                   state per manifest state with its initial value, START/READY -> reset
        1/model.onnx               step.onnx adapted to the sequence batcher's tensors (step_graph.py)
        initial_state/NAME.bin     the initial value of a state that does not start at zero
      NAME_encoder/                (bundles with an encoder) the encoder graph, run once per sample

The step model leaves the loop to the client: one request per timestep, sequence_start on the first.
`iterative_sequence` (the server loops a request and frees its slot when it exits) needs a backend that
reschedules requests, which Triton's ONNX Runtime and TensorRT backends do not; the Python model runs
that loop server-side, with the runtime's own slots. `--backend trt` runs the Python model on the
bundle's TensorRT engines and the step and encoder models on ONNX Runtime's TensorRT execution provider
on the GPU (the engines take `reset` [B], not the sequence batcher's control tensors).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from seenn_deploy import __version__
from seenn_deploy.errors import UserError
from seenn_deploy.files import BUNDLE, check_writable, staged_folder, write_json_atomic
from seenn_deploy.lazy import require
from seenn_deploy.runtime.bundle import bundle_path
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, MANIFEST, PREDICTION, X, Manifest, read_manifest
from seenn_deploy.serve.pbtxt import Enum, to_pbtxt
from seenn_deploy.serve.step_graph import READY, START, adapt_step_graph, scalar_states, tensor_dtypes

BACKENDS = ("ort", "trt")
MARKER = "seenn-repository.json"
MARKER_FORMAT = "seenn-deploy.triton-repository"
CONFIG = "config.pbtxt"
VERSION = "1"
BUNDLE_DIR = "bundle"  # the bundle's copy inside the Python model's version folder
TIMESTEPS = "timesteps"  # the Python model's third output, beside prediction and confidence
INITIAL_STATE_DIR = "initial_state"
SEQUENCE_IDLE_US = 5_000_000  # a sequence that sends nothing for 5 s loses its slot
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository serves the bundle.

    max_batch: Triton's max_batch_size of every model, and the runtime's slots in the Python model.
    instances: model instances per model (each Python instance holds its own runtime).
    backend: 'ort' (CPU instances) or 'trt' (GPU instances; TensorRT engines in the Python model).
    exit: the Python model's exit policy (run's --exit syntax); None: the bundle's own.
    threads: ONNX Runtime threads per Python-model instance (None: ONNX Runtime's default).
    step_model: write the stateful step model (and the encoder's) besides the Python model.
    """

    name: str = "seenn"
    max_batch: int = 32
    instances: int = 1
    backend: str = "ort"
    exit: str | None = None
    threads: int | None = None
    step_model: bool = True


@dataclass
class ModelRepository:
    """A repository written by write_model_repository: where, and its models by role."""

    path: Path
    python_model: str
    step_model: str | None
    encoder_model: str | None
    options: RepositoryOptions
    bundle: str = ""
    models: list[str] = field(default_factory=list)


def check_options(manifest: Manifest, options: RepositoryOptions, bundle: Path) -> None:
    """UserError naming the option and the fix for options the bundle or Triton cannot take."""
    if options.backend not in BACKENDS:
        raise UserError(f"--backend {options.backend!r} is not one of {', '.join(BACKENDS)}")
    if options.max_batch < 1 or options.instances < 1:
        raise UserError("--max-batch and --instances take 1 or more")
    if options.max_batch > manifest.max_batch:
        raise UserError(f"--max-batch {options.max_batch} is above the {manifest.max_batch} rows {bundle}'s graphs "
                        f"take: give at most {manifest.max_batch}, or re-export with a larger --max-batch")
    if not options.name or not all(c.isalnum() or c in "_-" for c in options.name):
        raise UserError(f"model name {options.name!r} is not letters, digits, '_' and '-': choose another")
    if options.backend == "trt" and options.threads is not None:
        raise UserError("threads are ONNX Runtime's option: leave them out with --backend trt")
    if options.exit is not None:
        from seenn_deploy.runtime.exit import parse_exit

        if options.exit.strip().startswith("policy"):
            if "policy" not in manifest.graphs:
                raise UserError(f"--exit {options.exit!r}: {bundle} has no policy graph")
        else:
            parse_exit(options.exit, manifest).check(manifest.timesteps)  # refused now, not when Triton loads it


def _dims(shape: tuple[int, ...]) -> list[int]:
    return [int(d) for d in shape]


def _parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def _instances(options: RepositoryOptions) -> list[dict[str, Any]]:
    return [{"count": options.instances, "kind": Enum("KIND_GPU" if options.backend == "trt" else "KIND_CPU")}]


def _scalar_output(name: str, data_type: str) -> dict[str, Any]:
    """One number per sample: [B] from the model, [B, 1] to the client (dims may not be empty)."""
    return {"name": name, "data_type": Enum(data_type), "dims": [1], "reshape": {"shape": []}}


def python_model_config(manifest: Manifest, options: RepositoryOptions) -> dict[str, Any]:
    """The Python-backend model: raw samples in, the runtime's answer out, requests batched dynamically."""
    parameters = {"bundle": BUNDLE_DIR, "backend": options.backend, "slots": str(options.max_batch),
                  "exit": options.exit or "", "threads": "" if options.threads is None else str(options.threads)}
    return {
        "name": options.name,
        "backend": "python",
        "max_batch_size": options.max_batch,
        "input": [{"name": X, "data_type": Enum(TRITON_TYPES[manifest.input.dtype]), "dims": _dims(manifest.input.shape)}],
        "output": [_scalar_output(PREDICTION, "TYPE_INT32"), _scalar_output(CONFIDENCE, "TYPE_FP32"),
                   _scalar_output(TIMESTEPS, "TYPE_INT32")],
        "dynamic_batching": {},
        "instance_group": _instances(options),
        "parameters": _parameters(parameters),
    }


def _accelerators(options: RepositoryOptions, manifest: Manifest) -> dict[str, Any] | None:
    if options.backend != "trt":
        return None
    tensorrt: dict[str, Any] = {"name": "tensorrt"}
    if manifest.precision == "fp16":
        tensorrt["parameters"] = [{"key": "precision_mode", "value": "FP16"}]
    return {"execution_accelerators": {"gpu_execution_accelerator": [tensorrt]}}


def initial_state_file(name: str) -> str:
    """File name, in NAME_step/initial_state/, of a state's initial value (raw little-endian, row-major)."""
    return f"{name}.bin"


def _type(dtypes: dict[str, str], name: str, default: str = "float32") -> Enum:
    return Enum(TRITON_TYPES[dtypes.get(name, default)])


def step_model_config(manifest: Manifest, options: RepositoryOptions, dtypes: dict[str, str]) -> dict[str, Any]:
    """The step graph as a stateful model: Triton keeps every state of the manifest between a sequence's requests.

    dtypes: numpy dtype name of the adapted graph's inputs and outputs (adapt_step_graph's answer)."""
    scalars = set(scalar_states(manifest))
    states = []
    for state in manifest.states:
        dims = [1] if state.name in scalars else _dims(state.shape)
        data_type = Enum(TRITON_TYPES[state.dtype])
        initial: dict[str, Any] = {"name": state.name, "data_type": data_type, "dims": dims}
        if state.init == 0:
            initial["zero_data"] = True
        else:
            initial["data_file"] = initial_state_file(state.name)
        states.append({"input_name": state.name, "output_name": state.output, "data_type": data_type, "dims": dims,
                       "initial_state": [initial]})
    controls = [{"name": START, "control": [{"kind": Enum("CONTROL_SEQUENCE_START"), "bool_false_true": [False, True]}]},
                {"name": READY, "control": [{"kind": Enum("CONTROL_SEQUENCE_READY"), "bool_false_true": [False, True]}]}]
    return {
        "name": f"{options.name}_step",
        "backend": "onnxruntime",
        "max_batch_size": options.max_batch,
        "input": [{"name": X, "data_type": _type(dtypes, X), "dims": _dims(manifest.step_input_shape)}],
        "output": [_scalar_output(CONFIDENCE, _type(dtypes, CONFIDENCE)),
                   _scalar_output(PREDICTION, _type(dtypes, PREDICTION, "int32")),
                   {"name": LOGITS, "data_type": _type(dtypes, LOGITS), "dims": [manifest.num_classes]}],
        "sequence_batching": {
            "max_sequence_idle_microseconds": SEQUENCE_IDLE_US,
            "direct": {},
            "control_input": controls,
            "state": states,
        },
        "instance_group": _instances(options),
        "optimization": _accelerators(options, manifest),
    }


def encoder_model_config(manifest: Manifest, options: RepositoryOptions, dtypes: dict[str, str]) -> dict[str, Any]:
    """The encoder graph (first conv + BN, once per sample) as a plain batched model; dtypes: its inputs' and
    its output's numpy dtype names, the input first."""
    (input_name, input_dtype), (output_name, output_dtype) = list(dtypes.items())[:2]
    return {
        "name": f"{options.name}_encoder",
        "backend": "onnxruntime",
        "max_batch_size": options.max_batch,
        "input": [{"name": input_name, "data_type": Enum(TRITON_TYPES[input_dtype]), "dims": _dims(manifest.input.shape)}],
        "output": [{"name": output_name, "data_type": Enum(TRITON_TYPES[output_dtype]),
                    "dims": _dims(manifest.step_input_shape)}],
        "dynamic_batching": {},
        "instance_group": _instances(options),
        "optimization": _accelerators(options, manifest),
    }


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by seenn-deploy {__version__} from the bundle's manifest: regenerate, do not edit.\n"
    (folder / CONFIG).write_text(header + to_pbtxt(config))


def _copy_bundle(bundle: Path, manifest: Manifest, target: Path, with_engines: bool) -> None:
    """The manifest and the graphs (and engines/) of `bundle` into `target`; calib/ and the rest stay behind."""
    target.mkdir(parents=True)
    shutil.copy2(bundle / MANIFEST, target / MANIFEST)
    for role, rel in manifest.graphs.items():
        source = bundle_path(bundle, rel, f"the {role} graph")
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / rel)
    engines = bundle / "engines"
    if with_engines:
        if not engines.is_dir() or not any(engines.glob("*.plan")):
            raise UserError(f"--backend trt serves {bundle}'s TensorRT engines, and it has none: build them on the "
                            f"serving GPU with `seenn-deploy build {bundle}`, or use --backend ort")
        shutil.copytree(engines, target / "engines")


def _encoder_dtypes(bundle: Path, manifest: Manifest) -> dict[str, str]:
    """The encoder graph's input and output, name -> numpy dtype name (input first)."""
    onnx = require("onnx", "the Triton encoder model")
    graph = onnx.load(str(bundle_path(bundle, manifest.graphs["encoder"], "the encoder graph")),
                      load_external_data=False).graph
    return tensor_dtypes(onnx, graph)


def _write_step_model(bundle: Path, manifest: Manifest, options: RepositoryOptions, root: Path) -> str:
    folder = root / f"{options.name}_step"
    (folder / VERSION).mkdir(parents=True)
    dtypes = adapt_step_graph(bundle_path(bundle, manifest.graphs["step"], "the step graph"), manifest,
                              folder / VERSION / "model.onnx")
    config = step_model_config(manifest, options, dtypes)
    for state in manifest.states:
        if state.init != 0:
            (folder / INITIAL_STATE_DIR).mkdir(exist_ok=True)
            values = np.full(max(1, math.prod(state.shape)), state.init, dtype=np.dtype(state.dtype).newbyteorder("<"))
            (folder / INITIAL_STATE_DIR / initial_state_file(state.name)).write_bytes(values.tobytes())
    _write_config(folder, config)
    return config["name"]


def _write_encoder_model(bundle: Path, manifest: Manifest, options: RepositoryOptions, root: Path) -> str:
    config = encoder_model_config(manifest, options, _encoder_dtypes(bundle, manifest))
    folder = root / config["name"]
    (folder / VERSION).mkdir(parents=True)
    shutil.copy2(bundle_path(bundle, manifest.graphs["encoder"], "the encoder graph"), folder / VERSION / "model.onnx")
    _write_config(folder, config)
    return config["name"]


PYTHON_MODEL = '''"""Triton Python-backend model generated by seenn-deploy {version}; the code: seenn_deploy.serve.triton_model.

The server's Python needs seenn-deploy with ONNX Runtime (pip install 'seenn-deploy[cpu]'), or with
TensorRT for --backend trt.
"""
{path}
from seenn_deploy.serve.triton_model import TritonPythonModel  # noqa: F401
'''
# serve's scratch repositories: the stub imports seenn_deploy from where this process does (installed or not)
IMPORT_PATH = '''
import sys

sys.path.insert(0, {folder!r})
'''


def fill_repository(bundle: Path, root: Path, options: RepositoryOptions, local: bool = False) -> ModelRepository:
    """Write the repository's models into the existing, empty folder `root`. local=True: for a server on this
    machine, whose Python model imports seenn_deploy from where this process found it."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    check_options(manifest, options, bundle)
    python = root / options.name
    _copy_bundle(bundle, manifest, python / VERSION / BUNDLE_DIR, with_engines=options.backend == "trt")
    package_parent = str(Path(__file__).resolve().parents[2])
    path = IMPORT_PATH.format(folder=package_parent) if local else ""
    (python / VERSION / "model.py").write_text(PYTHON_MODEL.format(version=__version__, path=path))
    _write_config(python, python_model_config(manifest, options))
    step = encoder = None
    if options.step_model:
        step = _write_step_model(bundle, manifest, options, root)
        if manifest.has_encoder:
            encoder = _write_encoder_model(bundle, manifest, options, root)
    repository = ModelRepository(root, options.name, step, encoder, options, str(bundle.resolve()),
                                 [m for m in (options.name, encoder, step) if m])
    write_json_atomic(root / MARKER, {"format": MARKER_FORMAT, "version": 1, "seenn_deploy": __version__,
                                      "bundle": repository.bundle, "models": repository.models,
                                      "options": asdict(options)})
    return repository


def check_repository_target(out: Path, force: bool) -> None:
    """Refuse a target that holds anything but a repository seenn-deploy wrote (which --force may replace)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is a file: choose another --out")
    if not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise UserError(f"{out} exists and is not a model repository seenn-deploy wrote: choose another --out "
                        "(nothing was written)")
    if not force:
        raise UserError(f"model repository {out} exists: pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """A folder beside `out` to fill; on success it replaces `out` (SIGINT held back), on failure it is removed."""
    check_writable(out, "--out", BUNDLE)
    check_repository_target(out, force)
    with staged_folder(out) as staging:
        yield staging


def write_model_repository(bundle: Path, out: Path, options: RepositoryOptions, force: bool = False) -> ModelRepository:
    """Generate the Triton model repository for `bundle` at `out`, all at once (a reader sees the old one or the new)."""
    out = Path(out)
    with _staged(out, force) as staging:
        repository = fill_repository(bundle, staging, options)
    repository.path = out
    return repository
