"""`bench`: latency, throughput, early-exit gain and energy of a bundle, plan or lone step graph on this machine.

Every figure comes from one process and one data set: the exit policy under test and, with
`compare_fixed`, Fixed(T_max) on the same samples, so the speedup and its share of the ideal
T_max / avg T are measured, not assumed. Per-sample latency is the service time, from the step
that admits a sample to the step it exits in (queueing excluded); per-step times come from the
step executor. What runs is a `BenchTarget` (profile/target.py): a bundle, a plan in its bundle, or
a lone ONNX step graph.

Measurements run in steady state, as a server does: one continuous stream that cycles through the
data, its queue never empty, so every step runs a full batch. Replaying the data in passes would
drain the batch at the end of each pass (on a small data set, a large share of the steps run
nearly empty while the slowest samples finish) and charge that to early exit. The timed window
starts after the warm-up, with the batch already full, and ends without a drain.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.profile.latency import DEFAULT_PERCENTILES, LatencyStats
from seenn_deploy.profile.target import BenchTarget, resolve_target
from seenn_deploy.runtime.api import Runtime
from seenn_deploy.runtime.exit import Fixed
from seenn_deploy.runtime.requests import Answered, Requests

POWER = ("auto", "nvml", "tegrastats", "none")
CLOCKS = ("wall", "cpu")


@dataclass
class BenchSettings:
    backend: str | None = None  # None: the target's default (trt for a plan, else ort)
    batch: int = 64
    mode: str = "slots"
    exit: str | None = None
    warmup_s: float = 0.2
    duration_s: float = 3.0
    iterations: int | None = None  # answer this many passes' worth of samples; overrides duration_s
    percentiles: Sequence[float] = DEFAULT_PERCENTILES
    compare_fixed: bool = False
    power: str = "auto"
    clock: str = "wall"  # what the speedup compares: wall seconds, or the calling thread's CPU seconds

    def check(self) -> None:
        if self.power not in POWER:
            raise UserError(f"--power {self.power!r} is not one of {', '.join(POWER)}")
        if self.clock not in CLOCKS:
            raise UserError(f"--clock {self.clock!r} is not one of {', '.join(CLOCKS)}")
        if self.duration_s <= 0 or self.warmup_s < 0 or (self.iterations is not None and self.iterations < 1):
            raise UserError("--duration-s must be > 0, --warmup-ms >= 0 and --iterations >= 1")


@dataclass
class Measurement:
    exit: str
    samples: int
    passes: float  # samples answered / data set size
    seconds: float
    throughput: float  # samples / s
    cpu_seconds: float  # the calling thread's CPU time over the window
    avg_timesteps: float
    exit_histogram: list[int]
    accuracy: float | None
    latency: dict  # LatencyStats.to_dict(), per sample service time
    latency_histogram: dict  # {"edges_ms": [...], "counts": [...]}
    steps: int
    step_ms: float  # mean step-executor time per step
    encoder_ms_per_sample: float  # encoder (and policy) time, once per sample
    host_ms_per_step: float  # wall time per step outside the executors
    power: dict | None = None


@dataclass
class BenchReport:
    bundle: str
    backend: str
    device: str  # where the step graph ran (the executor's placement)
    mode: str
    batch: int
    data: str
    t_max: int
    runs: list[Measurement]
    speedup: float | None = None
    clock: str = "wall"
    ideal_speedup: float | None = None
    share_of_ideal: float | None = None
    energy_estimate: dict | None = None
    policy_cost: dict | None = None  # SEENN-II: profile/policy_cost.py, when the bundle has a policy
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"{self.bundle}: {self.backend} on {self.device}, {self.mode} mode, batch {self.batch}, {self.data}"]
        for run in self.runs:
            lines += [f"=== {run.exit} ===",
                      f"Throughput: {run.throughput:,.1f} samples/s ({run.samples} samples in {run.seconds:.3f} s, "
                      f"{run.passes:.3g} passes over the data, steady state)",
                      "Latency (per sample, admission to exit): " + ", ".join(
                          f"{k[:-3]} = {v:.4g} ms" for k, v in run.latency.items() if k.endswith("_ms")),
                      f"Steps: {run.steps}, compute {run.step_ms:.4g} ms/step, host {run.host_ms_per_step:.4g} ms/step, "
                      f"encoder {run.encoder_ms_per_sample:.4g} ms/sample",
                      f"Average timesteps: {run.avg_timesteps:.3f}  exits per t: {run.exit_histogram}"]
            if run.accuracy is not None:
                lines.append(f"Accuracy: {100 * run.accuracy:.2f}%")
            if run.power:
                lines.append(f"Energy ({run.power['source']}): {run.power['energy_mj']:.1f} mJ, "
                             f"{run.power['energy_mj'] / run.samples:.4g} mJ per sample")
        if self.speedup is not None:
            timed = " (thread CPU time)" if self.clock == "cpu" else ""
            lines.append(f"Speedup over Fixed({self.t_max}){timed}: {self.speedup:.2f}x of ideal "
                         f"{self.ideal_speedup:.2f}x ({100 * self.share_of_ideal:.1f}% of ideal)")
        if self.energy_estimate:
            lines.append(f"Estimated energy (4.6 pJ/MAC, 0.9 pJ/SOP): {self.energy_estimate['total_uj_per_sample']:.4f} uJ "
                         f"per sample at {self.energy_estimate['avg_timesteps']:.3f} timesteps")
        if self.policy_cost:
            from seenn_deploy.profile.policy_cost import policy_cost_line

            lines.append(policy_cost_line(self.policy_cost))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = ["| exit | samples/s | mean ms | p99 ms | avg T | accuracy | ms/step | mJ/sample |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.runs:
            acc = "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
            energy = "" if not r.power else f"{r.power['energy_mj'] / r.samples:.4g}"
            rows.append(f"| {r.exit} | {r.throughput:,.0f} | {r.latency['mean_ms']:.3f} | {r.latency.get('p99_ms', float('nan')):.3f} "
                        f"| {r.avg_timesteps:.3f} | {acc} | {r.step_ms:.3f} | {energy} |")
        head = f"# seenn-deploy bench: {self.bundle}\n\n{self.backend} on {self.device}, {self.mode} mode, batch {self.batch}, {self.data}\n\n"
        tail = ""
        if self.speedup is not None:
            tail += f"\nSpeedup over Fixed({self.t_max}): **{self.speedup:.2f}x** ({100 * self.share_of_ideal:.1f}% of the ideal {self.ideal_speedup:.2f}x)\n"
        if self.energy_estimate:
            tail += f"\nEstimated energy: {self.energy_estimate['total_uj_per_sample']:.4f} uJ per sample\n"
        if self.policy_cost:
            from seenn_deploy.profile.policy_cost import policy_cost_line

            tail += f"\n{policy_cost_line(self.policy_cost)}\n"
        return head + "\n".join(rows) + "\n" + tail


def open_power(kind: str, cuda_device: int | None):
    """A sampler with start()/stop() -> dict and close(), or None for 'none'.

    cuda_device: the GPU the step graph runs on (None: the CPU). 'nvml' samples that GPU and refuses
    a CPU run; 'tegrastats' samples a Jetson's rails (the whole module, CPU included); 'auto' takes
    tegrastats on a Jetson, NVML where the graph runs on a GPU and NVML loads, else nothing.
    """
    if kind == "none":
        return None
    if kind == "tegrastats" or (kind == "auto" and shutil.which("tegrastats")):
        from seenn_deploy.profile.tegrastats import TegrastatsSampler

        return _TegraPower(TegrastatsSampler())
    from seenn_deploy.profile.nvml import NvmlSampler

    if kind == "nvml":
        if cuda_device is None:
            raise UserError("--power nvml measures a GPU, but this run's step graph runs on the CPU: use --power none, "
                            "or a GPU backend (--providers cuda, --device cuda:0, --backend trt)")
        return NvmlSampler(cuda_device)
    if cuda_device is None:
        return None
    try:  # auto: NVML only when it loads and finds the GPU
        return NvmlSampler(cuda_device)
    except UserError:
        return None


class _TegraPower:
    """Adapts TegrastatsSampler to start()/stop() -> {source, energy_mj, ...}."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def start(self):
        self.sampler.start()
        return self

    def stop(self) -> dict:
        self.sampler.stop()
        summary = self.sampler.summary()
        return {"source": f"tegrastats ({summary['total_rail']})", "energy_mj": float(summary["total_energy_mj"] or 0.0),
                "summary": summary}

    def close(self) -> None:
        self.sampler.stop()


