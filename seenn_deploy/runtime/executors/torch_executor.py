"""Torch executor: the bundle's graphs run as the source PyTorch model (the reference; CPU or CUDA).

torch is imported here only, so the rest of the runtime never needs it. The modules come from the
torch side: `seenn_deploy.export.step_module` registers a `ModuleSource` (checkpoint -> modules per
role) with `register_module_source` when it is imported, and `open_torch_graphs` imports it by name
the first time, so the runtime never imports the export package.

Numerics: every call runs with TF32 off for cuDNN convolutions and matmuls (torch enables it for
cuDNN by default), so a spike whose membrane sits at its threshold fires as it does in ONNX Runtime
and in TensorRT engines, which are built without TF32.

For a slot scheduler, `open_states` keeps x, reset and the states as tensors on the executor's
device: a step uploads the new x rows and `reset` [B] and reads back `confidence` and
`prediction` [B]. On CUDA, `cuda_graphs=True` captures the step (and the in-place state update)
once per batch size and replays it, so a step is one graph launch. The executor keeps the device
states it handed out once they are closed and gives them to the next `open_states` of that batch:
a graph is captured once per batch size for the executor's life, not once per `infer()`.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo, slot_rows
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest, StateInfo

# (bundle, manifest, checkpoint or None) -> role -> torch module computing that graph
ModuleSource = Callable[[Path, Manifest, "Path | None"], Callable[[str], object]]
TORCH_SIDE = "seenn_deploy.export.step_module"  # registers the ModuleSource when imported
_SOURCE: list[ModuleSource] = []


def register_module_source(source: ModuleSource) -> None:
    """Called by the torch side: where `open_torch_graphs` gets the modules of a bundle's graphs."""
    _SOURCE[:] = [source]


def module_source() -> ModuleSource:
    if not _SOURCE:
        require("torch", "the torch backend")
        importlib.import_module(TORCH_SIDE)  # registers itself
    return _SOURCE[0]


