"""Torch executor: the bundle's graphs run as the source PyTorch model (the reference; CPU or CUDA).

torch is imported here only, so the rest of the runtime never needs it. The model comes from
the checkpoint the bundle was exported from (its path and weights hash are in the manifest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require
from seenn_deploy.runtime.executors.base import Executor, TensorInfo
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest


class TorchExecutor(Executor):
    """Runs `module(*inputs)` under inference_mode on `device`; numpy in, numpy out."""

    def __init__(self, module, inputs: list[TensorInfo], outputs: list[str], device: str, label: str) -> None:
        self.torch = require("torch", "the torch backend")
        self.device = self.torch.device(device)
        self.module = module.to(self.device).eval()
        super().__init__(inputs, outputs, label)

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])).to(self.device) for i in self.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.cpu().numpy() for name, t in zip(self.outputs, out)}


def open_torch_graphs(bundle: Path, manifest: Manifest, checkpoint: Path | None = None,
                      device: str = "cpu") -> Callable[[str], Executor]:
    """A factory role -> TorchExecutor for the bundle's step, encoder and policy graphs."""
    require("torch", "the torch backend")
    from seenn_deploy.export.exporter import file_sha256
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
    model = for_precision(model, manifest.precision)
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
        return TorchExecutor(step, inputs, outputs, device, "step (torch)")

    return open_graph
