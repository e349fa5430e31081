"""The Python-backend model Triton runs for a bundle: each instance embeds the project's runtime.

A repository's `NAME/1/model.py` imports `TritonPythonModel` from here, so the server's Python needs
seenn-deploy installed (with ONNX Runtime, or TensorRT for --backend trt). Requests batched by Triton
go into the runtime one sample each (`Runtime.submit`), and its slot scheduler runs them with the
bundle's exit policy: a sample that exits frees its slot for the next, across Triton's batches, since
`execute` is a coroutine (the Python backend starts the next batch while earlier ones are in flight).

Tensors cross the backend through DLPack, not `as_numpy()`/`Tensor(name, array)`: the stub's numpy
conversions read numpy 1's array layout and return garbage under numpy 2.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, X

TIMESTEPS = "timesteps"  # model_repository.TIMESTEPS (that module needs no import here)


def _pb_utils():
    import triton_python_backend_utils  # the Python backend's module: exists inside Triton's stub only

    return triton_python_backend_utils


def runtime_settings(args: dict[str, str]) -> dict[str, Any]:
    """Runtime.from_bundle's arguments from the Python backend's `initialize` args and the model's parameters."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    settings: dict[str, Any] = {
        "path": Path(args["model_repository"]) / args["model_version"] / params["bundle"],
        "backend": params.get("backend", "ort"),
        "exit": params.get("exit") or None,
        "mode": "slots",
        "batch": int(params.get("slots") or config["max_batch_size"]),
    }
    if settings["backend"] == "trt":
        settings["device"] = int(args.get("model_instance_device_id") or 0)
    elif params.get("threads"):
        settings["threads"] = int(params["threads"])
    return settings


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute (a coroutine), finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        from seenn_deploy.runtime.api import Runtime

        self.runtime = Runtime.from_bundle(**runtime_settings(args))

    async def execute(self, requests: list) -> list:
        pb_utils = _pb_utils()
        pending = []
        for request in requests:
            try:
                samples = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, X))
                pending.append([asyncio.wrap_future(self.runtime.submit(sample)) for sample in samples])
            except Exception as exc:  # a UserError for a sample the runtime refuses: this request fails alone
                pending.append(exc)
        return [await self._respond(pb_utils, futures) for futures in pending]

    @staticmethod
    async def _respond(pb_utils, futures):
        if isinstance(futures, Exception):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(futures)))
        try:
            results = await asyncio.gather(*futures)
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))
        columns = {
            PREDICTION: np.array([r.prediction for r in results], dtype=np.int32),
            CONFIDENCE: np.array([r.confidence for r in results], dtype=np.float32),
            TIMESTEPS: np.array([r.timesteps for r in results], dtype=np.int32),
        }
        return pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(name, values) for name, values in columns.items()])

    def finalize(self) -> None:
        self.runtime.close()
