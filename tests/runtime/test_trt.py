"""The TensorRT backend: engine records and compatibility checks, clear errors without TensorRT or a GPU,
the executor's buffer / ping-pong / CUDA-graph logic against stand-ins for tensorrt and cuda-python
(ONNX Runtime computes the graph), and, marked gpu, the same parity checks with a real TensorRT engine.
"""

from __future__ import annotations

import ctypes
import enum
import json
import shutil
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest

from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import MissingDependency, UserError
from seenn_deploy.files import file_sha256
from seenn_deploy.runtime import Confidence, Runtime, read_manifest, run_timesteps
from seenn_deploy.runtime.engine_meta import (
    ENGINES_DIR, EngineMeta, check_engine_compat, engine_file_name, find_engine, meta_path, read_engine_meta,
    write_engine_meta,
)
from seenn_deploy.runtime.executors.ort import ORT_TYPES, OrtExecutor
from seenn_deploy.runtime.manifest import (
    CONFIDENCE, LOGITS, PREDICTION, RESET, X, ExitInfo, InputInfo, Manifest, StateInfo,
)

ALPHA = 0.9


def meta(**changes) -> EngineMeta:
    fields = dict(role="step", plan="step.fp16.orin.trt10.3.0.plan", tensorrt_version="10.3.0", gpu_name="Orin",
                  compute_capability="8.7", precision="fp16", profile={"min": 1, "opt": 32, "max": 64},
                  created="2025-01-01T00:00:00+00:00", onnx_sha256="ab" * 32)
    return EngineMeta(**{**fields, **changes})


# -- compatibility -----------------------------------------------------------------------------
def test_another_tensorrt_version_is_refused_naming_both_versions():
    with pytest.raises(UserError) as info:
        check_engine_compat(meta(), "11.0.1", "Orin", "8.7")
    message = str(info.value)
    assert "10.3.0" in message and "11.0.1" in message and "seenn-deploy build" in message
    with pytest.raises(UserError, match=r"10\.3\.0.*10\.3\.1"):  # patch releases differ too
        check_engine_compat(meta(), "10.3.1", "Orin", "8.7")


def test_the_same_version_and_capability_are_accepted():
    check_engine_compat(meta(), "10.3.0", "Orin", "8.7")
    check_engine_compat(meta(tensorrt_version="10.0.1.6"), "10.0.1", "NVIDIA Orin", "8.7")  # build number ignored


def test_version_compatible_plans_load_on_the_same_major_only():
    built = meta(tensorrt_version="10.3.0", version_compatible=True)
    check_engine_compat(built, "10.8.1", "Orin", "8.7")
    check_engine_compat(meta(), "10.8.1", "Orin", "8.7", version_compatible=True)
    with pytest.raises(UserError, match=r"10\.3\.0.*11\.0\.0.*10\.x"):
        check_engine_compat(built, "11.0.0", "Orin", "8.7")
    with pytest.raises(UserError, match=r"10\.3\.0.*older 10\.2\.0"):
        check_engine_compat(built, "10.2.0", "Orin", "8.7")


