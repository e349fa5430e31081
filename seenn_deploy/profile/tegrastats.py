"""Jetson `tegrastats` power sampler: a line parser, rail choice per board family, integration.

Rails are printed as `NAME CUR/AVG` (JetPack 4: `POM_5V_IN 2345/2345`, no unit) or
`NAME CURmW/AVGmW` (JetPack 5 and 6). Both numbers are mW: CUR is the instantaneous reading and
AVG tegrastats' own running average since it started. Energy here integrates CUR over the
`time.perf_counter()` timestamps at which each line was read.

Which rail is the whole module's input, by family (what `input_rail` returns):

* Orin NX, Orin Nano, Xavier NX: `VDD_IN` (module input; `VDD_CPU_GPU_CV` and `VDD_SOC` are
  inside it).
* Nano, TX1: `POM_5V_IN`; TX2 (JetPack 4): `VDD_IN`.
* AGX Orin: none. Its rails `VDD_GPU_SOC`, `VDD_CPU_CV`, `VIN_SYS_5V0` (and
  `VDDQ_VDD2_1V8AO`) are parallel branches; `VIN_SYS_5V0` is the 5 V system branch, not the input
  (a real line reads VDD_CPU_CV 14312 mW next to VIN_SYS_5V0 4968 mW).
* AGX Xavier: none. `GPU`, `CPU`, `SOC`, `CV`, `VDDRQ`, `SYS5V` are parallel branches.

Where `input_rail` is None, `summarise` reports the sum of every listed rail as the total (what
jtop calls "tot"); that is an estimate of module power, not a measured input.

GPU rail (`gpu_rail`): `VDD_GPU_SOC` (AGX Orin: GPU + SoC), `VDD_CPU_GPU_CV` (Orin NX/Nano,
Xavier NX: CPU + GPU + CV shared), `POM_5V_GPU` (Nano), `VDD_SYS_GPU` (TX2), `GPU` (AGX Xavier),
`VDD_GPU`. Only the AGX boards have a GPU-only (or GPU + SoC) rail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Mapping, Sequence

from seenn_deploy.errors import UserError

__all__ = [
    "GPU_RAILS",
    "INPUT_RAILS",
    "TegraSample",
    "TegrastatsSampler",
    "TegrastatsUnavailable",
    "gpu_rail",
    "input_rail",
    "integrate",
    "parse_line",
    "summarise",
]

#: Module-input rails, in the order they are looked for.
INPUT_RAILS: tuple[str, ...] = ("VDD_IN", "POM_5V_IN")
#: GPU (or GPU-containing) rails, in the order they are looked for.
GPU_RAILS: tuple[str, ...] = (
    "VDD_GPU_SOC",
    "VDD_CPU_GPU_CV",
    "POM_5V_GPU",
    "VDD_SYS_GPU",
    "VDD_GPU",
    "GPU",
)

_TIMESTAMP = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")
_CPU = re.compile(r"\b(?i:CPU) \[([^\]]*)\](?:@(\d+))?")
_CPU_ENTRY = re.compile(r"^(\d+(?:\.\d+)?)%(?:@(\d+))?$")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (?:(\d+)%)?(?:@\[?(\d+)[\d,]*\]?)?")
_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (?:(\d+)%)?(?:@\[?(\d+)[\d,]*\]?)?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(
    r"(?<!\S)([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?!\S)"
)
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM"})


class TegrastatsUnavailable(UserError):
    """`tegrastats` cannot be run here (not a Jetson, or not on PATH)."""


@dataclass
class TegraSample:
    """One parsed tegrastats line. Missing fields are None (or empty)."""

    line: str
    timestamp: datetime | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    swap_cached_mb: int | None = None
    #: Per-core load in %, None for a core that is `off`.
    cpu_load_pct: list[float | None] = field(default_factory=list)
    #: Per-core frequency in MHz (older boards print one for all cores), None when unknown/off.
    cpu_freq_mhz: list[int | None] = field(default_factory=list)
    emc_pct: float | None = None
    emc_freq_mhz: int | None = None
    gr3d_pct: float | None = None
    #: First GPC's frequency where several are listed (`GR3D_FREQ 14%@[407,407]`).
    gr3d_freq_mhz: int | None = None
    temperatures: dict[str, float] = field(default_factory=dict)
    #: Rail name -> (current mW, tegrastats' running average mW).
    rails: dict[str, tuple[float, float]] = field(default_factory=dict)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def parse_line(line: str) -> TegraSample:
    """Parse one tegrastats line; unknown tokens are ignored.

    Raises ValueError when the line has neither a RAM field nor any power rail.
    """
    sample = TegraSample(line=line.rstrip("\n"))
    text = sample.line

    m = _TIMESTAMP.match(text)
    if m:
        sample.timestamp = datetime.strptime(m.group(1), "%m-%d-%Y %H:%M:%S")
    m = _RAM.search(text)
    if m:
        sample.ram_used_mb, sample.ram_total_mb = int(m.group(1)), int(m.group(2))
    m = _SWAP.search(text)
    if m:
        sample.swap_used_mb, sample.swap_total_mb = int(m.group(1)), int(m.group(2))
        sample.swap_cached_mb = _int(m.group(3))
    m = _CPU.search(text)
    if m:
        shared_freq = _int(m.group(2))
        for entry in (e.strip() for e in m.group(1).split(",")):
            em = _CPU_ENTRY.match(entry)
            if em:
                sample.cpu_load_pct.append(float(em.group(1)))
                sample.cpu_freq_mhz.append(_int(em.group(2)) if em.group(2) else shared_freq)
            elif entry:  # "off" or anything unrecognised
                sample.cpu_load_pct.append(None)
                sample.cpu_freq_mhz.append(None)
    m = _EMC.search(text)
    if m:
        sample.emc_pct, sample.emc_freq_mhz = _float(m.group(1)), _int(m.group(2))
    m = _GR3D.search(text)
    if m:
        sample.gr3d_pct, sample.gr3d_freq_mhz = _float(m.group(1)), _int(m.group(2))
    for name, value in _TEMP.findall(text):
        sample.temperatures[name] = float(value)
    for name, cur, avg in _RAIL.findall(text):
        if name not in _NOT_RAILS:
            sample.rails[name] = (float(cur), float(avg))

    if not sample.rails and sample.ram_used_mb is None:
        raise ValueError(f"not a tegrastats line (no RAM field and no power rail): {text!r}")
    return sample


def input_rail(rails: Mapping[str, object] | Iterable[str]) -> str | None:
    """The rail measuring the whole module's input, or None (AGX Orin, AGX Xavier)."""
    names = set(rails)
    return next((r for r in INPUT_RAILS if r in names), None)


