"""ONNX Runtime executor: any execution provider list."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import Executor, TensorInfo

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
             "tensor(int32)": np.int32, "tensor(int64)": np.int64}


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
        inputs = [TensorInfo(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                             np.dtype(ORT_TYPES.get(i.type, np.float32))) for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        super().__init__(inputs, outputs, label or (Path(path).name if not isinstance(path, bytes) else "graph"))

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