def test_another_compute_capability_is_refused():
    with pytest.raises(UserError, match=r"compute capability 8\.7 \(Orin\).*NVIDIA H100.*9\.0"):
        check_engine_compat(meta(), "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_engine_file_names_are_sanitised():
    assert engine_file_name("step", "fp16", "Orin", "10.3.0") == "step.fp16.orin.trt10.3.0.plan"
    assert engine_file_name("encoder", "fp32", "NVIDIA H100 80GB HBM3", "10.8.0.43") == \
        "encoder.fp32.h100-80gb-hbm3.trt10.8.0.plan"
    assert engine_file_name("step", "FP16", "NVIDIA GeForce RTX 4090/../x", "11.0") == \
        "step.fp16.geforce-rtx-4090-x.trt11.0.0.plan"


# -- records -----------------------------------------------------------------------------------
def test_engine_records_round_trip_and_corrupt_ones_are_refused(tmp_path):
    path = tmp_path / "step.fp16.orin.trt10.3.0.plan.json"
    write_engine_meta(path, meta(version_compatible=True))
    assert read_engine_meta(path) == meta(version_compatible=True)
    assert json.loads(path.read_text())["format"] == "seenn-deploy.engine"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON.*seenn-deploy build"):
        read_engine_meta(path)
    path.write_text(json.dumps({**meta().to_dict(), "profile": {"min": 1}}))
    with pytest.raises(UserError, match="malformed"):
        read_engine_meta(path)
    with pytest.raises(UserError, match="does not exist"):
        read_engine_meta(tmp_path / "missing.plan.json")


def tiny_bundle(path, precision="fp32"):
    """A bundle the manifest reader accepts; its step.onnx is a placeholder (the tests never run it)."""
    manifest = Manifest(graphs={"step": "step.onnx"}, input=InputInfo((1, 4, 4), "CHW", "static", (0.0,), (1.0,)),
                        step_input_shape=(1, 4, 4), states=[StateInfo("v", (3,), 0.0)], num_classes=2,
                        classes=["a", "b"], timesteps=4, exit=ExitInfo(kind="confidence", alpha=0.9),
                        precision=precision)
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    (path / "step.onnx").write_bytes(b"placeholder")
    return path, manifest


def add_plan(bundle, content=b"plan", **changes):
    record = meta(**changes)
    name = engine_file_name(record.role, record.precision, record.gpu_name, record.tensorrt_version)
    record.plan = name
    (bundle / ENGINES_DIR).mkdir(exist_ok=True)
    (bundle / ENGINES_DIR / name).write_bytes(content)
    write_engine_meta(meta_path(bundle / ENGINES_DIR / name), record)
    return bundle / ENGINES_DIR / name


def test_find_engine_says_to_build_and_lists_what_is_there(tmp_path):
    bundle, manifest = tiny_bundle(tmp_path / "b.seenn", precision="fp16")
    with pytest.raises(UserError, match="holds no TensorRT engines.*seenn-deploy build"):
        find_engine(bundle, manifest, "step")
    add_plan(bundle, role="encoder")
    (bundle / ENGINES_DIR / "stray.plan").write_bytes(b"x")
    with pytest.raises(UserError) as info:
        find_engine(bundle, manifest, "step")
    message = str(info.value)
    assert "no fp16 engine for the step graph" in message and "seenn-deploy build" in message
    assert "encoder.fp16.orin.trt10.3.0.plan (encoder, fp16, Orin sm 8.7, TensorRT 10.3.0)" in message
    assert "stray.plan (no readable stray.plan.json record)" in message
    with pytest.raises(UserError, match="has no policy graph"):
        find_engine(bundle, manifest, "policy")


def test_find_engine_picks_the_plan_that_loads_here(tmp_path):
    bundle, manifest = tiny_bundle(tmp_path / "b.seenn", precision="fp16")
    orin = add_plan(bundle)
    h100 = add_plan(bundle, gpu_name="NVIDIA H100", compute_capability="9.0", tensorrt_version="10.8.0")
    assert find_engine(bundle, manifest, "step", trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7") == orin
    assert find_engine(bundle, manifest, "step", trt_version="10.8.0", compute_capability="9.0") == h100
    with pytest.raises(UserError, match=r"10\.3\.0, this machine has 10\.4\.0"):
        find_engine(bundle, manifest, "step", trt_version="10.4.0", gpu_name="Orin", compute_capability="8.7")


# -- without TensorRT, without a GPU -----------------------------------------------------------
def test_trt_backend_without_tensorrt_names_the_extra(tmp_path, monkeypatch):
    bundle, _ = tiny_bundle(tmp_path / "b.seenn")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, also where it is
    with pytest.raises(MissingDependency) as info:
        Runtime.from_bundle(bundle, backend="trt")
    message = str(info.value)
    assert "tensorrt is not installed" in message and "pip install 'seenn-deploy[trt-cu12]'" in message
    assert "[trt-cu13]" in message and "580" in message
    assert "https://pypi.nvidia.com" in message and "JetPack" in message and "\n" not in message


# -- stand-ins for tensorrt and cuda-python ----------------------------------------------------
ALIGNMENT = 256  # TensorRT: "The pointer must have at least 256-byte alignment" (setTensorAddress)


class FakeCudart(types.ModuleType):
    """cuda-python's runtime calls the executor makes, on host memory; every call returns (error, *results).

    It keeps the rules real CUDA enforces, so code that breaks them fails here too:

    * Work is deferred: copies, memsets, enqueues and graph launches queue on their stream and run at
      cudaStreamSynchronize (a host buffer is read when its copy runs, not when it is queued).
    * Allocations are 256-byte aligned, as cudaMalloc's are; pointers are checked to lie in one.
    * Stream capture (thread-local mode) records the stream's work into a graph. A synchronize or an
      allocation during capture is refused with cudaErrorStreamCaptureUnsupported and invalidates the
      capture: cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated and a NULL graph.
    * A failed call sets the error cudaGetLastError returns (and clears); graphs, executable graphs and
      buffers are counted until destroyed, so a leak shows.
    """

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100
        cudaErrorStreamCaptureUnsupported = 900
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class cudaStreamCaptureStatus(enum.IntEnum):
        cudaStreamCaptureStatusNone = 0
        cudaStreamCaptureStatusActive = 1
        cudaStreamCaptureStatusInvalidated = 2

    def __init__(self, devices: int = 1, driver: int = 12080, runtime: int = 12060) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices, self.driver, self.runtime = devices, driver, runtime
        self.memory: dict[int, tuple[str, np.ndarray]] = {}  # aligned pointer -> (kind, its bytes)
        self._blocks: dict[int, np.ndarray] = {}  # aligned pointer -> the over-allocated block that holds it
        self.queues: dict[int, list] = {}  # stream -> work not run yet
        self.capture: dict | None = None  # {"stream", "ops", "valid"} while a stream captures
        self.graphs: dict[int, list] = {}  # captured graphs not destroyed
        self.execs: dict[int, list] = {}  # instantiated graphs not destroyed
        self.launches = 0
        self.captures = 0
        self.last_error = self.cudaError_t.cudaSuccess
        self._ids = iter(range(1000, 10**9))

    def _ok(self, *results):
        return (self.cudaError_t.cudaSuccess, *results)

    def _fail(self, error, *results):
        self.last_error = error
        return (error, *results)

    def _capturing(self, stream=None) -> bool:
        return self.capture is not None and (stream is None or self.capture["stream"] == stream)

    def _refuse_during_capture(self, *results):
        """What an unsafe call made while this thread captures gets (thread-local mode): an error, and the capture
        is invalidated."""
        self.capture["valid"] = False
        return self._fail(self.cudaError_t.cudaErrorStreamCaptureUnsupported, *results)

    def _where(self, pointer: int, nbytes: int) -> str:
        for start, (kind, buffer) in self.memory.items():
            if start <= pointer and pointer + nbytes <= start + buffer.size:
                return kind
        raise AssertionError(f"{pointer:#x}+{nbytes} is outside every allocation")

    def _alloc(self, kind: str, nbytes: int):
        if self._capturing():
            return self._refuse_during_capture(0)
        block = np.full(nbytes + ALIGNMENT, 0xAB, dtype=np.uint8)  # garbage, as fresh device memory holds
        offset = -block.ctypes.data % ALIGNMENT
        buffer = block[offset : offset + nbytes]
        self.memory[buffer.ctypes.data] = (kind, buffer)
        self._blocks[buffer.ctypes.data] = block
        return self._ok(buffer.ctypes.data)

    def _free(self, pointer, kind: str):
        if self._capturing():
            return self._refuse_during_capture()
        assert self.memory.pop(pointer)[0] == kind
        del self._blocks[pointer]
        return self._ok()

    def _enqueue(self, stream, work):
        """Queue `work` on `stream`, or record it into the graph being captured there."""
        if self._capturing(stream):
            self.capture["ops"].append(work)
        else:
            self.queues.setdefault(stream, []).append(work)
        return self._ok()

    # -- devices and versions
    def cudaGetDeviceCount(self):
        if self.driver // 1000 < self.runtime // 1000:
            return self._fail(self.cudaError_t.cudaErrorInsufficientDriver, 0)
        return self._ok(self.devices) if self.devices else self._fail(self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaDriverGetVersion(self):
        return self._ok(self.driver)

    def cudaRuntimeGetVersion(self):
        return self._ok(self.runtime)

    def cudaGetDeviceProperties(self, device):
        return self._ok(types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=7))

    def cudaDeviceGetPCIBusId(self, length, device):
        return self._ok(f"0000:{0x65 + device:02x}:00.0".encode())

    def cudaSetDevice(self, device):
        return self._ok()

    def cudaGetLastError(self):
        error, self.last_error = self.last_error, self.cudaError_t.cudaSuccess
        return (error,)

    # -- streams
    def cudaStreamCreate(self):
        stream = next(self._ids)
        self.queues[stream] = []
        return self._ok(stream)

    def cudaStreamSynchronize(self, stream):
        if self._capturing(stream):
            return self._refuse_during_capture()
        work, self.queues[stream] = self.queues[stream], []
        for run in work:
            run()
        return self._ok()

    def cudaStreamDestroy(self, stream):
        assert not self.queues.pop(stream), "a stream destroyed with work not synchronized"
        return self._ok()

    def cudaStreamIsCapturing(self, stream):
        status = self.cudaStreamCaptureStatus
        if not self._capturing(stream):
            return self._ok(status.cudaStreamCaptureStatusNone)
        return self._ok(status.cudaStreamCaptureStatusActive if self.capture["valid"]
                        else status.cudaStreamCaptureStatusInvalidated)

    # -- memory
    def cudaMalloc(self, nbytes):
        return self._alloc("device", nbytes)

    def cudaMallocHost(self, nbytes):
        return self._alloc("host", nbytes)

    def cudaFree(self, pointer):
        return self._free(pointer, "device")

    def cudaFreeHost(self, pointer):
        return self._free(pointer, "host")

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        to_device = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        assert (self._where(dst, nbytes), self._where(src, nbytes)) == (("device", "host") if to_device else ("host", "device"))
        return self._enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def cudaMemsetAsync(self, pointer, value, nbytes, stream):
        assert self._where(pointer, nbytes) == "device"
        return self._enqueue(stream, lambda: ctypes.memset(pointer, value, nbytes))

    # -- graphs
    def cudaStreamBeginCapture(self, stream, mode):
        assert mode == self.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        if self.capture is not None:
            return self._fail(self.cudaError_t.cudaErrorInvalidValue)
        self.capture = {"stream": stream, "ops": [], "valid": True}
        self.captures += 1
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        if not self._capturing(stream):
            return self._fail(self.cudaError_t.cudaErrorInvalidValue, 0)
        capture, self.capture = self.capture, None
        if not capture["valid"]:
            return self._fail(self.cudaError_t.cudaErrorStreamCaptureInvalidated, 0)
        graph = next(self._ids)
        self.graphs[graph] = capture["ops"]
        return self._ok(graph)

    def cudaGraphInstantiate(self, graph, flags):
        if graph not in self.graphs:
            return self._fail(self.cudaError_t.cudaErrorInvalidValue, 0)
        executable = next(self._ids)
        self.execs[executable] = list(self.graphs[graph])
        return self._ok(executable)

    def cudaGraphLaunch(self, executable, stream):
        ops = self.execs[executable]
        self.launches += 1
        return self._enqueue(stream, lambda: [op() for op in ops])

    def cudaGraphDestroy(self, graph):
        del self.graphs[graph]
        return self._ok()

    def cudaGraphExecDestroy(self, executable):
        del self.execs[executable]
        return self._ok()


def fake_tensorrt(cudart: FakeCudart, version: str = "10.3.0", sync_in_enqueue: bool = False) -> types.ModuleType:
    """A `tensorrt` whose plans are ONNX files, run by ONNX Runtime on tensors at the bound addresses.

    execute_async_v3 queues the work on the given stream (with the shapes and addresses bound at that
    moment, as TensorRT's kernels take them), so it runs when the stream is synchronized or, under
    capture, when the graph is launched. set_tensor_address refuses a pointer that is not 256-byte
    aligned. `sync_in_enqueue`: the plan synchronizes its stream inside enqueue, as plans with some
    plugins do, which breaks a stream capture.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.nptype = lambda dtype: dtype  # the stand-in's data types already are numpy's

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return self.shapes[name]
            return (self.shapes[X][0], *self.engine.rows[name])

        def set_tensor_address(self, name, pointer):
            if pointer % ALIGNMENT:
                return False  # TensorRT logs "... must be aligned" and refuses
            self.addresses[name] = pointer
            return True

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            if sync_in_enqueue and cudart.cudaStreamSynchronize(stream_handle)[0] != cudart.cudaError_t.cudaSuccess:
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            cudart._enqueue(stream_handle, lambda: self.compute(shapes, addresses))
            return True

        def compute(self, shapes, addresses):
            engine, batch = self.engine, shapes[X][0]
            assert len(set(addresses.values())) == len(addresses), "an output aliases another tensor"

            def at(name, shape):
                dtype = engine.dtypes[name]
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                assert cudart._where(addresses[name], nbytes) == "device", f"{name} is not in device memory"
                raw = np.ctypeslib.as_array(ctypes.cast(addresses[name], ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
                return raw.view(dtype).reshape(shape)

            feeds = {name: at(name, shapes[name]).copy() for name in engine.inputs}
            for name, value in zip(engine.outputs, engine.session.run(engine.outputs, feeds), strict=True):
                at(name, (batch, *engine.rows[name]))[...] = value

    class Engine:
        def __init__(self, onnx: bytes):
            self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.dtypes = {i.name: np.dtype(ORT_TYPES[i.type]) for i in self.session.get_inputs()}
            self.rows = {i.name: tuple(i.shape[1:]) for i in self.session.get_inputs()}
            probe = {n: np.zeros((1, *self.rows[n]), self.dtypes[n]) for n in self.inputs}
            for name, value in zip(self.outputs, self.session.run(self.outputs, probe), strict=True):
                self.dtypes[name], self.rows[name] = value.dtype, value.shape[1:]
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, index):
            return (self.inputs + self.outputs)[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_shape(self, name):
            return (-1, *self.rows[name])

        def get_tensor_profile_shape(self, name, profile):
            return [(1, *self.rows[name]), (8, *self.rows[name]), (64, *self.rows[name])]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, plan):
            return Engine(plan)

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def fake_cuda(monkeypatch):
    """Installs the stand-ins: returns a function (version, devices, ...) -> the FakeCudart in use."""

    def install(version: str = "10.3.0", devices: int = 1, sync_in_enqueue: bool = False, **versions) -> FakeCudart:
        cudart = FakeCudart(devices, **versions)
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cudart, version, sync_in_enqueue))
        monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
        monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
        return cudart

    return install


def test_trt_backend_without_a_gpu_says_so(tmp_path, fake_cuda):
    bundle, _ = tiny_bundle(tmp_path / "b.seenn")
    fake_cuda(devices=0)
    with pytest.raises(UserError, match="no CUDA device was found.*backend='ort'"):
        Runtime.from_bundle(bundle, backend="trt")


@pytest.fixture(scope="module")
def digits():
    return parse_data_spec("digits").load("test")


@pytest.fixture
def fake_bundle(digits_bundle, tmp_path):
    """A copy of the digits bundle whose 'plans' are its ONNX graphs, recorded as built on the fake GPU."""
    bundle = shutil.copytree(digits_bundle, tmp_path / "digits.seenn")
    manifest = read_manifest(bundle)
    for role, rel in manifest.graphs.items():
        add_plan(bundle, (bundle / rel).read_bytes(), role=role, precision=manifest.precision,
                 gpu_name="Fake GPU", compute_capability="8.7", onnx_sha256=file_sha256(bundle / rel))
    return bundle, manifest


def test_fake_engine_refused_for_another_tensorrt_version(fake_bundle, fake_cuda):
    bundle, _ = fake_bundle
    fake_cuda(version="11.0.1")
    with pytest.raises(UserError, match=r"built with TensorRT 10\.3\.0, this machine has 11\.0\.1"):
        Runtime.from_bundle(bundle, backend="trt")


def touch_graph(path) -> None:
    """Re-save an ONNX graph with another doc string: the same computation, other bytes (as a re-export makes)."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = "re-exported"
    onnx.save(model, str(path))


def test_a_plan_built_from_an_older_graph_is_refused(fake_bundle, fake_cuda):
    from seenn_deploy.runtime.bundle import open_executors
    from seenn_deploy.runtime.executors.trt import open_trt_graphs

    bundle, manifest = fake_bundle
    fake_cuda()
    plan = find_engine(bundle, manifest, "step")
    touch_graph(bundle / "step.onnx")
    with pytest.raises(UserError, match=rf"engine {plan.name} is stale: it was built from another step\.onnx \(sha256 "
                                        rf".*re-exported since; rebuild it with `seenn-deploy build {bundle}`"):
        open_executors(bundle, manifest, "trt")
    with pytest.raises(UserError, match=r"is stale"):  # also a plan given by path (bench --engine PLAN)
        open_trt_graphs(bundle, manifest, plans={"step": plan})("step")


def test_a_plan_whose_record_names_no_graph_hash_is_refused(fake_bundle, fake_cuda):
    from seenn_deploy.runtime.bundle import open_executors

    bundle, manifest = fake_bundle
    fake_cuda()
    record = meta_path(find_engine(bundle, manifest, "step"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "onnx_sha256": ""}))
    with pytest.raises(UserError, match=r"stale: its record does not say which graph it was built from; rebuild"):
        open_executors(bundle, manifest, "trt")


def test_a_failed_open_frees_the_engines_opened_before(fake_bundle, fake_cuda):
    from seenn_deploy.runtime.bundle import open_executors

    bundle, manifest = fake_bundle
    cudart = fake_cuda()
    touch_graph(bundle / "encoder.onnx")  # the step plan opens (GPU and pinned buffers), then the encoder's is stale
    for _ in range(3):
        with pytest.raises(UserError, match=r"engine encoder\..* is stale"):
            open_executors(bundle, manifest, "trt")
    assert not cudart.memory


def test_a_bundle_named_relative_to_the_working_directory_opens(fake_bundle, fake_cuda, monkeypatch):
    from seenn_deploy.runtime.bundle import open_executors

    bundle, manifest = fake_bundle
    fake_cuda()
    monkeypatch.chdir(bundle.parent)
    with open_executors(bundle.name, manifest, "trt") as graphs:
        assert graphs.step.plan == find_engine(bundle, manifest, "step").resolve()


def test_engines_outside_the_bundle_are_refused(fake_bundle, fake_cuda, tmp_path):
    from seenn_deploy.runtime.bundle import open_executors

    bundle, manifest = fake_bundle
    fake_cuda()
    plan = find_engine(bundle, manifest, "step")
    (tmp_path / "elsewhere").mkdir()
    shutil.move(plan, tmp_path / "elsewhere" / plan.name)
    plan.symlink_to(tmp_path / "elsewhere" / plan.name)
    with pytest.raises(UserError, match=r"the step engine .* outside the bundle"):
        open_executors(bundle, manifest, "trt")
    shutil.move(bundle / ENGINES_DIR, tmp_path / "engines")
    (bundle / ENGINES_DIR).symlink_to(tmp_path / "engines")
    with pytest.raises(UserError, match=r"the engines folder .* outside the bundle"):
        open_executors(bundle, manifest, "trt")


# -- parity checks, shared by the stand-in and the GPU tests -----------------------------------
def assert_run_matches_ort(bundle, manifest, x, atol):
    from seenn_deploy.runtime.executors.trt import open_trt_graphs
    from seenn_deploy.runtime.loop import open_bundle_graphs

    open_graph = open_trt_graphs(bundle, manifest)
    with open_graph("step") as step, open_graph("encoder") as encoder:
        got = run_timesteps(manifest, step, x, encoder=encoder, batch_size=37)  # a short last batch changes shapes
    ort_step, ort_encoder = open_bundle_graphs(bundle, manifest)
    want = run_timesteps(manifest, ort_step, x, encoder=ort_encoder, batch_size=37)
    share = 1.0 if atol == 0 else 0.99
    assert_rows_close(got.logits, want.logits, atol, share, sample_axis=1)  # [T, N, K]
    assert_rows_close(got.confidence, want.confidence, atol, share, sample_axis=1)
    assert (got.prediction == want.prediction).mean() >= share


def assert_rows_close(got, want, atol, share, sample_axis=0):
    """At least `share` of the samples agree within atol everywhere. A float difference can flip a spike where a
    membrane potential sits at its threshold, and that sample then differs by more: so not all, on a real GPU."""
    assert got.shape == want.shape
    close = np.abs(got.astype(np.float64) - want) <= atol
    close = np.moveaxis(close, sample_axis, 0).reshape(close.shape[sample_axis], -1).all(axis=1)
    assert close.mean() >= share, f"{(~close).sum()} of {close.size} samples differ by more than {atol}"


def slot_schedule(batch: int, steps: int, samples: int, seed: int = 0):
    """Per step: (rows to write {slot: sample index}, reset [B]); slots restart at random, empty ones every step."""
    rng = np.random.default_rng(seed)
    plan, next_sample = [], 0
    for t in range(steps):
        reset = np.ones(batch, bool) if t == 0 else rng.random(batch) < 0.3
        reset[batch - 1] = True  # an empty slot: restarted every step, its x written once
        rows = {}
        for slot in np.flatnonzero(reset if t == 0 else reset[: batch - 1]):
            rows[int(slot)] = next_sample % samples
            next_sample += 1
        plan.append((rows, reset))
    return plan


def assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch, steps, atol):
    """The ping-pong device path gives what the numpy path (ONNX Runtime, host states) gives, step by step."""
    ort_step = OrtExecutor(bundle / manifest.graphs["step"])
    states = {s.name: np.zeros((batch, *s.shape), dtype=s.dtype) for s in manifest.states}
    x = np.zeros((batch, *manifest.step_input_shape), dtype=manifest.input.dtype)
    step.bind_states(batch)
    for rows, reset in slot_schedule(batch, steps, len(encoded)):
        for slot, sample in rows.items():
            x[slot] = encoded[sample]
        out = ort_step.run({X: x, RESET: reset, **states})
        states = {s.name: out[s.output] for s in manifest.states}
        confidence, prediction, logits = step.step_device({s: encoded[i] for s, i in rows.items()}, reset, logits=True)
        share = 1.0 if atol == 0 else 0.9
        assert_rows_close(confidence, out[CONFIDENCE], atol, share)
        assert_rows_close(logits, out[LOGITS], atol, share)
        assert (prediction == out[PREDICTION]).mean() >= share