def torch_device(torch, device: str):
    """`device` ('cpu', 'cuda', 'cuda:N') as a torch.device with an index for CUDA; UserError naming the fix."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not one the torch backend takes: use cpu, cuda or cuda:N")
    if parsed.type == "cpu":
        return parsed
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "torch finds no CUDA GPU or driver"
        raise UserError(f"device {device}: {why}; use --device cpu, or install a CUDA build of torch")
    index, count = parsed.index or 0, torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device {device} does not exist: torch sees {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


@contextlib.contextmanager
def full_fp32(torch):
    """cuDNN convolutions and matmuls in IEEE FP32 (no TF32) for the duration; the previous settings after."""
    if hasattr(torch.backends.cudnn, "conv"):  # torch 2.9+: the fp32_precision settings
        knobs = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                 (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        knobs = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in knobs]
    for owner, name, value in knobs:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(knobs, saved):
            setattr(owner, name, value)


class TorchExecutor(Executor):
    """Runs `module(*inputs)` under inference_mode, TF32 off, on `device`; numpy in, numpy out."""

    def __init__(self, module, inputs: list[TensorInfo], outputs: list[str], device: str, label: str,
                 cuda_graphs: bool = False) -> None:
        self.torch = require("torch", "the torch backend")
        self.device = torch_device(self.torch, device)
        self.module = module.to(self.device).eval()
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graph_error: str | None = None  # why CUDA graphs were turned off, if they were
        self.captures = 0  # CUDA graphs captured over the executor's life
        self.on_device = self.device.type != "cpu"
        self._free: dict[int, list[TorchDeviceStates]] = {}  # closed device states, by batch, for reuse
        self._lock = threading.Lock()
        super().__init__(inputs, outputs, label)
        if self.on_device:
            self.cuda_device = self.device.index
            self.placement = f"torch {self.device} ({self.torch.cuda.get_device_name(self.device)})"
        else:
            self.placement = "torch cpu"

    def open_states(self, batch: int, states: list[StateInfo]) -> "TorchDeviceStates":
        """Device-resident x, reset and states for `batch` slots: ones closed before (with their graph), or new."""
        with self._lock:
            kept = self._free.get(batch)
            if kept:
                return kept.pop().restart()
        return TorchDeviceStates(self, batch, states)

    def give_back(self, states: "TorchDeviceStates") -> None:
        with self._lock:
            self._free.setdefault(states.batch, []).append(states)

    def graphs_failed(self, exc: BaseException) -> None:
        """A capture failed: say why once, and run eagerly from now on (the replay of a bad graph is no option)."""
        self.cuda_graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.warn(f"{self.label}: CUDA graph capture failed ({self.graph_error}); the steps run without graphs",
                      RuntimeWarning, stacklevel=3)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])).to(self.device) for i in self.inputs]
        with torch.inference_mode(), full_fp32(torch):
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.cpu().numpy() for name, t in zip(self.outputs, out)}

    def close(self) -> None:
        with self._lock:
            self._free.clear()


class TorchDeviceStates(DeviceStates):
    """Static device tensors for x, reset and the states; the step updates the states in place."""

    def __init__(self, executor: TorchExecutor, batch: int, states: list[StateInfo]) -> None:
        torch = executor.torch
        self.executor, self.batch, self.torch = executor, batch, torch
        device = executor.device
        x_info = next(i for i in executor.inputs if i.name == X)
        self.x = torch.zeros((batch, *x_info.shape[1:]), dtype=getattr(torch, x_info.dtype.name), device=device)
        self.reset = torch.ones(batch, dtype=torch.bool, device=device)
        self.states = [torch.zeros((batch, *s.shape), dtype=getattr(torch, s.dtype), device=device) for s in states]
        self.graph = None
        self.head: tuple = ()

    def restart(self) -> "TorchDeviceStates":
        """Zeroed states and counters for a new sequence; the captured graph (same tensors) stays valid."""
        with self.torch.inference_mode():
            for state in self.states:
                state.zero_()
        self.bytes_to_device = self.bytes_to_host = 0
        return self

    def _forward(self):
        """One step: the head outputs, with the new states copied into the static state tensors."""
        out = self.executor.module(self.x, self.reset, *self.states)
        for state, new in zip(self.states, out[3:]):
            state.copy_(new)
        return out[0], out[1]

    def warm_up(self) -> None:
        """One step that writes nothing the graph reads (the states stay as they are): cuDNN and cuBLAS pick
        and load their kernels outside the capture, as capture requires."""
        self.executor.module(self.x, self.reset, *self.states)

    def _capture(self) -> None:
        torch = self.torch
        stream = torch.cuda.Stream(self.executor.device)
        stream.wait_stream(torch.cuda.current_stream(self.executor.device))
        with torch.cuda.stream(stream):
            self.warm_up()
        torch.cuda.current_stream(self.executor.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            head = self._forward()
        self.graph, self.head = graph, head  # only a capture that ended is kept
        self.executor.captures += 1

    def step(self, x, reset: np.ndarray, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x, slots = slot_rows(x, slots)
        return self.executor._timed(lambda: self._step(x, reset, slots))

    def _step(self, x: np.ndarray | None, reset: np.ndarray, slots: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        torch, executor = self.torch, self.executor
        with torch.inference_mode(), full_fp32(torch):
            if x is not None and slots is not None:  # new rows: one indexed copy
                if len(slots):
                    index = torch.from_numpy(np.asarray(slots, dtype=np.int64)).to(self.x.device)
                    self.x.index_copy_(0, index, torch.from_numpy(np.ascontiguousarray(x)).to(self.x.device))
                    self.bytes_to_device += x.nbytes
            elif x is not None:
                self.x.copy_(torch.from_numpy(np.ascontiguousarray(x)))
                self.bytes_to_device += x.nbytes
            self.reset.copy_(torch.from_numpy(np.ascontiguousarray(reset, dtype=np.bool_)))
            self.bytes_to_device += self.batch
            if executor.cuda_graphs and self.graph is None:
                try:
                    self._capture()
                except RuntimeError as exc:  # torch raises RuntimeError for CUDA errors and capture violations
                    torch.cuda.synchronize(executor.device)
                    executor.graphs_failed(exc)
            if self.graph is not None:
                self.graph.replay()
                confidence, prediction = self.head
            else:
                confidence, prediction = self._forward()
            confidence, prediction = confidence.cpu().numpy(), prediction.cpu().numpy()
        self.bytes_to_host += confidence.nbytes + prediction.nbytes
        return confidence, prediction

    def close(self) -> None:
        """Back to the executor, which hands these tensors and their graph to the next open_states of this batch."""
        self.executor.give_back(self)


def open_torch_graphs(bundle: Path, manifest: Manifest, checkpoint: Path | None = None,
                      device: str = "cpu", cuda_graphs: bool = False) -> Callable[[str], Executor]:
    """A factory role -> TorchExecutor for the bundle's step, encoder and policy graphs, from the checkpoint the
    bundle records (or `checkpoint`, which must have the same weights)."""
    torch = require("torch", "the torch backend")
    torch_device(torch, device)  # a bad device is refused before the checkpoint is read
    modules = module_source()(Path(bundle), manifest, None if checkpoint is None else Path(checkpoint))
    float_dtype = np.dtype(manifest.input.dtype)

    def info(name: str, shape: tuple[int, ...], dtype=float_dtype) -> TensorInfo:
        return TensorInfo(name, (None, *shape), np.dtype(dtype))

    def open_graph(role: str) -> Executor:
        module = modules(role)
        if role == "encoder":
            return TorchExecutor(module, [info(X, manifest.input.shape)], ["encoded"], device, "encoder (torch)")
        if role == "policy":
            return TorchExecutor(module, [info(X, manifest.input.shape)], ["scores"], device, "policy (torch)")
        inputs = [info(X, manifest.step_input_shape), info(RESET, (), np.bool_),
                  *[info(s.name, s.shape, s.dtype) for s in manifest.states]]
        outputs = [CONFIDENCE, PREDICTION, LOGITS, *[s.output for s in manifest.states]]
        return TorchExecutor(module, inputs, outputs, device, "step (torch)", cuda_graphs=cuda_graphs)

    return open_graph
