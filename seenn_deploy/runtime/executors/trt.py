"""TensorRT executor: one plan, one execution context, one CUDA stream; the step graph's states can stay on the GPU.

Written against the name-based TensorRT 10 / 11 Python API (`num_io_tensors`, `get_tensor_name`,
`get_tensor_mode`, `get_tensor_profile_shape`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`) and cuda-python's runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart`
on older 12.x releases), whose every call returns a tuple `(cudaError_t, *results)`;
`cuda_runtime.CudaCalls` checks it. tensorrt and cuda are imported lazily, so the runtime imports without them.

Two ways to run a graph:

* `run(feeds)`, the Executor contract: every input goes host -> device, every output comes back.
  The schedulers use it unchanged.
* The device-state path of the step graph, for a slot scheduler on a GPU. Each state has two
  device buffers; call k reads states from one set and writes the other, call k+1 swaps their
  addresses (ping-pong), so states never cross PCIe / leave the GPU. Per step only the reset
  flags [B] and the rows of x that changed go host -> device, and only confidence [B] and
  prediction [B] (logits [B, K] on request) come back::

      ex.bind_states(B)                          # B slots; all rows restart on the first step
      reset, slots, rows = np.ones(B, bool), admitted_slots, admitted_x
      while busy:
          confidence, prediction = ex.step_device(rows, reset, slots)
          reset, slots, rows = ~occupied, None, None   # empty slots restart every step (bounded garbage)
          exited: answer them; slots, rows = their slots, the next samples; reset[slots] = True

  Static inputs are written once per sample: the rows [k, ...] of slots [k] are staged in the
  pinned buffer with one indexed copy and go to the device in one copy (the span of slots they
  cover; the rows between hold what the device has already). Event inputs pass the whole frame
  batch [B, ...] every step. With `cuda_graphs`, the enqueue of each (batch, parity) is
  captured as a CUDA graph after one warm-up call and replayed: ping-pong means two graphs per
  batch size, one per parity. The buffers live as long as the executor, so the graphs do too:
  a later sequence of the same batch (the next `infer()`) replays them without a new capture.
  `run()` ends a device sequence (it reuses the state buffers). A capture that fails (some
  plans cannot be captured) is undone (graph destroyed, CUDA's error cleared), reported once as
  a RuntimeWarning and in `graph_error`, and the executor goes on without graphs.

The cuda-python side (loading the bindings, checking calls, the driver and the GPU) is
cuda_runtime.py.
"""

from __future__ import annotations

import ctypes
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.files import file_sha256
from seenn_deploy.runtime.bundle import bundle_path
from seenn_deploy.runtime.engine_meta import (
    EngineMeta, check_engine_compat, check_engine_source, find_engine, meta_path, read_engine_meta,
)
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo, slot_rows
from seenn_deploy.runtime.executors.cuda_runtime import PURPOSE, CudaCalls, CudaError, gpu_info, load_cudart
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest

_LOGGERS: dict[int, tuple] = {}  # one TensorRT logger per process (per tensorrt module): id -> (module, logger)


def load_tensorrt(purpose: str = PURPOSE):
    """`tensorrt`, or MissingDependency naming the extras (trt-cu12, trt-cu13) and where TensorRT comes from."""
    return require("tensorrt", purpose)


def trt_logger(trt):
    """The process's one TensorRT logger (warnings and errors) for this tensorrt module."""
    module, logger = _LOGGERS.get(id(trt), (None, None))
    if module is not trt:  # the entry holds its module, so another module never reuses its id while it lives
        logger = trt.Logger(trt.Logger.WARNING)
        _LOGGERS[id(trt)] = (trt, logger)
    return logger


@dataclass
class _Tensor:
    """One engine I/O tensor: a device buffer and a pinned host staging buffer, both for the max batch."""

    name: str
    is_input: bool
    dtype: np.dtype
    rows: tuple[int, ...]  # shape without the batch dimension
    row_bytes: int
    device: int  # device pointer
    host_ptr: int  # pinned host pointer
    host: np.ndarray  # the pinned bytes as uint8 [max_batch * row_bytes]

    def view(self, batch: int) -> np.ndarray:
        return self.host[: batch * self.row_bytes].view(self.dtype).reshape(batch, *self.rows)


