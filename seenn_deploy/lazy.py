"""The one place optional heavy dependencies are imported, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from seenn_deploy.errors import MissingDependency

# module -> extra of seenn-deploy that installs it (HINTS overrides the plain hint where one extra is not the answer)
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "safetensors": "torch",
    "tqdm": "torch",
    "PIL": "images",
    "matplotlib": "plots",
    "onnxruntime": "cpu",
    "tensorrt": "trt-cu12",
    "cuda": "trt-cu12",
    "pynvml": "nvml",
    "spikingjelly": "interop",
    "snntorch": "interop",
    "nir": "nir",
    "nirtorch": "nir",
    "tritonclient": "triton",
}


TRT_EXTRAS = ("pip install 'seenn-deploy[trt-cu12]' --extra-index-url https://pypi.nvidia.com (NVIDIA driver for "
              "CUDA 12; [trt-cu13] for driver 580+, `nvidia-smi` shows the CUDA version); on Jetson, TensorRT comes "
              "with JetPack (use its system Python)")
HINTS: dict[str, str] = {
    "torch": "pip install torch==2.13.0 (the CPU build), then pip install 'seenn-deploy[torch]'",
    "onnxruntime": "pip install 'seenn-deploy[cpu]', or 'seenn-deploy[gpu-cu12]' / [gpu-cu13] for CUDA 12 / 13 "
                   "(one of them: the wheels install the same package)",
    "tensorrt": TRT_EXTRAS,
    "cuda": "pip install 'cuda-python>=12.6,<13' (NVIDIA driver for CUDA 12) or 'cuda-python>=13,<14' (driver 580+), "
            "or the extra trt-cu12 / trt-cu13 that brings it with TensorRT",
    # its package pins torchvision/torchaudio, which pull a CUDA torch
    "spikingjelly": "pip install --no-deps spikingjelly==2.0.0 loguru",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingDependency naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra = EXTRAS.get(root)
        hint = HINTS.get(root) or (f"pip install 'seenn-deploy[{extra}]'" if extra else f"pip install {root}")
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependency(f"{module} is not installed{why}: {hint}") from exc
