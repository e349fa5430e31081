"""The torch-free runtime: load a bundle, loop timesteps, exit per sample.

Imports numpy and onnxruntime only; TensorRT, CUDA bindings and torch are imported lazily by
the executor that needs them.
"""

from seenn_deploy.runtime.api import Runtime, RuntimeClosed, WorkerFailed
from seenn_deploy.runtime.executors import Executor, OrtExecutor
from seenn_deploy.runtime.exit import Confidence, ExitPolicy, Fixed, Policy, PolicyConfidence
from seenn_deploy.runtime.loop import StepTrace, run_timesteps
from seenn_deploy.runtime.manifest import Manifest, read_manifest
from seenn_deploy.runtime.requests import Result

__all__ = ["Confidence", "Executor", "ExitPolicy", "Fixed", "Manifest", "OrtExecutor", "Policy",
           "PolicyConfidence", "Result", "Runtime", "RuntimeClosed", "StepTrace", "WorkerFailed",
           "read_manifest", "run_timesteps"]