class TrtExecutor(Executor):
    """Runs one TensorRT plan. `states`: (input, output) name pairs of the step graph's states, for the device path."""

    def __init__(self, plan: Path, meta: EngineMeta | None = None, device: int = 0,
                 states: list[tuple[str, str]] | None = None, cuda_graphs: bool = True,
                 label: str | None = None) -> None:
        self.trt = trt = load_tensorrt()
        self.cudart = load_cudart()
        self.cuda = CudaCalls(self.cudart)
        self.device = device
        self.plan = Path(plan)
        self.label = label or self.plan.name  # Executor.__init__ sets it again; messages need it sooner
        self._lock = threading.Lock()
        self._closed = False
        self._tensors: dict[str, _Tensor] = {}
        self._graphs: dict[tuple[int, int], object] = {}
        self._warm: set[tuple[int, int]] = set()
        self.cuda_graphs = cuda_graphs
        self.graph_error: str | None = None  # why CUDA graphs were turned off, if they were
        self._seq_batch: int | None = None  # batch of the running device sequence
        self._states_owned = False  # a TrtDeviceStates is open
        self.on_device = True
        self.cuda_device = device
        self._parity = 0
        self._shape_batch: int | None = None
        gpu_name, capability = gpu_info(self.cudart, device)
        if meta is not None:
            check_engine_compat(meta, trt.__version__, gpu_name, capability)
        self.cuda("cudaSetDevice", device)
        self.runtime = trt.Runtime(trt_logger(trt))
        if meta is not None and meta.version_compatible:
            self.runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
        try:
            self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        except Exception as exc:  # some releases raise instead of returning None
            raise UserError(f"TensorRT cannot load {self.plan} ({exc}): rebuild it with `seenn-deploy build`") from None
        if self.engine is None:
            raise UserError(f"TensorRT cannot load {self.plan} (its log above says why): rebuild it with `seenn-deploy build`")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT cannot create an execution context for {self.plan}: is the GPU out of memory?")
        self.stream = self.cuda("cudaStreamCreate")  # a non-default stream: needed for graph capture
        try:
            inputs, outputs = self._discover()
            self._allocate()
            self.pairs = [(self._tensors[i], self._tensors[o]) for i, o in self._check_states(states or [])]
        except BaseException:
            self.close()
            raise
        output_infos = [TensorInfo(n, (None, *self._out_rows[n]), self._tensors[n].dtype) for n in outputs]
        super().__init__(inputs, outputs, label or self.plan.name, output_infos)
        self.placement = f"TensorRT {trt.__version__} on GPU {device} ({gpu_name})"

    # -- setup -----------------------------------------------------------------------------
    def _discover(self) -> tuple[list[TensorInfo], list[str]]:
        """Inputs, outputs and the batch range of profile 0; only dimension 0 may be dynamic."""
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.min_batch, self.max_batch = 1, None
        self._in_rows: dict[str, tuple[int, ...]] = {}
        infos = []
        for name in (n for n in names if is_input[n]):
            shape = tuple(engine.get_tensor_shape(name))
            if not shape or any(d < 0 for d in shape[1:]):
                raise UserError(f"{self.plan}: input {name} has shape {list(shape)}; only the batch dimension may be "
                                "dynamic: re-export the bundle and rebuild the engine")
            low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, 0)) if shape[0] < 0 else (shape,) * 3
            self.min_batch = max(self.min_batch, low[0])
            self.max_batch = high[0] if self.max_batch is None else min(self.max_batch, high[0])
            self._in_rows[name] = shape[1:]
            infos.append(TensorInfo(name, (None if shape[0] < 0 else shape[0], *shape[1:]), self._np_dtype(name)))
        if self.max_batch is None:
            raise UserError(f"{self.plan} has no inputs: it is not a seenn-deploy graph")
        self._set_shapes(self.max_batch)
        self._out_rows = {}
        for name in (n for n in names if not is_input[n]):
            shape = tuple(self.context.get_tensor_shape(name))
            if not shape or shape[0] != self.max_batch or any(d < 0 for d in shape):
                raise UserError(f"{self.plan}: output {name} has shape {list(shape)} at batch {self.max_batch}; "
                                "outputs must be batch-first with static rows: rebuild the engine")
            self._out_rows[name] = shape[1:]
        return infos, [n for n in names if not is_input[n]]

    def _np_dtype(self, name: str) -> np.dtype:
        kind = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self.trt.nptype(kind))
        except TypeError:
            raise UserError(f"{self.plan}: tensor {name} is {kind}, which numpy cannot hold: "
                            "export the bundle with fp32 or fp16 inputs and outputs") from None

    def _allocate(self) -> None:
        engine, cuda = self.engine, self.cuda
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = name in self._in_rows
            dtype = self._np_dtype(name)
            shape = self._in_rows[name] if is_input else self._out_rows[name]
            row_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = max(row_bytes * self.max_batch, 1)
            device_ptr = int(cuda("cudaMalloc", size))
            host_ptr = int(cuda("cudaMallocHost", size))
            host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_uint8)), (size,))
            self._tensors[name] = _Tensor(name, is_input, dtype, tuple(shape), row_bytes, device_ptr, host_ptr, host)

    def _check_states(self, states: list[tuple[str, str]]) -> list[tuple[str, str]]:
        fixed = [n for n in (X, RESET, CONFIDENCE, PREDICTION) if n not in self._tensors] if states else []
        if fixed:
            raise UserError(f"{self.plan} has no tensor {fixed[0]}: it is not the bundle's step graph; "
                            "rebuild it with `seenn-deploy build`")
        for pair in states:
            missing = [n for n in pair if n not in self._tensors]
            if missing:
                raise UserError(f"{self.plan} has no tensor {missing[0]}: the engine does not match the bundle; "
                                "rebuild it with `seenn-deploy build`")
            a, b = (self._tensors[n] for n in pair)
            if (a.rows, a.dtype) != (b.rows, b.dtype) or not a.is_input or b.is_input:
                raise UserError(f"{self.plan}: state {pair[0]} and {pair[1]} differ in shape, dtype or direction: "
                                "the engine does not match the bundle; rebuild it with `seenn-deploy build`")
        return states

    # -- shared helpers --------------------------------------------------------------------
    def _set_shapes(self, batch: int) -> None:
        if self._shape_batch == batch:
            return
        for name, rows in self._in_rows.items():
            if self.context.set_input_shape(name, (batch, *rows)) is False:
                raise UserError(f"{self.label}: TensorRT refused batch {batch} for input {name}")
        self._shape_batch = batch

    def _check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(f"{self.label}: batch {batch} is outside the engine's profile {self.min_batch}.."
                            f"{self.max_batch}: use a smaller --batch or rebuild with a larger max batch")

    def _address(self, name: str, pointer: int) -> None:
        if self.context.set_tensor_address(name, pointer) is False:
            raise UserError(f"{self.label}: TensorRT refused the buffer of {name}")

    def _copy(self, dst: int, src: int, nbytes: int, to_device: bool) -> None:
        kinds = self.cudart.cudaMemcpyKind
        kind = kinds.cudaMemcpyHostToDevice if to_device else kinds.cudaMemcpyDeviceToHost
        self.cuda("cudaMemcpyAsync", dst, src, nbytes, kind, self.stream)

    def _upload(self, tensor: _Tensor, value: np.ndarray, row: int = 0) -> None:
        """Stage `value` (rows from `row` on) in pinned memory and queue its copy to the device."""
        data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        start = row * tensor.row_bytes
        tensor.host[start : start + data.size] = data
        self._copy(tensor.device + start, tensor.host_ptr + start, data.size, True)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise UserError(f"{self.label}: TensorRT could not run the plan (its log above says why)")

    def _use_device(self) -> None:
        if self.device != 0:  # the current device is per thread; callers may come from a worker thread
            self.cuda("cudaSetDevice", self.device)

    # -- the Executor contract: numpy in, numpy out ----------------------------------------
    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self._end_sequence()
            batch = len(next(iter(feeds.values())))
            self._check_batch(batch)
            self._use_device()
            self._set_shapes(batch)
            for tensor in self._tensors.values():
                if tensor.is_input:
                    self._upload(tensor, feeds[tensor.name])
                self._address(tensor.name, tensor.device)
            self._enqueue()
            outputs = [self._tensors[n] for n in self.outputs]
            for tensor in outputs:
                self._copy(tensor.host_ptr, tensor.device, batch * tensor.row_bytes, False)
            self.cuda("cudaStreamSynchronize", self.stream)
            return {t.name: t.view(batch).copy() for t in outputs}

    # -- the device-state path of the step graph -------------------------------------------
    def open_states(self, batch: int, states=None) -> "TrtDeviceStates":
        """The device path for one slot scheduler; the plan's state buffers serve one at a time."""
        with self._lock:
            if self._states_owned:
                raise UserError(f"{self.label}: another slot scheduler holds this engine's device states; use either "
                                "infer() or submit() on one Runtime, or open a second Runtime")
            self._states_owned = True
        try:
            self.bind_states(batch)
        except BaseException:  # e.g. a batch above the plan's profile: the states stay free for the next caller
            with self._lock:
                self._states_owned = False
            raise
        return TrtDeviceStates(self, batch)

    def release_states(self) -> None:
        with self._lock:
            self._states_owned = False
            self._end_sequence()

    def bind_states(self, batch: int) -> None:
        """Start a device-resident sequence of `batch` slots; states are zeroed, `reset` gives them their init."""
        with self._lock:
            if not self.pairs:
                raise UserError(f"{self.label}: device states need the step graph's state names (states=...)")
            self._check_batch(batch)
            self._use_device()
            self._set_shapes(batch)
            state_names = {t.name for pair in self.pairs for t in pair}
            for tensor in self._tensors.values():
                if tensor.name not in state_names:  # x, reset and the head outputs keep their own buffers
                    self._address(tensor.name, tensor.device)
            for a, b in self.pairs:
                for tensor in (a, b):
                    self.cuda("cudaMemsetAsync", tensor.device, 0, batch * tensor.row_bytes, self.stream)
            self.cuda("cudaStreamSynchronize", self.stream)
            self._seq_batch, self._parity = batch, 0

    def step_device(self, x: np.ndarray | None, reset: np.ndarray, slots: np.ndarray | None = None,
                    logits: bool = False) -> tuple[np.ndarray, ...]:
        """One step of the bound slots: (confidence [B], prediction [B]) (+ logits [B, K] if asked).

        x: the rows [k, ...] of `slots` [k] whose input changed, a full batch [B, ...] when slots is
        None (events), or None; other slots keep the x already on the device. reset [B] bool: rows to restart.
        """
        x, slots = slot_rows(x, slots)
        started = time.perf_counter()
        with self._lock:
            batch = self._seq_batch
            if batch is None:
                raise UserError(f"{self.label}: call bind_states(batch) before step_device (run() ends a sequence)")
            reset = np.asarray(reset)
            if reset.shape != (batch,):
                raise UserError(f"{self.label}: reset has shape {list(reset.shape)}, the bound batch is [{batch}]")
            self._use_device()
            self._write_x(x, slots, batch)
            self._upload(self._tensors[RESET], reset.astype(self._tensors[RESET].dtype, copy=False))
            src, dst = (0, 1) if self._parity == 0 else (1, 0)
            for pair in self.pairs:
                self._address(pair[0].name, pair[src].device)
                self._address(pair[1].name, pair[dst].device)
            self._enqueue_step(batch)
            wanted = [CONFIDENCE, PREDICTION] + ([LOGITS] if logits else [])
            for name in wanted:
                tensor = self._tensors[name]
                self._copy(tensor.host_ptr, tensor.device, batch * tensor.row_bytes, False)
            self.cuda("cudaStreamSynchronize", self.stream)
            self._parity ^= 1
            self.calls, self.seconds = self.calls + 1, self.seconds + time.perf_counter() - started
            return tuple(self._tensors[name].view(batch).copy() for name in wanted)

    def _write_x(self, x: np.ndarray | None, slots: np.ndarray | None, batch: int) -> None:
        """Stage x in pinned memory and queue one copy: the whole batch, or the span of rows `slots` covers.

        Every write of x to the device goes through the staging buffer, so the rows of the span
        that are not in `slots` hold what the device holds, and copying them changes nothing.
        """
        tensor = self._tensors[X]
        if x is None:
            return
        x = np.asarray(x)
        if slots is None:
            if x.shape != (batch, *tensor.rows) or x.dtype != tensor.dtype:
                raise UserError(f"{self.label}: x is {list(x.shape)} {x.dtype.name}, expected "
                                f"{[batch, *tensor.rows]} {tensor.dtype.name}")
            self._upload(tensor, x)
            return
        slots = np.asarray(slots, dtype=np.int64)
        if (x.shape != (len(slots), *tensor.rows) or x.dtype != tensor.dtype
                or (len(slots) and not (0 <= slots.min() and slots.max() < batch))):
            raise UserError(f"{self.label}: x rows are {list(x.shape)} {x.dtype.name} for {len(slots)} slots, expected "
                            f"[{len(slots)}, {', '.join(map(str, tensor.rows))}] {tensor.dtype.name} in slots "
                            f"0..{batch - 1}")
        if not len(slots):
            return
        tensor.view(batch)[slots] = x
        low, high = int(slots.min()), int(slots.max()) + 1
        start = low * tensor.row_bytes
        self._copy(tensor.device + start, tensor.host_ptr + start, (high - low) * tensor.row_bytes, True)

    def _enqueue_step(self, batch: int) -> None:
        """Plain enqueue the first time a (batch, parity) runs; capture it as a CUDA graph the second; replay after."""
        key = (batch, self._parity)
        if not self.cuda_graphs:
            self._enqueue()
            return
        graph = self._graphs.get(key)
        if graph is None and key in self._warm:
            graph = self._capture()
            if graph is not None:
                self._graphs[key] = graph
        if graph is not None:
            self.cuda("cudaGraphLaunch", graph, self.stream)
        else:
            self._enqueue()
            self._warm.add(key)

    def _capture(self):
        """An instantiated CUDA graph of one enqueue with the current shapes and addresses, or None: then graphs are
        off from here on, `graph_error` says why (also in a RuntimeWarning), and nothing of the capture is left
        (the partial graph is destroyed, the stream is out of capture mode, CUDA's last error is cleared)."""
        rt, graph = self.cudart, None
        try:
            self.cuda("cudaStreamBeginCapture", self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            try:
                ok = self.context.execute_async_v3(int(self.stream))
            finally:  # ends the capture whatever happened; an invalidated capture gives no graph and an error
                err, graph = rt.cudaStreamEndCapture(self.stream)
            if not ok:
                raise CudaError("TensorRT could not enqueue the plan under stream capture (its log above says why)")
            if err != rt.cudaError_t.cudaSuccess:
                raise CudaError(f"the capture was invalidated ({getattr(err, 'name', err)}): the plan's enqueue does "
                                "something a CUDA graph cannot hold")
            return self.cuda("cudaGraphInstantiate", graph, 0)
        except CudaError as exc:
            rt.cudaGetLastError()  # capture errors are not sticky: clear them so the next call does not report them
            self.cuda_graphs, self.graph_error = False, str(exc)
            warnings.warn(f"{self.label}: CUDA graph capture failed ({exc}); the steps run without graphs",
                          RuntimeWarning, stacklevel=4)
            return None
        finally:
            if graph is not None and int(graph):  # an invalidated capture returns a NULL graph
                rt.cudaGraphDestroy(graph)

    def _drop_graphs(self) -> None:
        for executable in self._graphs.values():
            self.cudart.cudaGraphExecDestroy(executable)
        self._graphs.clear()
        self._warm.clear()

    def _end_sequence(self) -> None:
        """The state buffers are about to be overwritten; the graphs stay valid (same buffers) and are kept."""
        self._seq_batch = None

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Free graphs, buffers and the stream, then the context, engine and runtime (in that order)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            rt = self.cudart
            if hasattr(self, "stream"):
                rt.cudaStreamSynchronize(self.stream)
            self._drop_graphs()
            for tensor in self._tensors.values():
                rt.cudaFree(tensor.device)
                rt.cudaFreeHost(tensor.host_ptr)
            self._tensors.clear()
            if hasattr(self, "stream"):
                rt.cudaStreamDestroy(self.stream)
            self.context = self.engine = self.runtime = None


class TrtDeviceStates(DeviceStates):
    """The slot scheduler's handle on the executor's ping-pong state buffers."""

    def __init__(self, executor: TrtExecutor, batch: int) -> None:
        self.executor = executor
        self.batch = batch

    def step(self, x, reset: np.ndarray, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        confidence, prediction = self.executor.step_device(x, reset, slots)[:2]
        return confidence, prediction

    def close(self) -> None:
        self.executor.release_states()


def open_trt_graphs(bundle: Path, manifest: Manifest, precision: str | None = None, device: int = 0,
                    cuda_graphs: bool = True, plans: dict[str, Path] | None = None) -> Callable[[str], Executor]:
    """A factory role -> TrtExecutor over the plans in `bundle/engines/` that load on this machine.

    plans: role -> a given plan to use for that role (`bench --engine PLAN`); other roles are found.
    A plan (and its record) must lie inside the bundle, and its record's onnx_sha256 must be the hash
    of the bundle's graph for the role now: a plan built before a re-export is refused.
    """
    trt = load_tensorrt()
    cudart = load_cudart()
    gpu_name, capability = gpu_info(cudart, device)

    def open_graph(role: str) -> Executor:
        graph_hash = file_sha256(bundle_path(bundle, manifest.graphs[role], f"the {role} graph"))
        given = (plans or {}).get(role)
        plan = Path(given) if given else find_engine(bundle, manifest, role, precision, trt.__version__, gpu_name,
                                                     capability, onnx_sha256=graph_hash)
        plan = bundle_path(bundle, plan.resolve(), f"the {role} engine")  # plan: a path from here, not from bundle
        meta = read_engine_meta(bundle_path(bundle, meta_path(plan), f"the record of the {role} engine"))
        if meta.role != role:
            raise UserError(f"{plan} is a {meta.role} engine (its record says so), not the {role} engine")
        check_engine_source(meta, graph_hash, manifest.graphs[role], bundle)
        states = [(s.name, s.output) for s in manifest.states] if role == "step" else []
        return TrtExecutor(plan, meta, device, states, cuda_graphs, f"{role} (trt)")

    return open_graph
