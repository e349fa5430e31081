"""The one place optional heavy dependencies are imported, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from seenn_deploy.errors import MissingDependency

# module -> extra of seenn-deploy that installs it
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "safetensors": "torch",
    "tqdm": "torch",
    "PIL": "images",
    "matplotlib": "plots",
    "tensorrt": "trt",
    "polygraphy": "trt",
    "cuda": "trt",
    "pynvml": "nvml",
    "jtop": "jetson",
    "spikingjelly": "interop",
    "snntorch": "interop",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingDependency naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra = EXTRAS.get(root)
        hint = f"pip install 'seenn-deploy[{extra}]'" if extra else f"pip install {root}"
        if root == "torch":
            hint = "pip install torch==2.13.0 (the CPU build), then " + hint
        if root == "spikingjelly":  # its package pins torchvision/torchaudio, which pull a CUDA torch
            hint = "pip install --no-deps spikingjelly==2.0.0 loguru"
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependency(f"{module} is not installed{why}: {hint}") from exc
