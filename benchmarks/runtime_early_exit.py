"""Early exit through the runtime: the share of the ideal speedup it reaches, and the runtime's own cost.

One command, one table for several bundles (ORT CPU, slot mode, batch 64, steady state)::

    python benchmarks/runtime_early_exit.py /work/runs/digits.seenn=digits \\
        /work/runs/fm.seenn=fashion-mnist:/work/shared/data \\
        /work/runs/cifar.seenn=imagefolder:/work/shared/data/cifar10_test_jpeg.tar.gz --threads 1 --clock cpu

Each BUNDLE[=DATA] runs on the test split of DATA (default: the data its checkpoint was trained
on) with the bundle's calibrated exit, or --fallback-exit where it has none. It prints:

  * the runtime's own cost per admitted sample and per step with ONNX Runtime taken out: an
    executor that returns stored outputs, Fixed(k) for k = 1, 2, 4, 8 (up to T_max) so that each
    step admits B/k samples, and a least-squares fit of thread CPU time = a * samples + b * steps
    (target: a <= 2 us): the scheduler in a steady stream with its states through the host or bound
    in place (the default on ORT CPU), and the whole of `Runtime.infer` (a Result object per
    sample); then what `submit()` costs per sample (a Future each). `--before SRC` measures the
    same on another source tree (e.g. `git archive COMMIT seenn_deploy | tar -x -C /tmp/before`)
    and prints it alongside;
  * the share of the ideal speedup T_max / avg T that early exit reaches over Fixed(T_max), median
    and quartiles over --pairs paired runs (targets: >= 0.90 digits, >= 0.95 the CNNs).
Speedups are measured in steady state, as `seenn-deploy bench` does: one stream that cycles
through the data with its queue never empty, timed after a warm-up, with no drain at the end.
Each ratio is paired: the two sides run back to back, the side that goes first alternating, and
the figure is the median of the per-pair ratios with its quartiles (a slow spell of the machine
hits both sides of a pair). With --clock cpu and --threads 1 the sides are timed in thread CPU
seconds (ORT computes in the calling thread), which other load on the machine barely moves.

Optional extras: --batch1 (batch-1 efficiency), --modes slots,compact,naive, --overhead (Fixed(T_max)
through the runtime against a bare session.run loop, target <= 3 %), --host-cost-only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Fixed, Runtime, read_manifest
from seenn_deploy.runtime.executors.base import DeviceStates, Executor, TensorInfo
from seenn_deploy.runtime.exit import parse_exit
from seenn_deploy.runtime.loop import normalise
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X

TARGETS = {"digits": 0.90}  # share of ideal; 0.95 for the others (the CNNs)


def timed(fn) -> float:
    """Wall seconds of fn()."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def paired(numerator, denominator, pairs: int) -> dict:
    """Median and quartiles of numerator() / denominator() over back-to-back pairs, each a call that returns
    the seconds it measured; the side that runs first alternates, so an order effect (caches, clocks) cancels out."""
    numerator(), denominator()  # warm both
    ratios = []
    for i in range(pairs):
        if i % 2:
            bottom = denominator()
            ratios.append(numerator() / bottom)
        else:
            top = numerator()
            ratios.append(top / denominator())
    return spread_of(ratios) | {"pairs": pairs}


def spread_of(values) -> dict:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


class StoredStep(Executor):
    """The step graph's interface with stored outputs: states pass through, confidence and prediction are
    zeros. Costs nothing, so what a run through it costs is the runtime's own work. `open_states` gives
    the bound-states path the same way."""

    def __init__(self, manifest) -> None:
        inputs = [TensorInfo(X, (None, *manifest.step_input_shape), np.dtype(manifest.input.dtype)),
                  TensorInfo(RESET, (None,), np.dtype(np.bool_))]
        inputs += [TensorInfo(s.name, (None, *s.shape), np.dtype(s.dtype)) for s in manifest.states]
        super().__init__(inputs, [CONFIDENCE, PREDICTION] + [s.output for s in manifest.states], "stored step")
        self.states = manifest.states
        self.step_input_shape = tuple(manifest.step_input_shape)
        self.confidence = np.zeros(manifest.max_batch, np.float32)
        self.prediction = np.zeros(manifest.max_batch, np.int64)

    def _run_impl(self, feeds):
        b = len(feeds[RESET])
        out = {CONFIDENCE: self.confidence[:b], PREDICTION: self.prediction[:b]}
        out.update((s.output, feeds[s.name]) for s in self.states)
        return out

    def open_states(self, batch: int, states) -> "StoredStates":
        return StoredStates(self, batch)


