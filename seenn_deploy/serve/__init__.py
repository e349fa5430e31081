"""Serving past one process with Triton Inference Server: a model repository from a bundle, a server on it."""

from seenn_deploy.serve.model_repository import ModelRepository, RepositoryOptions, write_model_repository
from seenn_deploy.serve.server import Installation, Ports, TritonServer, find_installation, resolve_ports

__all__ = ["Installation", "ModelRepository", "Ports", "RepositoryOptions", "TritonServer", "find_installation",
           "resolve_ports", "write_model_repository"]