@dataclass
class Stream:
    """What a steady-state stream answered in its timed window, in answer order: the data row each
    answer is for (`rows` [n]), its prediction, timesteps and service seconds [n]; wall seconds, step
    and once-per-sample executor seconds, and the power sampler's report, all over the window.
    `cpu_seconds` is the calling thread's CPU time in the window: with an executor that computes in
    that thread (ORT with one thread), the work itself, unaffected by whatever else the machine runs.

    Answers are kept as the scheduler's arrays (`Answered`), not as a Result object each: what is
    timed is the runtime's work per step, not the building of objects a server would hand out."""

    rows: np.ndarray
    prediction: np.ndarray
    timesteps: np.ndarray
    service: np.ndarray
    seconds: float
    steps: int
    step_seconds: float
    once_seconds: float
    cpu_seconds: float
    power: dict | None = None


def steady_stream(runtime: Runtime, prepared: np.ndarray, answers: int | None = None, seconds: float | None = None,
                  warmup_s: float = 0.0, power=None) -> Stream:
    """Stream normalised samples [N, ...] through one scheduler, cycling through them, until `answers`
    samples are answered (exactly that many are kept) or `seconds` have passed (and one was answered).

    The queue is topped up with another pass whenever it holds less than a batch, so no step waits
    for samples and none runs a draining batch. `warmup_s` of the same stream runs before the window.
    """
    if answers is None and seconds is None:
        raise InternalError("steady_stream needs a number of answers or a duration")
    scheduler = runtime.new_scheduler()
    rows = np.arange(len(prepared))
    once = [e for e in (runtime.encoder, runtime.policy) if e is not None]
    blocks: list[Answered] = []
    count = 0

    def tick() -> None:
        nonlocal count
        while len(scheduler.pending) < runtime.batch:
            scheduler.add(Requests.of(prepared, rows))
        settled = scheduler.tick()
        if settled.failed:
            raise settled.failures[0][1]
        for block in settled.answered:
            blocks.append(block)
            count += len(block)

    try:
        warm_until = time.perf_counter() + warmup_s
        while time.perf_counter() < warm_until:
            tick()
        del blocks[:]
        count = 0
        calls, step_s, once_s = runtime.step.calls, runtime.step.seconds, sum(e.seconds for e in once)
        if power is not None:
            power.start()
        started, cpu_started = time.perf_counter(), time.thread_time()
        while True:
            tick()
            elapsed = time.perf_counter() - started
            if count >= (answers or 1) and (answers is not None or elapsed >= seconds):
                break
        cpu = time.thread_time() - cpu_started
        power_report = power.stop() if power is not None else None
    finally:
        scheduler.close()
    kept = answers if answers is not None else count

    def column(name: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(b, name), dtype=dtype) for b in blocks])[:kept]

    return Stream(column("keys", np.int64), column("prediction", np.int64), column("timesteps", np.int64),
                  column("service", np.float64), elapsed, runtime.step.calls - calls, runtime.step.seconds - step_s,
                  sum(e.seconds for e in once) - once_s, cpu, power_report)


