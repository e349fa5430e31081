"""Opening a bundle's graphs for a backend: every path inside the bundle, every graph checked against the manifest.

A bundle whose graphs do not match its manifest (tensor names, shapes with a dynamic batch
dimension, dtypes) is refused when it opens, with a message naming each mismatch, instead of
failing at the first step with a bare KeyError. Whatever fails, the executors already opened are
closed: a TensorRT executor holds GPU and pinned host memory until then.

    with open_executors(bundle, read_manifest(bundle), "ort") as graphs:
        graphs.step.run(...)
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import Executor, TensorInfo
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest

BACKENDS = ("ort", "torch", "trt")
ROLES = ("step", "encoder", "policy")  # opening order
ENCODED, SCORES = "encoded", "scores"  # the encoder's and the policy's outputs
FLOATS, INTEGERS = ("float32", "float16"), ("int32", "int64")


def bundle_path(bundle: Path | str, rel: Path | str, what: str) -> Path:
    """`bundle/rel` with symlinks resolved; UserError when it lies outside the bundle (also resolved).

    Every file the toolchain reads from or writes to a bundle goes through here, so a symlink in a
    bundle (or a manifest path) cannot make it read or write elsewhere. The file need not exist.
    An absolute `rel` is accepted when it resolves inside the bundle.
    """
    root = Path(bundle).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"{what} {Path(bundle) / rel} resolves to {path}, outside the bundle {root}: every file of a "
                        "bundle must lie inside it; replace the symlink with the file, or re-export the bundle")
    return path


@dataclass(frozen=True)
class TensorSpec:
    """What the manifest says one graph tensor is: name, shape without the batch dimension, allowed dtypes."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.name} [{', '.join(['B', *map(str, self.shape)])}] {'/'.join(self.dtypes)}"


def expected_io(manifest: Manifest, role: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) the `role` graph must have: exactly these inputs; at least these outputs."""
    dtype = (manifest.input.dtype,)
    if role == "step":
        inputs = [TensorSpec(X, manifest.step_input_shape, dtype), TensorSpec(RESET, (), ("bool",))]
        inputs += [TensorSpec(s.name, s.shape, (s.dtype,)) for s in manifest.states]
        outputs = [TensorSpec(CONFIDENCE, (), FLOATS), TensorSpec(PREDICTION, (), INTEGERS),
                   TensorSpec(LOGITS, (manifest.num_classes,), FLOATS)]
        outputs += [TensorSpec(s.output, s.shape, (s.dtype,)) for s in manifest.states]
        return inputs, outputs
    sample = [TensorSpec(X, manifest.input.shape, dtype)]
    if role == "encoder":
        return sample, [TensorSpec(ENCODED, manifest.step_input_shape, dtype)]
    if role == "policy":
        return sample, [TensorSpec(SCORES, (len(manifest.exit.candidates),), FLOATS)]
    raise UserError(f"graph role {role!r} is not one of {', '.join(ROLES)}")


def _mismatch(spec: TensorSpec, info: TensorInfo, is_input: bool) -> str | None:
    """Why `info` (what the graph has) is not `spec`; None when it is. Output dims a backend cannot tell are None."""
    dims = info.shape[1:]
    batch_ok = len(info.shape) > 0 and info.shape[0] is None
    dims_ok = len(dims) == len(spec.shape) and all(d == s or (d is None and not is_input) for d, s in zip(dims, spec.shape))
    if batch_ok and dims_ok and np.dtype(info.dtype).name in spec.dtypes:
        return None
    kind = "input" if is_input else "output"
    return f"{kind} {info.describe()} should be {spec.describe()}"


def check_graph(executor: Executor, manifest: Manifest, role: str) -> None:
    """UserError listing every way the opened `role` graph differs from what the manifest says it is."""
    inputs, outputs = expected_io(manifest, role)
    problems = []
    have = {i.name: i for i in executor.inputs}
    missing = [s.describe() for s in inputs if s.name not in have]
    extra = sorted(set(have) - {s.name for s in inputs})
    if missing:
        problems.append(f"it lacks input{'s' * (len(missing) > 1)} {', '.join(missing)}")
    if extra:
        problems.append(f"it takes input{'s' * (len(extra) > 1)} {', '.join(extra)} the manifest does not list")
    problems += [p for s in inputs if s.name in have if (p := _mismatch(s, have[s.name], True))]
    out_infos = {i.name: i for i in executor.output_infos or []}
    gone = [s.describe() for s in outputs if s.name not in executor.outputs]
    if gone:
        problems.append(f"it lacks output{'s' * (len(gone) > 1)} {', '.join(gone)}")
    problems += [p for s in outputs if s.name in out_infos if (p := _mismatch(s, out_infos[s.name], False))]
    if problems:
        raise UserError(f"the {role} graph ({executor.label}) does not match the bundle's manifest: "
                        f"{'; '.join(problems)}: re-export the bundle (and rebuild its engines)")


@dataclass
class BundleExecutors:
    """A bundle's opened graphs. A context manager; close() closes each."""

    step: Executor
    encoder: Executor | None = None
    policy: Executor | None = None

    def close(self) -> None:
        for executor in (self.policy, self.encoder, self.step):
            if executor is not None:
                executor.close()

    def __enter__(self) -> "BundleExecutors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _with_options(factory: Callable, backend: str, bundle: Path, manifest: Manifest, options: dict):
    """factory(bundle, manifest, **options), an unknown option a UserError listing the known ones."""
    signature = inspect.signature(factory)
    try:
        signature.bind(bundle, manifest, **options)
    except TypeError:
        known = list(signature.parameters)[2:]
        raise UserError(f"backend {backend!r} takes the options {', '.join(known)}, not "
                        f"{', '.join(sorted(set(options) - set(known))) or 'these'}") from None
    return factory(bundle, manifest, **options)