def encode(bundle, manifest, x):
    from seenn_deploy.runtime.loop import normalise, open_bundle_graphs

    _, encoder = open_bundle_graphs(bundle, manifest)
    return encoder.run({X: normalise(manifest, x)})["encoded"]


def assert_runtime_equals_ort(bundle, x, exact):
    with Runtime.from_bundle(bundle, backend="ort", exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
        want = runtime.infer(x)
    with Runtime.from_bundle(bundle, backend="trt", exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
        got = runtime.infer(x)
    same = [(g.prediction, g.timesteps) == (w.prediction, w.timesteps) for g, w in zip(got, want, strict=True)]
    if exact:
        assert [(r.prediction, r.confidence, r.timesteps) for r in got] == \
            [(r.prediction, r.confidence, r.timesteps) for r in want]
    else:  # an exit decision may flip where a confidence sits within rounding of alpha
        assert np.mean(same) >= 0.99
        assert all(abs(g.confidence - w.confidence) < 1e-4 for g, w, s in zip(got, want, same, strict=True) if s)


# -- the executor's logic, on the stand-ins ----------------------------------------------------
@pytest.mark.parametrize("atol", [0, 1e-4])  # 1e-4: the tolerance the GPU test uses
def test_stand_in_run_matches_ort_per_step(fake_bundle, fake_cuda, digits, atol):
    bundle, manifest = fake_bundle
    fake_cuda()
    assert_run_matches_ort(bundle, manifest, digits.x[:100], atol=atol)


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_stand_in_device_states_match_the_numpy_path(fake_bundle, fake_cuda, digits, cuda_graphs):
    from seenn_deploy.runtime.executors.trt import open_trt_graphs

    bundle, manifest = fake_bundle
    cudart = fake_cuda()
    encoded = encode(bundle, manifest, digits.x[:60])
    with open_trt_graphs(bundle, manifest, cuda_graphs=cuda_graphs)("step") as step:
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=7, steps=12, atol=0)
        assert cudart.launches == (12 - 2 if cuda_graphs else 0)  # two warm-up steps, one per parity
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=5, steps=6, atol=0)  # new batch
        assert len(cudart.execs) == (4 if cuda_graphs else 0) and step.graph_error is None  # 2 per batch, kept
        assert not cudart.graphs  # the captured graphs were destroyed once instantiated
        step.run({X: encoded[:3], RESET: np.ones(3, bool),
                  **{s.name: np.zeros((3, *s.shape), s.dtype) for s in manifest.states}})
        with pytest.raises(UserError, match="bind_states"):  # run() ended the device sequence
            step.step_device(None, np.zeros(5, bool))
        captures = cudart.captures
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=7, steps=5, atol=0)  # after run()
        assert cudart.captures == captures  # the batch-7 graphs replay: their buffers are the same
    assert not cudart.memory and not cudart.execs  # close() freed every buffer and graph