def measure(runtime: Runtime, x: np.ndarray, labels: np.ndarray | None, settings: BenchSettings, power) -> Measurement:
    """Warm up, then stream x in steady state for the duration (or the answers of `iterations` passes)."""
    prepared = runtime.prepare(x)
    answers = None if settings.iterations is None else settings.iterations * len(x)
    stream = steady_stream(runtime, prepared, answers, settings.duration_s, settings.warmup_s, power)
    elapsed, steps, timesteps, samples = stream.seconds, stream.steps, stream.timesteps, len(stream.rows)
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(stream.prediction == labels[stream.rows]))
    service_ms = stream.service * 1e3
    stats = LatencyStats.from_samples(service_ms / 1e3, settings.percentiles)
    counts, edges = np.histogram(service_ms, bins=40)
    return Measurement(
        exit=runtime.exit.describe(), samples=samples, passes=samples / len(x), seconds=elapsed,
        throughput=samples / elapsed, cpu_seconds=stream.cpu_seconds, avg_timesteps=float(timesteps.mean()),
        exit_histogram=np.bincount(timesteps, minlength=runtime.manifest.timesteps + 1)[1:].tolist(),
        accuracy=accuracy, latency=stats.to_dict(),
        latency_histogram={"edges_ms": edges.tolist(), "counts": counts.tolist()}, steps=steps,
        step_ms=1e3 * stream.step_seconds / max(steps, 1), encoder_ms_per_sample=1e3 * stream.once_seconds / samples,
        host_ms_per_step=1e3 * (elapsed - stream.step_seconds - stream.once_seconds) / max(steps, 1),
        power=stream.power,
    )


