"""What a run of the runtime amounts to: accuracy, average timesteps, exit histogram, throughput, time per sample.

Time per sample is split in two: service (admission to exit: what the model and the runtime
spend on the sample) and queueing (submission to admission: waiting for a batch row). An offline
run submits every sample at once, so its queueing grows with the data set and says nothing about
the model; service is the headline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from seenn_deploy.runtime.requests import Result


@dataclass
class RunSummary:
    samples: int
    accuracy: float | None
    avg_timesteps: float
    exit_histogram: list[int]  # exit_histogram[t - 1]: samples that exited after t steps
    seconds: float
    throughput: float  # samples per second
    service_ms_mean: float  # admission to exit, per sample
    service_ms_p99: float
    queue_ms_mean: float  # submission to admission, per sample
    queue_ms_p99: float

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = []
        if self.accuracy is not None:
            lines.append(f"  accuracy          {100 * self.accuracy:.2f}%")
        lines.append(f"  average timesteps {self.avg_timesteps:.3f}")
        lines.append(f"  throughput        {self.throughput:,.0f} samples/s ({self.samples} in {self.seconds:.2f} s)")
        lines.append(f"  service time      mean {self.service_ms_mean:.3f} ms, p99 {self.service_ms_p99:.3f} ms per sample "
                     "(admission to exit)")
        lines.append(f"  queueing          mean {self.queue_ms_mean:.1f} ms, p99 {self.queue_ms_p99:.1f} ms per sample "
                     "(submission to admission; all samples queue at once)")
        used = max((t for t, n in enumerate(self.exit_histogram, start=1) if n), default=1)
        rest = len(self.exit_histogram) - used
        lines.append("  exits per timestep" + (f" (none after t={used}, of {len(self.exit_histogram)})" if rest else ""))
        widest = max(self.exit_histogram) or 1
        for t, n in enumerate(self.exit_histogram[:used], start=1):
            bar = "#" * round(40 * n / widest)
            lines.append(f"    t={t:<3d} {n:>7d} {100 * n / max(self.samples, 1):6.2f}%  {bar}")
        return "\n".join(lines)


def summarise(results: list[Result], labels: np.ndarray | None, t_max: int, seconds: float) -> RunSummary:
    steps = np.array([r.timesteps for r in results])
    service = np.array([r.service for r in results]) * 1e3
    queue = np.array([r.queued for r in results]) * 1e3
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(np.array([r.prediction for r in results]) == labels))
    return RunSummary(
        samples=len(results), accuracy=accuracy, avg_timesteps=float(steps.mean()),
        exit_histogram=np.bincount(steps, minlength=t_max + 1)[1:].tolist(), seconds=seconds,
        throughput=len(results) / seconds if seconds > 0 else float("inf"),
        service_ms_mean=float(service.mean()), service_ms_p99=float(np.percentile(service, 99)),
        queue_ms_mean=float(queue.mean()), queue_ms_p99=float(np.percentile(queue, 99)),
    )