def gpu_rail(rails: Mapping[str, object] | Iterable[str]) -> str | None:
    """The rail that carries the GPU (alone or shared, see the module docstring), or None."""
    names = set(rails)
    return next((r for r in GPU_RAILS if r in names), None)


def _power_series(
    samples: Sequence[tuple[float, TegraSample]], rail: str
) -> tuple[list[float], list[float]]:
    times, watts = [], []
    for t, s in samples:
        if rail in s.rails:
            times.append(float(t))
            watts.append(s.rails[rail][0])
    return times, watts


def _trapezoid(times: Sequence[float], values: Sequence[float]) -> float:
    total = 0.0
    for i in range(1, len(times)):
        dt = times[i] - times[i - 1]
        if dt < 0:
            raise ValueError(
                f"sample times go backwards at index {i}: {times[i - 1]} -> {times[i]}"
            )
        total += 0.5 * (values[i] + values[i - 1]) * dt
    return total


def integrate(samples: Sequence[tuple[float, TegraSample]], rail: str) -> float:
    """Energy in mJ on `rail`: trapezoid of its instantaneous mW over time in seconds.

    `samples` are `(seconds, TegraSample)` in time order; samples without the rail are skipped.
    Fewer than two samples carrying the rail give 0.0.
    """
    times, mw = _power_series(samples, rail)
    return _trapezoid(times, mw)


