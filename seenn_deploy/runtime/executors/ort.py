"""ONNX Runtime executor: any execution provider list, and I/O binding for device-resident states.

`open_states` gives a slot scheduler `OrtDeviceStates`: the step graph's states live in OrtValues
on the session's device (GPU memory under the CUDA provider) in two sets, and each step reads
one set and writes the other (ping-pong), so only x, `reset` [B], `confidence` [B] and
`prediction` [B] cross between host and device. The same binding code runs on the CPU provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X, StateInfo

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(bool)": np.bool_, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def tensor_info(arg: ort.NodeArg) -> TensorInfo:
    """A graph input or output: symbolic or unknown dims become None; a type numpy has no match for, object."""
    shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, shape, np.dtype(ORT_TYPES.get(arg.type, object)))


class OrtExecutor(Executor):
    """One InferenceSession. `extra_outputs` exposes intermediate tensors (verify reads spikes that way)."""

    def __init__(self, path: Path | bytes, providers: Sequence[str] | None = None, threads: int | None = None,
                 label: str | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        source = path if isinstance(path, bytes) else str(path)
        try:
            self.session = ort.InferenceSession(source, options, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            where = "the graph" if isinstance(path, bytes) else str(path)
            raise UserError(f"ONNX Runtime cannot load {where}: {str(exc).splitlines()[0]}") from None
        output_infos = [tensor_info(o) for o in self.session.get_outputs()]
        super().__init__([tensor_info(i) for i in self.session.get_inputs()], [o.name for o in output_infos],
                         label or (Path(path).name if not isinstance(path, bytes) else "graph"), output_infos)
        provider = self.session.get_providers()[0]
        self.device_type = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.on_device = self.device_type != "cpu"

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


class OrtDeviceStates(DeviceStates):
    """Ping-pong OrtValues for the states, an OrtValue for x updated in place, head outputs to the host."""

    def __init__(self, executor: OrtExecutor, batch: int, states: list[StateInfo]) -> None:
        self.executor = executor
        self.batch = batch
        self.states = states
        device = executor.device_type
        x_info = next(i for i in executor.inputs if i.name == X)
        self.x_host = np.zeros((batch, *x_info.shape[1:]), dtype=x_info.dtype)
        self.sets = [[ort.OrtValue.ortvalue_from_shape_and_type((batch, *s.shape), np.dtype(s.dtype), device, 0)
                      for s in states] for _ in range(2)]
        for info, value in zip(states, self.sets[0]):  # fresh memory may hold NaN; reset replaces values via Where
            value.update_inplace(np.zeros((batch, *info.shape), dtype=np.dtype(info.dtype)))
        self.parity = 0
        self.binding = executor.session.io_binding()

    def step(self, x_rows, reset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(x_rows, dict):
            for slot, row in x_rows.items():
                self.x_host[slot] = row
        elif x_rows is not None:
            self.x_host[...] = x_rows
        read, write = self.sets[self.parity], self.sets[1 - self.parity]
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(X, self.x_host)  # no copy on the CPU provider; one upload under CUDA
        binding.bind_cpu_input(RESET, np.ascontiguousarray(reset, dtype=np.bool_))
        for info, current, nxt in zip(self.states, read, write):
            binding.bind_ortvalue_input(info.name, current)
            binding.bind_ortvalue_output(info.output, nxt)
        binding.bind_output(CONFIDENCE, "cpu")
        binding.bind_output(PREDICTION, "cpu")
        self.executor.run_bound(binding)
        self.parity = 1 - self.parity
        confidence, prediction = (v.numpy() for v in binding.get_outputs()[-2:])
        self.bytes_to_device += self.x_host.nbytes + reset.size if self.executor.device_type != "cpu" else 0
        self.bytes_to_host += confidence.nbytes + prediction.nbytes
        return confidence, prediction

    def close(self) -> None:
        self.sets = []
