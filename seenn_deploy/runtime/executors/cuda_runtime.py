"""cuda-python's runtime bindings for the TensorRT paths: loading them, checking every call, and the driver and GPU.

Every call of `cuda.bindings.runtime` (or `cuda.cudart` on older 12.x releases) returns a tuple
`(cudaError_t, *results)`; `CudaCalls` raises `CudaError` unless it is cudaSuccess. cuda-python 13
needs a driver for CUDA 13 (580+): where the driver is older than the bindings, the error names
both CUDA versions and the extra that matches the driver. The bindings are imported lazily.
"""

from __future__ import annotations

from seenn_deploy.errors import MissingDependency, UserError
from seenn_deploy.lazy import require

PURPOSE = "the trt backend"
INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver, the same number in CUDA 12 and 13


class CudaError(UserError):
    """A CUDA runtime call failed (out of memory, a lost device, ...); the message names the call."""


def load_cudart(purpose: str = PURPOSE):
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+ and 13), else the older `cuda.cudart`."""
    try:
        return require("cuda.bindings.runtime", purpose)
    except MissingDependency as first:
        try:
            return require("cuda.cudart", purpose)
        except MissingDependency:
            raise first from None


class CudaCalls:
    """Calls `cudart.<name>(*args)`, raises CudaError unless it returned cudaSuccess, returns the results."""

    def __init__(self, cudart) -> None:
        self.rt = cudart
        self.success = cudart.cudaError_t.cudaSuccess

    def __call__(self, name: str, *args):
        err, *results = getattr(self.rt, name)(*args)
        if err != self.success:
            raise CudaError(f"CUDA call {name} failed: {getattr(err, 'name', err)}")
        return results[0] if len(results) == 1 else tuple(results)


def cuda_version(number: int) -> str:
    """12020 -> '12.2' (CUDA's 1000 * major + 10 * minor)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def driver_too_old(cudart) -> str | None:
    """Why the driver cannot run these bindings (naming both CUDA versions and the fix), or None when it can."""
    try:
        driver = cudart.cudaDriverGetVersion()[1]
        bindings = cudart.cudaRuntimeGetVersion()[1]
    except Exception:  # noqa: BLE001 - an old binding without these calls: nothing more to say
        return None
    if driver == 0:
        return "no NVIDIA driver is installed (cudaDriverGetVersion reports 0)"
    if driver // 1000 >= bindings // 1000:
        return None
    major = driver // 1000
    return (f"the NVIDIA driver supports CUDA {cuda_version(driver)}, but the installed cuda-python is built for CUDA "
            f"{cuda_version(bindings)}: install the bindings for the driver (pip install 'seenn-deploy[trt-cu{major}]', "
            f"which pins cuda-python {major}.x and TensorRT for CUDA {major}), or update the driver")


def gpu_info(cudart, device: int = 0, fix: str | None = None) -> tuple[str, str]:
    """(name, compute capability 'major.minor') of CUDA device `device`; UserError ending in `fix` when there is none,
    or naming the versions when the driver is too old for the bindings."""
    fix = fix or "the trt backend needs an NVIDIA GPU and its driver; on this machine use backend='ort'"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # the driver library itself is missing
        raise UserError(f"no CUDA device was found ({exc}): {fix}") from None
    if int(err) == INSUFFICIENT_DRIVER or (err != cudart.cudaError_t.cudaSuccess and driver_too_old(cudart)):
        raise UserError(driver_too_old(cudart) or "the NVIDIA driver is too old for the installed cuda-python "
                        "(cudaErrorInsufficientDriver): update the driver, or install cuda-python of the driver's "
                        "CUDA major version (pip install 'seenn-deploy[trt-cu12]')")
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise UserError(f"no CUDA device was found ({getattr(err, 'name', err)}): {fix}")
    if not 0 <= device < count:
        raise UserError(f"CUDA device {device} does not exist: this machine has {count} (0..{count - 1})")
    props = CudaCalls(cudart)("cudaGetDeviceProperties", device)
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00")[0].strip(), f"{props.major}.{props.minor}"
