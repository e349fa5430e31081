"""ONNX Runtime executor: any execution provider list, and I/O binding for device-resident states.

`open_states` gives a slot scheduler `OrtDeviceStates`: the step graph's states live on the
session's device (GPU memory under the CUDA provider, numpy arrays on the CPU) in two sets, and
each step reads one set and writes the other (ping-pong), so only x, `reset` [B], `confidence` [B]
and `prediction` [B] cross between host and device. On the CPU every buffer is bound once, so a
step costs ONNX Runtime's run and nothing per call: no allocation, no output dict, no state copy.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo, slot_rows
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X, StateInfo

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(bool)": np.bool_, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64}
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # their I/O binding memory is "cuda"
ALIASES = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
           "openvino": "OpenVINOExecutionProvider", "rocm": "ROCMExecutionProvider", "dml": "DmlExecutionProvider",
           "coreml": "CoreMLExecutionProvider"}
GPU_INSTALL = ("pip install 'seenn-deploy[gpu-cu12]' (NVIDIA driver for CUDA 12) or 'seenn-deploy[gpu-cu13]' "
               "(driver 580+)")
Provider = Union[str, tuple[str, dict]]  # a name, or (name, provider options) as InferenceSession takes them


def onnxruntime():
    """The onnxruntime module, or MissingDependency naming the extras (cpu, gpu-cu12 or gpu-cu13: one of them)."""
    return require("onnxruntime", "ONNX Runtime graphs")


def tensor_info(arg) -> TensorInfo:
    """A graph input or output (an ort.NodeArg): symbolic or unknown dims become None; a type numpy has no match
    for, object."""
    shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, shape, np.dtype(ORT_TYPES.get(arg.type, object)))


def parse_providers(spec: str) -> list[Provider]:
    """`--providers cuda:1,cpu` -> [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"].

    Names are ONNX Runtime's (CUDAExecutionProvider) or their short forms (cuda, tensorrt, cpu, ...);
    `:N` picks the device. UserError for a name ONNX Runtime does not know, listing the short forms.
    """
    known = set(onnxruntime().get_all_providers())
    providers: list[Provider] = []
    for item in (p.strip() for p in spec.split(",")):
        name, _, device = item.partition(":")
        full = ALIASES.get(name.lower(), name)
        if full not in known:
            raise UserError(f"--providers: {item!r} is not an ONNX Runtime execution provider; use "
                            f"{', '.join(ALIASES)} (with :N for a device, e.g. cuda:1) or a full name such as {CPU}")
        if device and not device.isdigit():
            raise UserError(f"--providers: {item!r} has device {device!r}, not a number (e.g. cuda:1)")
        providers.append((full, {"device_id": device}) if device else full)
    return providers


def _name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def missing_provider_fix(name: str, available: Sequence[str]) -> str:
    """Why `name` did not load and what to do, from the wheels installed and the providers the build has."""
    if name in available:
        libraries = "TensorRT" if name == "TensorrtExecutionProvider" else "CUDA or cuDNN"
        return (f"this onnxruntime has {name} but could not load it: its {libraries} libraries are missing or do not "
                "match (ONNX Runtime's error above names the library); pip install 'onnxruntime-gpu[cuda,cudnn]' "
                "brings the CUDA and cuDNN its build needs, or run on the CPU with --providers cpu")
    if name in GPU_PROVIDERS and _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        return ("both onnxruntime and onnxruntime-gpu are installed and the CPU wheel's files won (they install the "
                f"same package): pip uninstall -y onnxruntime onnxruntime-gpu && {GPU_INSTALL}")
    if name in GPU_PROVIDERS:
        return f"this is ONNX Runtime's CPU build: pip uninstall -y onnxruntime && {GPU_INSTALL}"
    return f"this onnxruntime build has {', '.join(available)}; install the ONNX Runtime package built with {name}"


class OrtExecutor(Executor):
    """One InferenceSession. `extra_outputs` exposes intermediate tensors (verify reads spikes that way).

    `providers`: names or (name, options) in order of preference (default: the CPU). A provider asked
    for that the session did not load is a UserError with the fix: ONNX Runtime itself would fall back
    to the next one (often the CPU) and only log a warning.
    """

    def __init__(self, path: Path | bytes, providers: Sequence[Provider] | None = None, threads: int | None = None,
                 label: str | None = None) -> None:
        ort = onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        source = path if isinstance(path, bytes) else str(path)
        wanted = list(providers or [CPU])
        label = label or (Path(path).name if not isinstance(path, bytes) else "graph")
        available = ort.get_available_providers()
        for name in (n for n in map(_name, wanted) if n not in available):  # not in this build: say so before loading
            raise UserError(f"{label}: this onnxruntime has no {name} (it has {', '.join(available)}): "
                            f"{missing_provider_fix(name, available)}")
        try:
            self.session = ort.InferenceSession(source, options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            where = "the graph" if isinstance(path, bytes) else str(path)
            raise UserError(f"ONNX Runtime cannot load {where}: {str(exc).splitlines()[0]}") from None
        got = self.session.get_providers()
        for name in (n for n in map(_name, wanted) if n not in got):  # in the build, but its libraries did not load
            self.session = None
            raise UserError(f"{label}: ONNX Runtime did not load {name} (the session has {', '.join(got)}): "
                            f"{missing_provider_fix(name, available)}")
        self.providers = got
        output_infos = [tensor_info(o) for o in self.session.get_outputs()]
        super().__init__([tensor_info(i) for i in self.session.get_inputs()], [o.name for o in output_infos],
                         label, output_infos)
        first = got[0]
        self.device_type = "cuda" if first in GPU_PROVIDERS else "cpu"
        self.on_device = self.device_type != "cpu"
        self.binds_states_in_place = first == CPU  # OrtDeviceStates binds numpy buffers once (slot mode's default)
        if self.on_device:
            self.cuda_device = int(self.session.get_provider_options().get(first, {}).get("device_id", 0) or 0)
        self.placement = ", ".join(f"{p} (GPU {self.cuda_device})" if p == first and self.on_device else p for p in got)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    def close(self) -> None:
        """Drop the session, and with it the memory ONNX Runtime holds for the graph (GPU memory under CUDA)."""
        self.session = None

    def run_bound(self, binding) -> None:
        """run_with_iobinding, counted and timed like run()."""
        self._timed(lambda: self.session.run_with_iobinding(binding))

    def open_states(self, batch: int, states: list[StateInfo]) -> "OrtDeviceStates":
        """Device-resident states for `batch` slots of this step graph."""
        return OrtDeviceStates(self, batch, states)


def aligned_zeros(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    """Zeros on a 64-byte boundary, as ONNX Runtime's own allocator places tensors: with numpy's 16-byte
    alignment the Fashion-MNIST CNN's step ran about 9 % slower bound in place (one interleaved run)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(size + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + size].view(dtype).reshape(shape)


class OrtDeviceStates(DeviceStates):
    """Ping-pong state buffers, x, `reset` and the head outputs, for one slot scheduler.

    On the CPU provider every buffer is a numpy array ONNX Runtime reads and writes in place, bound
    once: two bindings (states A -> B, B -> A) that a step picks by parity, so a step is a copy of
    the new x rows and `reset` into their buffers and `run_with_iobinding`, with no allocation and
    no binding call. Under CUDA the states are OrtValues in GPU memory, bound each step, and x,
    `reset`, `confidence` and `prediction` cross between host and device.
    """

    def __init__(self, executor: OrtExecutor, batch: int, states: list[StateInfo]) -> None:
        self.executor = executor
        self.batch = batch
        self.states = states
        ort, device, device_id = onnxruntime(), executor.device_type, executor.cuda_device or 0
        x_info = next(i for i in executor.inputs if i.name == X)
        self.on_host = device == "cpu"
        zeros = aligned_zeros if self.on_host else np.zeros
        self.x_host = zeros((batch, *x_info.shape[1:]), x_info.dtype)
        self.reset_host = np.ones(batch, dtype=np.bool_)
        self.parity = 0
        if self.on_host:
            self.sets = [[zeros((batch, *s.shape), np.dtype(s.dtype)) for s in states] for _ in range(2)]
            dtypes = {o.name: o.dtype for o in executor.output_infos or []}
            self.confidence = np.zeros(batch, dtype=dtypes.get(CONFIDENCE, np.float32))
            self.prediction = np.zeros(batch, dtype=dtypes.get(PREDICTION, np.int64))
            self._values: list = []  # the OrtValues over these arrays, kept as long as the bindings that hold them
            self.bindings = [self._bind_host(ort, parity) for parity in (0, 1)]
            return
        self.sets = [[ort.OrtValue.ortvalue_from_shape_and_type((batch, *s.shape), np.dtype(s.dtype), device, device_id)
                      for s in states] for _ in range(2)]
        for info, value in zip(states, self.sets[0]):  # fresh memory may hold NaN; reset replaces values via Where
            value.update_inplace(np.zeros((batch, *info.shape), dtype=np.dtype(info.dtype)))
        self.binding = executor.session.io_binding()

    def _bind_host(self, ort, parity: int):
        """The binding that reads state set `parity` and writes the other; every buffer shared with numpy."""
        binding = self.executor.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy  # on the CPU: a view of the array, not a copy
        bound = [(X, self.x_host), (RESET, self.reset_host)]
        bound += [(info.name, current) for info, current in zip(self.states, self.sets[parity])]
        for name, array in bound:
            self._values.append(value(array))
            binding.bind_ortvalue_input(name, self._values[-1])
        outputs = [(info.output, nxt) for info, nxt in zip(self.states, self.sets[1 - parity])]
        for name, array in outputs + [(CONFIDENCE, self.confidence), (PREDICTION, self.prediction)]:
            self._values.append(value(array))
            binding.bind_ortvalue_output(name, self._values[-1])
        return binding

    def step(self, x, reset: np.ndarray, slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x, slots = slot_rows(x, slots)
        if slots is not None:
            self.x_host[slots] = x
        elif x is not None:
            self.x_host[...] = x
        if self.on_host:
            self.reset_host[...] = reset
            self.executor.run_bound(self.bindings[self.parity])
            self.parity = 1 - self.parity
            confidence, prediction = self.confidence.copy(), self.prediction.copy()  # the buffers change next step
        else:
            confidence, prediction = self._step_on_device(reset)
            self.bytes_to_device += self.x_host.nbytes + reset.size
        self.bytes_to_host += confidence.nbytes + prediction.nbytes
        return confidence, prediction

    def _step_on_device(self, reset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        read, write = self.sets[self.parity], self.sets[1 - self.parity]
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(X, self.x_host)  # one upload
        binding.bind_cpu_input(RESET, np.ascontiguousarray(reset, dtype=np.bool_))
        for info, current, nxt in zip(self.states, read, write):
            binding.bind_ortvalue_input(info.name, current)
            binding.bind_ortvalue_output(info.output, nxt)
        binding.bind_output(CONFIDENCE, "cpu")
        binding.bind_output(PREDICTION, "cpu")
        self.executor.run_bound(binding)
        self.parity = 1 - self.parity
        confidence, prediction = (v.numpy() for v in binding.get_outputs()[-2:])
        return confidence, prediction

    def close(self) -> None:
        self.sets = []
        self.bindings = []
        self._values = []
