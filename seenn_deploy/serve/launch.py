"""`serve`'s work: a bundle's model repository in a scratch folder, a Triton server on it, both gone at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from seenn_deploy.serve.model_repository import ModelRepository, RepositoryOptions, fill_repository
from seenn_deploy.serve.server import Installation, Ports, TritonServer, scratch_folder


@dataclass
class Served:
    """A running server on a bundle: the server, its repository, and why models were left out."""

    server: TritonServer
    repository: ModelRepository
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """What `serve --json` writes once the server is ready."""
        return {"endpoints": self.server.endpoints(), "ports": dataclasses.asdict(self.server.ports),
                "models": self.server.models, "python_model": self.repository.python_model,
                "pid": self.server.process.pid if self.server.process else None,
                "tritonserver": self.server.installation.source, "bundle": self.repository.bundle,
                "repository": str(self.repository.path),  # a scratch folder, removed when the server stops
                "notes": self.notes}


def models_to_load(installation: Installation, options: RepositoryOptions) -> tuple[RepositoryOptions, list[str]]:
    """The options with the step model kept only where this server can load it (and `onnx` can write it), and notes
    saying why not."""
    if not options.step_model:
        return options, []
    if not installation.has_backend("onnxruntime"):
        note = (f"the stateful step model is not served: {installation.source} has no onnxruntime backend "
                "(`seenn-deploy triton` writes it for a full Triton)")
        return dataclasses.replace(options, step_model=False), [note]
    if importlib.util.find_spec("onnx") is None:
        note = "the stateful step model is not served: writing it needs the onnx package (pip install onnx)"
        return dataclasses.replace(options, step_model=False), [note]
    return options, []


@contextlib.contextmanager
def serve_bundle(bundle: Path, options: RepositoryOptions, installation: Installation, ports: Ports,
                 address: str = "0.0.0.0", timeout: float = 120.0,
                 cancel: threading.Event | None = None) -> Iterator[Served]:
    """Generate the repository, start Triton on it and wait until every model is ready; stop it and remove the
    scratch folder when the block ends, however it ends. `cancel` set while starting: KeyboardInterrupt."""
    options, notes = models_to_load(installation, options)
    with scratch_folder("seenn-triton-") as scratch:
        root = scratch / "repository"
        root.mkdir()
        repository = fill_repository(bundle, root, options, local=True)
        server = TritonServer(installation, root, repository.models, ports, scratch, address)
        try:
            server.start()
            server.wait_ready(timeout, cancel)
            yield Served(server, repository, notes)
        finally:
            server.stop()
