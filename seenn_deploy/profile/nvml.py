"""NVML sampler (nvidia-ml-py): one GPU's energy over a run, plus power, clock and utilisation samples.

The GPU is the CUDA device the graphs run on, found in NVML by its PCI bus id: NVML numbers
GPUs in PCI order over the whole machine, CUDA numbers them fastest first and only those
CUDA_VISIBLE_DEVICES shows, so NVML index N is often not CUDA device N. The bus id comes from
cuda-python or torch, whichever is there; without either, a UUID in CUDA_VISIBLE_DEVICES or a
machine with one GPU settles it, and anything else is refused rather than guessed.

Energy comes from the GPU's total-energy counter (Volta and newer). Where the GPU has none (NVML
answers NotSupported), it is the integral of the sampled power, and the report says so.
One sampler measures any number of runs: each start() begins a new trace.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.lazy import require

NO_FIX = "use --power none, or install cuda-python (it tells NVML which GPU CUDA means)"


def cuda_bus_id(device: int) -> str | None:
    """PCI bus id ('0000:65:00.0') of CUDA device `device` from cuda-python or an imported torch; None without both."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415 - optional
    except ImportError:
        cudart = None
    if cudart is not None:
        err, bus = cudart.cudaDeviceGetPCIBusId(64, device)
        if err == cudart.cudaError_t.cudaSuccess:
            return (bus.decode() if isinstance(bus, bytes) else str(bus)).split("\x00")[0]
    torch = sys.modules.get("torch")  # only where the run already uses it: importing torch costs seconds
    if torch is not None and torch.cuda.is_available() and device < torch.cuda.device_count():
        props = torch.cuda.get_device_properties(device)
        if hasattr(props, "pci_bus_id"):
            return f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    return None


def nvml_handle(nvml, device: int):
    """(NVML handle of CUDA device `device`, how it was matched); UserError where it cannot be told."""
    bus = cuda_bus_id(device)
    if bus is not None:
        return nvml.nvmlDeviceGetHandleByPciBusId(bus), f"PCI {bus}"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and device < len(visible) and visible[device].startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(visible[device]), f"UUID {visible[device]}"
    count = nvml.nvmlDeviceGetCount()
    if device == 0 and count == 1:
        return nvml.nvmlDeviceGetHandleByIndex(0), "the only GPU"
    raise UserError(f"NVML sees {count} GPUs and cannot tell which is CUDA device {device} "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): {NO_FIX}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler:
    """Energy (mJ) of the GPU that is CUDA device `cuda_device`, and a power trace every `interval_ms`."""

    def __init__(self, cuda_device: int = 0, interval_ms: int = 50) -> None:
        self.nvml = nvml = require("pynvml", "--power nvml")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise UserError(f"NVML cannot start ({exc}): is the NVIDIA driver loaded? Use --power none") from None
        try:
            self.handle, self.matched = nvml_handle(nvml, cuda_device)
            self.gpu_name = _text(nvml.nvmlDeviceGetName(self.handle))
            self.has_counter = self._counter() is not None
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise UserError(f"NVML cannot open CUDA device {cuda_device} ({exc}): {NO_FIX}") from None
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self.cuda_device = cuda_device
        self.interval = interval_ms / 1000.0
        self.trace: list[tuple[float, float, int | None, int | None]] = []  # (s, mW, SM clock MHz, GPU util %)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_start = 0
        self._started = 0.0
        self._open = True

    def _counter(self) -> int | None:
        """The total-energy counter (mJ), or None where this GPU has none."""
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self.nvml.NVMLError as exc:
            if exc.value == self.nvml.NVML_ERROR_NOT_SUPPORTED:
                return None
            raise

    def _optional(self, call, *args) -> int | None:
        try:
            return int(call(self.handle, *args))
        except self.nvml.NVMLError:
            return None

    def _sample(self, trace: list, stop: threading.Event) -> None:
        nvml, h = self.nvml, self.handle
        while not stop.is_set():
            power = nvml.nvmlDeviceGetPowerUsage(h)
            clock = self._optional(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM)
            util = self._optional(lambda handle: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            trace.append((time.perf_counter() - self._started, float(power), clock, util))
            stop.wait(self.interval)

    def start(self) -> "NvmlSampler":
        """Begin a measurement: a new trace and counter reading (the last measurement's are dropped)."""
        if self._thread is not None:
            raise InternalError("NvmlSampler.start() while a measurement runs: call stop() first")
        self.trace, self._stop = [], threading.Event()
        self._started = time.perf_counter()
        self._energy_start = self._counter() or 0
        self._thread = threading.Thread(target=self._sample, args=(self.trace, self._stop), name="nvml-sampler",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """{source, gpu, energy_mj, mean_power_w, trace}: energy from the counter, else the power samples' integral."""
        if self._thread is None:
            raise InternalError("NvmlSampler.stop() without start()")
        end = self._counter() if self.has_counter else None
        self._stop.set()
        self._thread.join()
        self._thread = None
        trace = [{"t": t, "mw": p, "sm_mhz": c, "util": u} for t, p, c, u in self.trace]
        powers = [p["mw"] for p in trace]
        source = "nvml"
        if end is not None:
            energy = float(end - self._energy_start)
        else:
            source = "nvml (integral of sampled power: this GPU has no energy counter)"
            energy = sum((b["t"] - a["t"]) * (a["mw"] + b["mw"]) / 2 for a, b in zip(trace, trace[1:]))
        return {"source": source, "gpu": f"{self.gpu_name} (CUDA device {self.cuda_device}, {self.matched})",
                "energy_mj": energy, "mean_power_w": sum(powers) / len(powers) / 1000.0 if powers else None,
                "trace": trace}

    def close(self) -> None:
        """Stop any measurement and release NVML (its init is counted: one shutdown per sampler)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._open:
            self._open = False
            self.nvml.nvmlShutdown()
