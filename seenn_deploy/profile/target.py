"""What `bench --engine PATH` measures: a bundle directory, a TensorRT plan in its bundle, or a lone ONNX step graph.

* bundle: `Runtime.from_bundle` with the chosen backend (ort unless told otherwise).
* plan (`BUNDLE/engines/NAME.plan`, the step graph's): backend trt with exactly that plan; the
  bundle's other graphs use their plans of the same precision. A plan elsewhere is refused: the
  plan alone does not say what its inputs mean (normalisation, states, exit head); its bundle does.
* lone ONNX step graph: every graph `seenn-deploy export` writes carries the bundle's manifest in
  its metadata (`seenn_deploy.manifest`), so the file describes itself. It runs with ONNX Runtime;
  an encoder or policy graph its manifest lists must lie beside it under the name the manifest gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.api import Runtime
from seenn_deploy.runtime.engine_meta import (
    ENGINES_DIR, META_SUFFIX, PLAN_SUFFIX, EngineMeta, meta_path, read_engine_meta,
)
from seenn_deploy.runtime.exit import ExitPolicy, parse_exit
from seenn_deploy.runtime.manifest import MANIFEST, METADATA_KEY, RESET, Manifest, read_manifest
from seenn_deploy.runtime.schema import parse_json

KINDS = ("bundle", "plan", "onnx")
ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class BenchTarget:
    """A resolved `--engine PATH`: its kind, the manifest that describes it, and what runs it."""

    kind: str  # one of KINDS
    path: Path  # as given
    manifest: Manifest
    bundle: Path | None = None  # the bundle directory (bundle, plan)
    engine: EngineMeta | None = None  # the plan's record (plan)

    @property
    def default_backend(self) -> str:
        return "trt" if self.kind == "plan" else "ort"

    def check_backend(self, backend: str | None) -> str:
        """The backend to run with (None: the default for this kind); UserError where the kind cannot use it."""
        backend = backend or self.default_backend
        if self.kind == "plan" and backend != "trt":
            raise UserError(f"{self.path} is a TensorRT plan: it runs with --backend trt (or leave --backend out); "
                            f"for {backend}, bench its bundle directory {self.bundle}")
        if self.kind == "onnx" and backend != "ort":
            raise UserError(f"{self.path} is a lone ONNX graph: it runs with --backend ort; for {backend}, bench its "
                            "bundle directory")
        return backend

    def open(self, backend: str | None = None, exit: str | ExitPolicy | None = None, mode: str = "slots",
             batch: int = 1, **options) -> Runtime:
        """A Runtime over this target; `options` go to the backend (threads, providers, device, ...)."""
        backend = self.check_backend(backend)
        if self.kind == "bundle":
            return Runtime.from_bundle(self.bundle, backend=backend, exit=exit, mode=mode, batch=batch, **options)
        if self.kind == "plan":
            return Runtime.from_bundle(self.bundle, backend=backend, exit=exit, mode=mode, batch=batch,
                                       precision=self.engine.precision, plans={self.engine.role: self.path}, **options)
        return self._open_lone_graph(exit, mode, batch, **options)

    def _open_lone_graph(self, exit, mode: str, batch: int, providers=None, threads: int | None = None,
                         device_states: bool | None = None, **others) -> Runtime:
        from seenn_deploy.runtime.executors.ort import OrtExecutor

        if others:
            raise UserError(f"{self.path} is a lone ONNX graph run by ONNX Runtime: it takes providers and threads, not "
                            f"{', '.join(sorted(others))}")

        graphs = {}
        try:
            for role, rel in self.manifest.graphs.items():
                graphs[role] = OrtExecutor(self.path if role == "step" else self.path.parent / rel, providers, threads)
            policy = graphs.get("policy")
            exit_policy = exit if isinstance(exit, ExitPolicy) else parse_exit(exit, self.manifest, policy)
            return Runtime(self.manifest, graphs["step"], graphs.get("encoder"), exit_policy, mode, batch, policy,
                           device_states)
        except BaseException:
            for graph in graphs.values():
                graph.close()
            raise

    def notes(self) -> list[str]:
        """What a report should say about the target beyond its path."""
        if self.kind == "plan":
            e = self.engine
            return [f"engine {e.plan}: {e.role}, {e.precision}, TensorRT {e.tensorrt_version}, built on {e.gpu_name} "
                    f"(sm {e.compute_capability}), batch {e.profile['min']}..{e.profile['max']} (opt {e.profile['opt']})"]
        if self.kind == "onnx" and (self.path.parent / MANIFEST).is_file():
            return [f"the graph's embedded manifest was used, not {self.path.parent / MANIFEST} (a calibrated alpha, "
                    "for one): bench the directory to use it"]
        return []


def resolve_target(path: Path) -> BenchTarget:
    """Say what PATH is (bundle, plan or lone ONNX step graph) and read what describes it; UserError otherwise."""
    path = Path(path)
    if path.is_dir():
        return BenchTarget("bundle", path, read_manifest(path), bundle=path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a bundle directory, a plan in its {ENGINES_DIR}/ or an ONNX "
                        "step graph")
    if path.suffix == PLAN_SUFFIX:
        return _plan_target(path)
    if path.suffix == ONNX_SUFFIX:
        return _onnx_target(path)
    raise UserError(f"{path} is neither a bundle directory, a TensorRT plan ({PLAN_SUFFIX}) nor an ONNX step graph "
                    f"({ONNX_SUFFIX})")


def _plan_target(path: Path) -> BenchTarget:
    from seenn_deploy.runtime.executors.trt import load_tensorrt

    bundle = path.parent.parent
    if path.parent.name != ENGINES_DIR or not (bundle / MANIFEST).is_file():
        raise UserError(f"{path} is not inside a bundle: a plan runs from its bundle directory, whose manifest says what "
                        f"its inputs and states are; keep it in BUNDLE/{ENGINES_DIR}/ beside its {path.name}{META_SUFFIX} "
                        "record (`seenn-deploy build BUNDLE` puts it there)")
    load_tensorrt()  # nothing runs a plan without TensorRT: say so before reading more
    manifest = read_manifest(bundle)
    engine = read_engine_meta(meta_path(path))
    if engine.role != "step":
        raise UserError(f"{path} is the bundle's {engine.role} engine: give the step plan (step.*{PLAN_SUFFIX}); the "
                        f"{engine.role} plan is found beside it")
    return BenchTarget("plan", path, manifest, bundle=bundle, engine=engine)


def _onnx_target(path: Path) -> BenchTarget:
    from seenn_deploy.runtime.executors.ort import OrtExecutor

    with OrtExecutor(path) as graph:
        text = graph.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        inputs = [info.name for info in graph.inputs]
    if text is None:
        raise UserError(f"{path} carries no seenn-deploy manifest (ONNX metadata {METADATA_KEY!r}): it was not written "
                        "by `seenn-deploy export`; bench its bundle directory instead")
    where = f"{path} (metadata {METADATA_KEY})"
    data = parse_json(text, where, "re-export the bundle")
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object: re-export the bundle")
    manifest = Manifest.from_dict(data, where)
    if RESET not in inputs:
        raise UserError(f"{path} is not a step graph (it takes {', '.join(inputs)}; a step graph takes x, reset and its "
                        "states): give the bundle's step graph")
    for role, rel in manifest.graphs.items():
        if role != "step" and not (path.parent / rel).is_file():
            raise UserError(f"{path} needs its {role} graph: its manifest lists {rel}, which is not beside it "
                            f"({path.parent / rel} is missing); copy {rel} next to it, or bench the bundle directory")
    return BenchTarget("onnx", path, manifest)