class StoredStates(DeviceStates):
    """Bound states with stored outputs: x rows land in a host buffer (the copy every backend makes), the step
    returns copies of the stored head, as the real ones do."""

    def __init__(self, executor: StoredStep, batch: int) -> None:
        self.executor, self.batch = executor, batch
        self.x = np.zeros((batch, *executor.step_input_shape), np.float32)

    def step(self, x, reset, slots=None):
        if isinstance(x, dict):  # the {slot: row} form of earlier source trees (--before)
            for slot, row in x.items():
                self.x[slot] = row
        elif slots is not None:
            self.x[slots] = x
        elif x is not None:
            self.x[...] = x
        self.executor.calls += 1
        return self.executor.confidence[: self.batch].copy(), self.executor.prediction[: self.batch].copy()


def host_cost(bundle: str, x: np.ndarray, batch: int, paths=("host", "bound", "infer"), repeats: int = 5) -> list[dict]:
    """The runtime's CPU time per admitted sample and per step, without ONNX Runtime.

    Fixed(k) runs every sample k steps, so a step admits and answers B/k samples; the fit of
    thread CPU time = a * samples + b * steps over k = 1, 2, 4, 8 (up to T_max) gives a and b.
    Thread CPU time, the best of `repeats`: on a shared machine, wall time would count other work.
    Paths: the scheduler in a steady stream (bench's loop) in slot mode with the states through
    the host ("host") or bound in place ("bound"), or in compact mode ("compact"); "infer": the
    whole of `Runtime.infer` in slot mode (a Result object per sample, in order).
    """
    from seenn_deploy.profile.bench import steady_stream

    manifest = read_manifest(bundle)
    ks = [k for k in (1, 2, 4, 8) if k <= manifest.timesteps]
    rows = []
    for path in paths:
        mode, device_states = ("compact", False) if path == "compact" else ("slots", path == "bound")
        samples, steps, seconds = [], [], []
        for k in ks:
            runtime = Runtime(manifest, StoredStep(manifest), None, Fixed(k), mode=mode, batch=batch,
                              device_states=device_states)
            prepared = runtime.prepare(x)
            best = (float("inf"), 0)
            for _ in range(repeats):
                if path == "infer":
                    calls, started = runtime.step.calls, time.thread_time()
                    runtime.infer(x)
                    best = min(best, (time.thread_time() - started, runtime.step.calls - calls))
                else:
                    stream = steady_stream(runtime, prepared, len(x), warmup_s=0.02)
                    best = min(best, (stream.cpu_seconds, stream.steps))
            samples.append(len(x))
            steps.append(best[1])
            seconds.append(best[0])
        (per_sample, per_step), *_ = np.linalg.lstsq(np.array([samples, steps], float).T, np.array(seconds), rcond=None)
        rows.append({"path": path, "batch": batch, "us_per_sample": 1e6 * per_sample, "us_per_step": 1e6 * per_step,
                     "fixed_k": ks, "us_per_sample_at_k": [1e6 * s / len(x) for s in seconds]})
    return rows


def submit_cost(bundle: str, x: np.ndarray, batch: int) -> dict:
    """CPU time per sample of submit() (the caller's thread) and of the worker thread, Fixed(1), stored outputs."""
    manifest = read_manifest(bundle)
    runtime = Runtime(manifest, StoredStep(manifest), None, Fixed(1), mode="slots", batch=batch)
    serve, worker = runtime._serve, {}

    def timed_serve() -> None:
        started = time.thread_time()
        serve()
        worker["seconds"] = time.thread_time() - started

    runtime._serve = timed_serve
    started = time.thread_time()
    futures = [runtime.submit(sample) for sample in x]
    caller = time.thread_time() - started
    for future in futures:
        future.result()
    runtime.close()
    return {"batch": batch, "caller_us_per_sample": 1e6 * caller / len(x),
            "worker_us_per_sample": 1e6 * worker["seconds"] / len(x)}


def bare_loop(runtime: Runtime, x: np.ndarray, batch: int):
    """Fixed(T_max) with plain InferenceSession.run calls on the runtime's own sessions: the floor it is compared with.

    Same sessions, so the comparison measures the runtime's bookkeeping and nothing else (two
    sessions would also compete through their thread pools' spinning).
    """
    manifest = runtime.manifest
    step = runtime.step.session
    encoder = runtime.encoder.session if runtime.encoder is not None else None
    names = [s.name for s in manifest.states]
    outputs = ["confidence", "prediction"] + [s.output for s in manifest.states]

    def run():
        for start in range(0, len(x), batch):
            xb = normalise(manifest, x[start : start + batch])
            b = len(xb)
            feed_x = encoder.run(["encoded"], {"x": xb})[0] if encoder is not None else xb
            states = [np.full((b, *s.shape), s.init, np.float32) for s in manifest.states]
            reset = np.zeros(b, np.bool_)
            for _ in range(manifest.timesteps):
                out = step.run(outputs, {"x": feed_x, "reset": reset, **dict(zip(names, states))})
                states = out[2:]

    return run


