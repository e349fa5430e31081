"""NVML sampler (nvidia-ml-py): the GPU's energy counter over a run, plus power, clock and utilisation samples."""

from __future__ import annotations

import threading
import time

from seenn_deploy.errors import UserError
from seenn_deploy.lazy import require


class NvmlSampler:
    """Energy (mJ) from the total-energy counter (Volta and newer), and a power trace every `interval_ms`."""

    def __init__(self, device: int = 0, interval_ms: int = 50) -> None:
        self.nvml = require("pynvml", "--power nvml")
        try:
            self.nvml.nvmlInit()
            self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device)
        except self.nvml.NVMLError as exc:
            raise UserError(f"NVML cannot open GPU {device} ({exc}): is the NVIDIA driver loaded? Use --power none") from None
        name = self.nvml.nvmlDeviceGetName(self.handle)
        self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        self.interval = interval_ms / 1000.0
        self.trace: list[tuple[float, float, int, int]] = []  # (s, mW, SM clock MHz, GPU util %)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_start = 0

    def _sample(self) -> None:
        nvml, h = self.nvml, self.handle
        start = time.perf_counter()
        while not self._stop.is_set():
            power = nvml.nvmlDeviceGetPowerUsage(h)
            clock = nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
            util = nvml.nvmlDeviceGetUtilizationRates(h).gpu
            self.trace.append((time.perf_counter() - start, float(power), int(clock), int(util)))
            self._stop.wait(self.interval)

    def start(self) -> "NvmlSampler":
        self._energy_start = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """{energy_mj, mean_power_w, trace}; the energy comes from the counter, not the samples."""
        energy = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._energy_start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        powers = [p for _, p, _, _ in self.trace]
        return {"source": "nvml", "gpu": self.gpu_name, "energy_mj": float(energy),
                "mean_power_w": sum(powers) / len(powers) / 1000.0 if powers else None,
                "trace": [{"t": t, "mw": p, "sm_mhz": c, "util": u} for t, p, c, u in self.trace]}
