"""What a run of the runtime amounts to: accuracy, average timesteps, exit histogram, throughput."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from seenn_deploy.runtime.scheduler import Result


@dataclass
class RunSummary:
    samples: int
    accuracy: float | None
    avg_timesteps: float
    exit_histogram: list[int]  # exit_histogram[t - 1]: samples that exited after t steps
    seconds: float
    throughput: float  # samples per second
    latency_ms_mean: float
    latency_ms_p99: float

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = []
        if self.accuracy is not None:
            lines.append(f"  accuracy          {100 * self.accuracy:.2f}%")
        lines.append(f"  average timesteps {self.avg_timesteps:.3f}")
        lines.append(f"  throughput        {self.throughput:,.0f} samples/s ({self.samples} in {self.seconds:.2f} s)")
        lines.append(f"  latency           mean {self.latency_ms_mean:.2f} ms, p99 {self.latency_ms_p99:.2f} ms")
        lines.append("  exits per timestep")
        widest = max(self.exit_histogram) or 1
        for t, n in enumerate(self.exit_histogram, start=1):
            bar = "#" * round(40 * n / widest)
            lines.append(f"    t={t:<3d} {n:>7d} {100 * n / max(self.samples, 1):6.2f}%  {bar}")
        return "\n".join(lines)


def summarise(results: list[Result], labels: np.ndarray | None, t_max: int, seconds: float) -> RunSummary:
    steps = np.array([r.timesteps for r in results])
    latency = np.array([r.latency for r in results]) * 1e3
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(np.array([r.prediction for r in results]) == labels))
    return RunSummary(
        samples=len(results), accuracy=accuracy, avg_timesteps=float(steps.mean()),
        exit_histogram=np.bincount(steps, minlength=t_max + 1)[1:].tolist(), seconds=seconds,
        throughput=len(results) / seconds if seconds > 0 else float("inf"),
        latency_ms_mean=float(latency.mean()), latency_ms_p99=float(np.percentile(latency, 99)),
    )
