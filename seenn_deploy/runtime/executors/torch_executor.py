"""Torch executor: the bundle's graphs run as the source PyTorch model (the reference; CPU or CUDA).

torch is imported here only, so the rest of the runtime never needs it. The model comes from
the checkpoint the bundle was exported from (its path and weights hash are in the manifest).

For a slot scheduler, `open_states` keeps x, reset and the states as tensors on the executor's
device: a step uploads the new x rows and `reset` [B] and reads back `confidence` and
`prediction` [B]. On CUDA, `cuda_graphs=True` captures the step (and the in-place state
update) once per batch size and replays it, so a step is one graph launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest, StateInfo


class TorchExecutor(Executor):
    """Runs `module(*inputs)` under inference_mode on `device`; numpy in, numpy out."""

    def __init__(self, module, inputs: list[TensorInfo], outputs: list[str], device: str, label: str,
                 cuda_graphs: bool = False) -> None:
        self.torch = require("torch", "the torch backend")
        self.device = self.torch.device(device)
        self.module = module.to(self.device).eval()
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.on_device = self.device.type != "cpu"
        super().__init__(inputs, outputs, label)

    def open_states(self, batch: int, states: list[StateInfo]) -> "TorchDeviceStates":
        """Device-resident x, reset and states for `batch` slots of this step graph."""
        return TorchDeviceStates(self, batch, states)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])).to(self.device) for i in self.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.cpu().numpy() for name, t in zip(self.outputs, out)}


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

    def _forward(self):
        """One step: the head outputs, with the new states copied into the static state tensors."""
        out = self.executor.module(self.x, self.reset, *self.states)
        for state, new in zip(self.states, out[3:]):
            state.copy_(new)
        return out[0], out[1]

    def _capture(self) -> None:
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = [s.clone() for s in self.states]
        with torch.cuda.stream(stream):  # warm up outside the graph, as CUDA graph capture requires
            self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        for state, value in zip(self.states, saved):
            state.copy_(value)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.head = self._forward()

    def step(self, x_rows, reset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.executor._timed(lambda: self._step(x_rows, reset))

    def _step(self, x_rows, reset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            if isinstance(x_rows, dict) and x_rows:
                slots = torch.tensor(list(x_rows), device=self.x.device)
                rows = torch.from_numpy(np.stack(list(x_rows.values())))
                self.x.index_copy_(0, slots, rows.to(self.x.device, non_blocking=True))
                self.bytes_to_device += rows.numel() * rows.element_size()
            elif x_rows is not None and not isinstance(x_rows, dict):
                self.x.copy_(torch.from_numpy(np.ascontiguousarray(x_rows)))
                self.bytes_to_device += x_rows.nbytes
            self.reset.copy_(torch.from_numpy(np.ascontiguousarray(reset, dtype=np.bool_)))
            self.bytes_to_device += self.batch
            if self.executor.cuda_graphs:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
                confidence, prediction = self.head
            else:
                confidence, prediction = self._forward()
            confidence, prediction = confidence.cpu().numpy(), prediction.cpu().numpy()
        self.bytes_to_host += confidence.nbytes + prediction.nbytes
        return confidence, prediction

    def close(self) -> None:
        self.graph = None
        self.states = []


def open_torch_graphs(bundle: Path, manifest: Manifest, checkpoint: Path | None = None,
                      device: str = "cpu", cuda_graphs: bool = False) -> Callable[[str], Executor]:
    """A factory role -> TorchExecutor for the bundle's step, encoder and policy graphs, from the checkpoint the
    bundle records (or `checkpoint`, which must have the same weights)."""
    require("torch", "the torch backend")
    from seenn_deploy.files import file_sha256
    from seenn_deploy.export.precision import for_precision
    from seenn_deploy.export.step_module import EncoderModule, StepModule
    from seenn_deploy.snn.checkpoint import WEIGHTS_FILE, load_checkpoint, load_policy

    recorded = manifest.provenance.get("checkpoint")
    path = Path(checkpoint or recorded or "")
    if not recorded and checkpoint is None:
        raise UserError(f"{bundle} records no source checkpoint: the torch backend needs checkpoint=...")
    model, config = load_checkpoint(path)
    expected = manifest.provenance.get("checkpoint_sha256")
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if expected and file_sha256(weights) != expected:
        raise UserError(f"{path} is not the checkpoint {bundle} was exported from (weights hash differs)")
    model = for_precision(model, manifest.precision, manifest.fp32_layers, manifest.fp16_weights)
    float_dtype = np.dtype(manifest.input.dtype)

    def info(name: str, shape: tuple[int, ...], dtype=float_dtype) -> TensorInfo:
        return TensorInfo(name, (None, *shape), np.dtype(dtype))

    def open_graph(role: str) -> Executor:
        if role == "encoder":
            return TorchExecutor(EncoderModule(model), [info(X, manifest.input.shape)], ["encoded"], device, "encoder (torch)")
        if role == "policy":
            found = load_policy(path, config)
            if found is None:
                raise UserError(f"{path} has no policy network, but the bundle lists policy.onnx")
            return TorchExecutor(found[0], [info(X, manifest.input.shape)], ["scores"], device, "policy (torch)")
        step = StepModule(model, manifest.states, manifest.exit.accumulate, manifest.exit.temperature,
                          encoded=manifest.has_encoder)
        inputs = [info(X, manifest.step_input_shape), info(RESET, (), np.bool_),
                  *[info(s.name, s.shape, s.dtype) for s in manifest.states]]
        outputs = [CONFIDENCE, PREDICTION, LOGITS, *[s.output for s in manifest.states]]
        return TorchExecutor(step, inputs, outputs, device, "step (torch)", cuda_graphs=cuda_graphs)

    return open_graph
