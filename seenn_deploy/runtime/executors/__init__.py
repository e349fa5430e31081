"""Executors: each runs one graph; the base checks inputs and times calls."""

from seenn_deploy.runtime.executors.base import Executor, TensorInfo
from seenn_deploy.runtime.executors.ort import OrtExecutor

__all__ = ["Executor", "OrtExecutor", "TensorInfo"]