def estimate_for(runtime: Runtime, x: np.ndarray, avg_timesteps: float) -> tuple[dict | None, str | None]:
    """The field's energy estimate from the source checkpoint, or why there is none."""
    try:
        import torch

        from seenn_deploy.profile.energy import estimate_energy
        from seenn_deploy.snn.checkpoint import load_checkpoint
    except ImportError:
        return None, "estimated energy needs the torch extra"
    checkpoint = runtime.manifest.provenance.get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        return None, "estimated energy needs the source checkpoint, which the bundle does not point to here"
    model, _ = load_checkpoint(Path(checkpoint))
    sample = torch.from_numpy(runtime.prepare(x[:512]))
    estimate = estimate_energy(model, sample, runtime.manifest.timesteps, avg_timesteps,
                               encoder_runs_once=runtime.manifest.has_encoder)
    return estimate.to_dict(), None


def run_bench(target: BenchTarget | Path, x: np.ndarray, labels: np.ndarray | None, data_name: str,
              settings: BenchSettings, **backend_options) -> BenchReport:
    """Measure `target` (a BenchTarget, or a path resolve_target reads) on samples x [N, ...]."""
    settings.check()
    target = target if isinstance(target, BenchTarget) else resolve_target(target)
    backend = target.check_backend(settings.backend)
    with target.open(backend, settings.exit, settings.mode, settings.batch, **backend_options) as runtime:
        runtime.prepare(x[:1])
        if settings.clock == "cpu" and (backend != "ort" or runtime.step.cuda_device is not None
                                        or backend_options.get("threads") != 1):
            raise UserError("--clock cpu times the CPU of the thread that runs the steps, which is all the work only "
                            "with ONNX Runtime on the CPU in one thread: add --threads 1 (backend ort, CPU provider), "
                            "or use --clock wall")
        report = BenchReport(str(target.path), backend, runtime.step.placement, settings.mode, settings.batch,
                             data_name, runtime.manifest.timesteps, [], clock=settings.clock, notes=target.notes())
        gpu = runtime.step.cuda_device
        power = open_power(settings.power, gpu)
        if settings.power == "auto" and power is None:
            report.notes.append("measured energy is absent: " + ("the step graph runs on the CPU and this is no Jetson"
                                                                 if gpu is None else f"NVML cannot read GPU {gpu}"))
        measured_exit = runtime.exit  # --compare fixed replaces it below; the policy's cost belongs to this one
        try:
            report.runs.append(measure(runtime, x, labels, settings, power))
            if settings.compare_fixed:
                runtime.exit = Fixed(runtime.manifest.timesteps)
                report.runs.append(measure(runtime, x, labels, settings, power))
        finally:
            if power is not None:
                power.close()
        if settings.compare_fixed:
            early, fixed = report.runs
            if settings.clock == "cpu":  # samples per CPU second of the thread that ran them
                report.speedup = (early.samples / early.cpu_seconds) / (fixed.samples / fixed.cpu_seconds)
            else:
                report.speedup = early.throughput / fixed.throughput
            report.ideal_speedup = runtime.manifest.timesteps / early.avg_timesteps
            report.share_of_ideal = report.speedup / report.ideal_speedup
        report.energy_estimate, why = estimate_for(runtime, x, report.runs[0].avg_timesteps)
        if why:
            report.notes.append(why)
        from seenn_deploy.profile.policy_cost import bench_policy_cost

        report.policy_cost, why = bench_policy_cost(runtime, x, report.energy_estimate, measured_exit)
        if why:
            report.notes.append(why)
    return report


def write_plots(folder: Path, report: BenchReport) -> list[Path]:
    """latency.png, exits.png, power_*.png when power was sampled, and summary.md, in `folder`."""
    from seenn_deploy.plotting import pyplot, save

    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for run in report.runs:
        hist = run.latency_histogram
        ax.stairs(hist["counts"], hist["edges_ms"], label=run.exit)
    ax.set_xlabel("latency per sample, admission to exit (ms)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    made.append(save(fig, folder / "latency.png"))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    width = 0.8 / len(report.runs)
    for i, run in enumerate(report.runs):
        t = np.arange(1, len(run.exit_histogram) + 1)
        ax.bar(t + i * width - 0.4 + width / 2, run.exit_histogram, width=width, label=run.exit)
    ax.set_xlabel("exit timestep")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    made.append(save(fig, folder / "exits.png"))
    for run in report.runs:
        trace = (run.power or {}).get("trace")
        if trace:
            fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
            ax.plot([p["t"] for p in trace], [p["mw"] / 1000 for p in trace])
            ax.set_xlabel("s")
            ax.set_ylabel("W")
            ax.set_title(f"power, {run.exit}")
            made.append(save(fig, folder / f"power_{run.exit.replace(':', '_')}.png"))
    (folder / "summary.md").write_text(report.markdown())
    made.append(folder / "summary.md")
    return made