def parse_target(text: str) -> tuple[str, str]:
    """BUNDLE[=DATA] -> (bundle, data spec); the data defaults to what the bundle's checkpoint was trained on."""
    bundle, _, data = text.partition("=")
    if not data:
        data = read_manifest(bundle).provenance.get("data") or ""
        if not data:
            raise SystemExit(f"{bundle}: the bundle names no training data; give {bundle}=DATA")
    return bundle, data


def bundle_exit(bundle: str, fallback: str):
    """The bundle's calibrated exit (its manifest's), or `fallback` where it has only a fixed one."""
    manifest = read_manifest(bundle)
    policy = parse_exit(None, manifest)
    return policy if manifest.exit.kind == "confidence" and manifest.exit.alpha is not None else \
        parse_exit(fallback, manifest)


def measure_bundle(bundle: str, data_spec: str, args) -> dict:
    """Host cost and the batch-64 share of ideal (plus the extras asked for) for one bundle."""
    from seenn_deploy.profile.bench import steady_stream

    data = parse_data_spec(data_spec).load("test")
    manifest = read_manifest(bundle)
    t_max = manifest.timesteps
    early_exit = bundle_exit(bundle, args.fallback_exit)
    report: dict = {"bundle": bundle, "data": data.name, "exit": early_exit.describe(), "t_max": t_max,
                    "target": TARGETS.get(Path(bundle).stem, 0.95)}
    x_host = data.x[np.arange(20000) % len(data.x)]
    report["host_cost"] = host_cost(bundle, x_host, 64, paths=("host", "bound", "infer") + (("compact",) if "compact" in
                                                                                              args.modes else ()))
    report["submit_cost"] = submit_cost(bundle, x_host, 64)
    if args.host_cost_only:
        return report

    def efficiency(batch: int, mode: str, x: np.ndarray, answers: int, pairs: int) -> dict:
        """Fixed(T_max) and early exit on one runtime (one session), switching its exit policy; each side a
        steady stream of `answers` answers after a warm-up of about 20 steps."""
        fixed_exit = Fixed(t_max)
        with Runtime.from_bundle(bundle, exit=early_exit, mode=mode, batch=batch, threads=args.threads) as rt:
            prepared = rt.prepare(x)
            avg_t = float(steady_stream(rt, prepared, answers).timesteps.mean())
            warmup = 20 * timed(lambda: rt.infer(x[:batch])) / t_max

            def run_with(policy) -> float:
                rt.exit = policy
                stream = steady_stream(rt, prepared, answers, warmup_s=warmup)
                return stream.cpu_seconds if args.clock == "cpu" else stream.seconds

            speedup = paired(lambda: run_with(fixed_exit), lambda: run_with(early_exit), pairs)
        ideal = t_max / avg_t
        return {"mode": mode, "batch": batch, "avg_timesteps": avg_t, "speedup": speedup, "ideal": ideal,
                "efficiency": {k: v / ideal for k, v in speedup.items() if k != "pairs"}}

    def overhead(batch: int, x: np.ndarray, pairs: int) -> dict:
        with Runtime.from_bundle(bundle, exit=Fixed(t_max), mode="compact", batch=batch, threads=args.threads) as rt:
            bare = bare_loop(rt, x, batch)
            ratio = paired(lambda: timed(lambda: rt.infer(x)), lambda: timed(bare), pairs)
        return {"batch": batch, "overhead": {k: v - 1.0 for k, v in ratio.items() if k != "pairs"}}

    x1, x64 = data.x[: args.samples_batch1], data.x[: args.samples]
    report["batch64"] = [efficiency(64, mode, x64, args.samples, args.pairs) for mode in args.modes]
    if args.batch1:
        report["batch1"] = efficiency(1, "slots", x1, len(x1), args.pairs_batch1)
    if args.overhead:
        report["overhead"] = [overhead(1, x1, args.pairs_batch1), overhead(64, x64, args.pairs)]
    return report


