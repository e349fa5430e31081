"""The torch-free runtime: load a bundle, loop timesteps, exit per sample.

Imports numpy and onnxruntime only; TensorRT, CUDA bindings and torch are imported lazily by
the executor that needs them.
"""

from seenn_deploy.runtime.executors import Executor, OrtExecutor
from seenn_deploy.runtime.loop import StepTrace, run_timesteps
from seenn_deploy.runtime.manifest import Manifest, read_manifest

__all__ = ["Executor", "Manifest", "OrtExecutor", "StepTrace", "read_manifest", "run_timesteps"]
