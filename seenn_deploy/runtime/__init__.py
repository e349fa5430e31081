"""The torch-free runtime: load a bundle, loop timesteps, exit per sample.

Imports numpy and onnxruntime only; TensorRT, CUDA bindings and torch are imported lazily by
the executor that needs them.
"""

from seenn_deploy.runtime.api import Runtime
from seenn_deploy.runtime.executors import Executor, OrtExecutor
from seenn_deploy.runtime.exit import Confidence, ExitPolicy, Fixed, Policy
from seenn_deploy.runtime.loop import StepTrace, run_timesteps
from seenn_deploy.runtime.manifest import Manifest, read_manifest
from seenn_deploy.runtime.scheduler import Result

__all__ = ["Confidence", "Executor", "ExitPolicy", "Fixed", "Manifest", "OrtExecutor", "Policy", "Result", "Runtime",
           "StepTrace", "read_manifest", "run_timesteps"]