def before_cost(source: str, targets: list[str], args) -> dict:
    """Host cost measured by this script on another source tree (`--before`), by bundle."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "before.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, __file__, *targets, "--host-cost-only", "--quiet", "--json", str(out),
                   "--modes", ",".join(args.modes)]
        subprocess.run(command, env=env, check=True)
        return {r["bundle"]: r["host_cost"] for r in json.loads(out.read_text())["bundles"]}


def spread(d: dict, scale: float = 1.0, fmt: str = ".3f") -> str:
    return f"{scale * d['median']:{fmt}} [{scale * d['q1']:{fmt}}, {scale * d['q3']:{fmt}}]"


def print_report(reports: list[dict], before: dict, args) -> None:
    print("Runtime's own cost, ONNX Runtime taken out (stored outputs), batch 64, 20000 samples, thread CPU time "
          "(best of 5),\nfit CPU = a * admitted samples + b * steps over Fixed(k), k = 1, 2, 4, 8. host/bound: slot "
          "mode in a steady stream,\nstates through the host / bound in place; infer: all of Runtime.infer (a Result "
          "object per sample)")
    print(f"  {'bundle':<28} {'path':<8} {'a: us/sample':>12} {'b: us/step':>11}" + ("   before: a, b" if before else ""))
    for r in reports:
        old = {row.get("path", row.get("mode")): row for row in before.get(r["bundle"], [])}
        for row in r["host_cost"]:
            was = old.get(row["path"])
            tail = f"   {was['us_per_sample']:.2f}, {was['us_per_step']:.1f}" if was else ("   (n/a)" if before else "")
            print(f"  {Path(r['bundle']).name:<28} {row['path']:<8} {row['us_per_sample']:12.2f} {row['us_per_step']:11.1f}"
                  + tail)
    print("  (target: a <= 2 us per admitted sample)")
    for r in reports:
        if "submit_cost" in r:
            cost = r["submit_cost"]
            print(f"  {Path(r['bundle']).name:<28} submit(): {cost['caller_us_per_sample']:.2f} us per sample in the "
                  f"caller's thread, {cost['worker_us_per_sample']:.2f} us in the worker (futures, Fixed(1))")
    if args.host_cost_only:
        return
    print(f"\nEarly exit over Fixed(T_max), ORT CPU, threads {args.threads or 'default'}, batch 64, steady state, "
          f"{args.clock} clock; median [quartiles] of {args.pairs} paired runs of {args.samples} answers")
    print(f"  {'bundle':<16} {'mode':<8} {'exit':<24} {'avg T':>6} {'ideal':>6}  {'speedup':<20} share of ideal")
    for r in reports:
        for row in r["batch64"]:
            print(f"  {Path(r['bundle']).name:<16} {row['mode']:<8} {r['exit']:<24} {row['avg_timesteps']:6.3f} "
                  f"{row['ideal']:5.2f}x  {spread(row['speedup'], fmt='.2f'):<20} {spread(row['efficiency'])}"
                  f"  (target >= {r['target']:.2f})")
        if "batch1" in r:
            b1 = r["batch1"]
            print(f"  {Path(r['bundle']).name:<16} batch 1  {r['exit']:<24} {b1['avg_timesteps']:6.3f} {b1['ideal']:5.2f}x"
                  f"  {spread(b1['speedup'], fmt='.2f'):<20} {spread(b1['efficiency'])}  (target >= 0.95)")
        for row in r.get("overhead", []):
            print(f"  {Path(r['bundle']).name:<16} overhead of Fixed(T_max) over a bare session.run loop, batch "
                  f"{row['batch']}: {spread(row['overhead'], 100, '+.1f')} % (target <= 3 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="BUNDLE[=DATA]")
    parser.add_argument("--fallback-exit", default="confidence:0.6",
                        help="the exit for a bundle without a calibrated one (digits)")
    parser.add_argument("--samples", type=int, default=10000,
                        help="batch 64: answers per timed window of the steady stream (the data cycles)")
    parser.add_argument("--samples-batch1", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=9, help="back-to-back pairs per ratio at batch 64")
    parser.add_argument("--pairs-batch1", type=int, default=31, help="back-to-back pairs per ratio at batch 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the speedups time: wall seconds, or the thread's CPU seconds (with --threads 1 "
                             "ORT computes in that thread, so the figure ignores other load on a shared machine)")
    parser.add_argument("--modes", default="slots", help="batch-64 modes to measure, e.g. slots,compact,naive")
    parser.add_argument("--batch1", action="store_true", help="also the batch-1 efficiency")
    parser.add_argument("--overhead", action="store_true", help="also the comparison with a bare session.run loop")
    parser.add_argument("--host-cost-only", action="store_true", help="only the runtime's own cost, without ORT")
    parser.add_argument("--before", metavar="SRC", default=None,
                        help="a source tree of seenn_deploy to measure the runtime's own cost on as well")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (ONNX Runtime computing in the timed thread)")
    targets = [parse_target(t) for t in args.targets]
    before = before_cost(args.before, args.targets, args) if args.before else {}
    reports = [measure_bundle(bundle, data, args) for bundle, data in targets]
    if not args.quiet:
        print_report(reports, before, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bundles": reports, "before": before, "clock": args.clock, "threads": args.threads}, f, indent=2)


if __name__ == "__main__":
    main()