def _total_series(samples: Sequence[tuple[float, TegraSample]]) -> tuple[list[float], list[float]]:
    times, mw = [], []
    for t, s in samples:
        if s.rails:
            times.append(float(t))
            mw.append(sum(cur for cur, _ in s.rails.values()))
    return times, mw


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(samples: Sequence[tuple[float, TegraSample]]) -> dict:
    """Duration, energy (mJ) and mean power (mW) per rail, the total and GPU rails, utilisation.

    Keys: `duration_s, n_samples, energy_mj{rail}, mean_power_mw{rail}, total_rail, gpu_rail,
    total_energy_mj, total_mean_power_mw, gpu_energy_mj, gpu_mean_power_mw, gr3d_mean_pct,
    emc_mean_pct, peak_temperature_c, peak_temperature_sensor`. `total_rail` is the input rail,
    or `"sum(A+B+...)"` where the board has none and every listed rail is summed.
    Mean power is energy / duration (time-weighted); a single sample gives its reading.
    """
    if not samples:
        raise ValueError("no tegrastats samples to summarise")
    duration = float(samples[-1][0]) - float(samples[0][0])
    rail_names: list[str] = []
    for _, s in samples:
        rail_names += [r for r in s.rails if r not in rail_names]

    def mean_power(times: list[float], mw: list[float]) -> float | None:
        if not mw:
            return None
        span = times[-1] - times[0]
        return _trapezoid(times, mw) / span if span > 0 else sum(mw) / len(mw)

    energy, power = {}, {}
    for rail in rail_names:
        times, mw = _power_series(samples, rail)
        energy[rail] = _trapezoid(times, mw)
        power[rail] = mean_power(times, mw)

    total = input_rail(rail_names)
    gpu = gpu_rail(rail_names)
    if total is not None:
        total_energy, total_power = energy[total], power[total]
        total_label: str | None = total
    elif rail_names:
        times, mw = _total_series(samples)
        total_energy, total_power = _trapezoid(times, mw), mean_power(times, mw)
        total_label = "sum(" + "+".join(rail_names) + ")"
    else:
        total_energy = total_power = total_label = None

    peak_name, peak = None, None
    for _, s in samples:
        for name, c in s.temperatures.items():
            if peak is None or c > peak:
                peak_name, peak = name, c

    return {
        "duration_s": duration,
        "n_samples": len(samples),
        "energy_mj": energy,
        "mean_power_mw": power,
        "total_rail": total_label,
        "gpu_rail": gpu,
        "total_energy_mj": total_energy,
        "total_mean_power_mw": total_power,
        "gpu_energy_mj": energy.get(gpu) if gpu else None,
        "gpu_mean_power_mw": power.get(gpu) if gpu else None,
        "gr3d_mean_pct": _mean([s.gr3d_pct for _, s in samples if s.gr3d_pct is not None]),
        "emc_mean_pct": _mean([s.emc_pct for _, s in samples if s.emc_pct is not None]),
        "peak_temperature_c": peak,
        "peak_temperature_sensor": peak_name,
    }


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` and collects `(perf_counter seconds, TegraSample)` pairs.

    Use as a context manager, or `start()` / `stop()`. Lines that do not parse are counted in
    `skipped` and otherwise ignored. Power rails appear only when tegrastats can read the INA
    sensors (on some JetPacks that needs root).
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats") -> None:
        if int(interval_ms) < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        self.interval_ms = int(interval_ms)
        self.executable = executable
        self.samples: list[tuple[float, TegraSample]] = []
        self.skipped = 0
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self) -> "TegrastatsSampler":
        if self._proc is not None:
            raise RuntimeError("TegrastatsSampler already started")
        path = shutil.which(self.executable)
        if path is None:
            raise TegrastatsUnavailable(
                f"{self.executable!r} not found on PATH: this is not a Jetson, or tegrastats is "
                "not on PATH (it lives in /usr/bin on JetPack). Measure with '--power none', or "
                "'--power nvml' on a discrete NVIDIA GPU."
            )
        self.samples = []
        self.skipped = 0
        self._proc = subprocess.Popen(
            [path, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._thread = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None  # internal invariant, set in start()
        for line in proc.stdout:
            t = time.perf_counter()
            if not line.strip():
                continue
            try:
                sample = parse_line(line)
            except ValueError:
                with self._lock:
                    self.skipped += 1
                continue
            with self._lock:
                self.samples.append((t, sample))

    def stop(self, timeout: float = 5.0) -> list[tuple[float, TegraSample]]:
        """Stop tegrastats, wait for the reader, and return the samples."""
        proc, thread = self._proc, self._thread
        if proc is None:
            return self.samples
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        if thread is not None:
            thread.join(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc, self._thread = None, None
        return self.samples

    def summary(self) -> dict:
        """`summarise(self.samples)` on a snapshot of what has been read so far."""
        with self._lock:
            samples = list(self.samples)
        return summarise(samples)

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