def _opener(bundle: Path, manifest: Manifest, backend: str, providers: Sequence | None, threads: int | None,
            options: dict) -> Callable[[str], Executor]:
    if backend in ("torch", "trt") and (providers or threads):
        given = ", ".join(name for name, value in (("providers", providers), ("threads", threads)) if value)
        raise UserError(f"backend {backend!r} does not take {given} (ONNX Runtime's options, backend 'ort'); it runs "
                        "where device= says")
    if backend == "ort":
        from seenn_deploy.runtime.executors.ort import OrtExecutor

        if options:
            raise UserError(f"backend 'ort' takes the options providers, threads, not {', '.join(sorted(options))}")

        def open_graph(role: str) -> Executor:
            rel = manifest.graphs[role]
            return OrtExecutor(bundle_path(bundle, rel, f"the {role} graph"), providers, threads, label=rel)

        return open_graph
    if backend == "torch":
        from seenn_deploy.runtime.executors.torch_executor import open_torch_graphs

        return _with_options(open_torch_graphs, backend, bundle, manifest, options)
    if backend == "trt":
        from seenn_deploy.runtime.executors.trt import open_trt_graphs

        return _with_options(open_trt_graphs, backend, bundle, manifest, options)
    raise UserError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def open_executors(bundle: Path | str, manifest: Manifest, backend: str = "ort",
                   providers: Sequence | None = None, threads: int | None = None,
                   **backend_options) -> BundleExecutors:
    """The bundle's graphs opened with `backend` and checked against `manifest`; on any failure, none stays open.

    backend 'ort' (providers: names or (name, options), see executors.ort.parse_providers; threads),
    'torch' (checkpoint=, device='cpu' | 'cuda:N', cuda_graphs=) or 'trt' (precision=, device=N, cuda_graphs=,
    plans=).
    """
    bundle = Path(bundle)
    open_graph = _opener(bundle, manifest, backend, providers, threads, backend_options)
    graphs: dict[str, Executor] = {}
    with contextlib.ExitStack() as opened:
        for role in (r for r in ROLES if r in manifest.graphs):
            graphs[role] = opened.enter_context(open_graph(role))
            check_graph(graphs[role], manifest, role)
        opened.pop_all()
    return BundleExecutors(graphs["step"], graphs.get("encoder"), graphs.get("policy"))