def test_stand_in_runs_fp16_states_of_an_int8_fp16_bundle_exactly(digits_checkpoint, fake_cuda, digits, tmp_path):
    """int8+fp16 bundles carry their membranes as FP16 states: two-byte rows in the executor's device buffers, its
    uploads and its ping-pong graphs. The stand-in's plans are the bundle's graphs, so any byte mixed up shows."""
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
    from seenn_deploy.runtime.executors.trt import open_trt_graphs

    bundle = tmp_path / "digits.int8fp16.seenn"
    manifest = export_checkpoint(digits_checkpoint, bundle, ExportOptions(precision="int8+fp16", encoder_split="on",
                                                                           max_batch=64))
    assert {s.dtype for s in manifest.states} == {"float16", "float32"}
    for role, rel in manifest.graphs.items():
        add_plan(bundle, (bundle / rel).read_bytes(), role=role, precision=manifest.precision,
                 gpu_name="Fake GPU", compute_capability="8.7", onnx_sha256=file_sha256(bundle / rel))
    fake_cuda()
    assert_run_matches_ort(bundle, manifest, digits.x[:60], atol=0)
    encoded = encode(bundle, manifest, digits.x[:40])
    with open_trt_graphs(bundle, manifest)("step") as step:
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=7, steps=10, atol=0)
    assert_runtime_equals_ort(bundle, digits.x[:80], exact=True)


def test_stand_in_graphs_are_captured_once_per_batch_not_per_infer(fake_bundle, fake_cuda, digits):
    bundle, _ = fake_bundle
    cudart = fake_cuda()
    with Runtime.from_bundle(bundle, backend="trt", exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
        first = runtime.infer(digits.x[:80])
        assert cudart.captures == 2  # (16, parity 0) and (16, parity 1)
        launches = cudart.launches
        second = runtime.infer(digits.x[:80])
        assert cudart.captures == 2 and cudart.launches > 2 * launches - 2  # replayed from the first step on
    assert [(r.prediction, r.timesteps) for r in first] == [(r.prediction, r.timesteps) for r in second]


def test_stand_in_a_capture_the_plan_breaks_is_undone_reported_and_run_without_graphs(fake_bundle, fake_cuda, digits):
    bundle, manifest = fake_bundle
    cudart = fake_cuda(sync_in_enqueue=True)
    with pytest.warns(RuntimeWarning, match=r"CUDA graph capture failed .*invalidated|could not enqueue"):
        with Runtime.from_bundle(bundle, backend="trt", exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
            got = runtime.infer(digits.x[:80])
            assert runtime.step.graph_error and not runtime.step.cuda_graphs
            assert cudart.captures == 1 and not cudart.graphs and not cudart.execs  # nothing of it leaked
            assert cudart.cudaGetLastError()[0] == cudart.cudaError_t.cudaSuccess  # and its error was cleared
    with Runtime.from_bundle(bundle, backend="ort", exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
        want = runtime.infer(digits.x[:80])
    assert [(r.prediction, r.timesteps) for r in got] == [(r.prediction, r.timesteps) for r in want]


def test_stand_ins_enforce_what_cuda_and_tensorrt_enforce(fake_bundle, fake_cuda):
    """The rules the stand-ins keep, so the executor's tests mean something: deferred work, capture, alignment."""
    from seenn_deploy.runtime.executors.trt import open_trt_graphs

    bundle, manifest = fake_bundle
    cudart = fake_cuda()
    stream = cudart.cudaStreamCreate()[1]
    device, host = cudart.cudaMalloc(256)[1], cudart.cudaMallocHost(256)[1]
    assert device % ALIGNMENT == 0 and host % ALIGNMENT == 0
    ctypes.memset(host, 7, 4)
    cudart.cudaMemcpyAsync(device, host, 4, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    ctypes.memset(host, 9, 4)  # before the copy ran: the copy reads this
    cudart.cudaStreamSynchronize(stream)
    assert ctypes.string_at(device, 4) == b"\x09" * 4
    cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
    assert cudart.cudaStreamSynchronize(stream)[0] == cudart.cudaError_t.cudaErrorStreamCaptureUnsupported
    assert cudart.cudaStreamEndCapture(stream) == (cudart.cudaError_t.cudaErrorStreamCaptureInvalidated, 0)
    assert cudart.cudaGetLastError()[0] == cudart.cudaError_t.cudaErrorStreamCaptureInvalidated
    with open_trt_graphs(bundle, manifest)("step") as step:
        assert step.context.set_tensor_address(X, device + 16) is False  # not 256-byte aligned


def test_a_driver_older_than_the_bindings_names_both_cuda_versions(tmp_path, fake_cuda):
    bundle, _ = tiny_bundle(tmp_path / "b.seenn")
    fake_cuda(driver=12020, runtime=13000)  # a CUDA 12.2 driver (535) under cuda-python 13
    with pytest.raises(UserError, match=r"driver supports CUDA 12\.2.*cuda-python is built for CUDA 13\.0.*"
                                        r"seenn-deploy\[trt-cu12\]"):
        Runtime.from_bundle(bundle, backend="trt")


@pytest.mark.parametrize("exact", [True, False])  # False: the comparison the GPU test makes
def test_stand_in_runtime_slots_equal_ort(fake_bundle, fake_cuda, digits, exact):
    bundle, _ = fake_bundle
    fake_cuda()
    assert_runtime_equals_ort(bundle, digits.x[:200], exact=exact)


def test_stand_in_bench_target_runs_exactly_the_given_plan(fake_bundle, fake_cuda, digits):
    """`bench --engine PLAN` opens that plan for the step graph, also where the bundle holds another one."""
    from seenn_deploy.profile.target import resolve_target

    bundle, manifest = fake_bundle
    fake_cuda()
    plan = find_engine(bundle, manifest, "step")
    add_plan(bundle, b"an older build", role="step", precision=manifest.precision, gpu_name="A Fake GPU")
    assert find_engine(bundle, manifest, "step", trt_version="10.3.0", compute_capability="8.7") != plan
    with resolve_target(plan).open(exit=Confidence(ALPHA), batch=16) as runtime:
        assert runtime.step.plan == plan.resolve()
        got = runtime.infer(digits.x[:100])
    with Runtime.from_bundle(bundle, backend="ort", exit=Confidence(ALPHA), batch=16) as runtime:
        want = runtime.infer(digits.x[:100])
    assert [(r.prediction, r.timesteps) for r in got] == [(r.prediction, r.timesteps) for r in want]


# -- on a GPU with TensorRT ----------------------------------------------------------------------
def trt_and_gpu():
    """(tensorrt, gpu name, compute capability); skip where TensorRT or a GPU is absent. A machine with TensorRT and
    a GPU but no (or the wrong) cuda-python fails: that is a broken install, not a machine without the hardware."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: these tests need "
                              "pip install 'seenn-deploy[trt-cu12]' and a CUDA GPU")
    from seenn_deploy.runtime.executors.cuda_runtime import gpu_info, load_cudart

    cudart = load_cudart()  # MissingDependency here fails the test
    try:
        name, capability = gpu_info(cudart)
    except UserError as exc:
        if "no CUDA device" not in str(exc):
            raise
        pytest.skip(f"needs a CUDA GPU: {exc}")
    return trt, name, capability


def build_plan(trt, onnx_path, plan_path, max_batch):
    """A plan for `onnx_path` with one profile, batch 1..max_batch; strongly typed, no TF32 (fp32 parity)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise AssertionError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rows = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rows), (max(1, max_batch // 2), *rows), (max_batch, *rows))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, f"TensorRT could not build {onnx_path}"
    plan_path.write_bytes(bytes(plan))


@pytest.fixture(scope="module")
def trt_bundle(request, tmp_path_factory):
    """A copy of the digits bundle with real plans for its graphs (skips first, before training the model)."""
    trt, gpu_name, capability = trt_and_gpu()
    digits_bundle = request.getfixturevalue("digits_bundle")
    bundle = shutil.copytree(digits_bundle, tmp_path_factory.mktemp("trt") / "digits.seenn")
    manifest = read_manifest(bundle)
    (bundle / ENGINES_DIR).mkdir()
    for role, rel in manifest.graphs.items():
        name = engine_file_name(role, manifest.precision, gpu_name, trt.__version__)
        build_plan(trt, bundle / rel, bundle / ENGINES_DIR / name, max_batch=64)
        write_engine_meta(meta_path(bundle / ENGINES_DIR / name), EngineMeta(
            role=role, plan=name, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability,
            precision=manifest.precision, profile={"min": 1, "opt": 32, "max": 64},
            onnx_sha256=file_sha256(bundle / rel)))
    return bundle, manifest


@pytest.mark.gpu
def test_trt_run_matches_ort_per_step(trt_bundle, digits):
    bundle, manifest = trt_bundle
    assert_run_matches_ort(bundle, manifest, digits.x[:200], atol=1e-4)


@pytest.mark.gpu
def test_trt_device_states_match_the_numpy_path(trt_bundle, digits):
    from seenn_deploy.runtime.executors.trt import open_trt_graphs

    bundle, manifest = trt_bundle
    encoded = encode(bundle, manifest, digits.x[:100])
    with open_trt_graphs(bundle, manifest)("step") as step:
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=16, steps=20, atol=1e-4)
        assert_device_states_match_numpy_path(step, bundle, manifest, encoded, batch=9, steps=8, atol=1e-4)
        assert step.graph_error is None, step.graph_error


@pytest.mark.gpu
def test_trt_runtime_slots_equal_ort(trt_bundle, digits):
    bundle, _ = trt_bundle
    assert_runtime_equals_ort(bundle, digits.x[:300], exact=False)
