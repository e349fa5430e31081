"""Early exit through the runtime, measured in one run on one bundle, data set and backend (ORT CPU).

Prints ratios, not absolute targets (machines are noisy):
  * batch 1: speedup of Confidence(alpha) over Fixed(T_max), divided by T_max / avg T (target >= 0.95);
  * batch 64: the same efficiency for slot, compact and naive modes (target for slots >= 0.90);
  * overhead of Fixed(T_max) through the runtime over a bare `session.run` loop (target <= 3 %);
  * the runtime's own cost per admitted sample and per step, with ONNX Runtime taken out: an
    executor that returns stored outputs, Fixed(k) for k = 1, 2, 4, 8 (up to T_max) so that each
    step admits B/k samples, and a least-squares fit of CPU time = a * samples + b * steps
    (target: a <= 2 us). `--host-cost-only` runs this part alone; it needs no timing pairs.
Speedups are measured in steady state, as `seenn-deploy bench` does: one stream that cycles
through the data with its queue never empty, timed after a warm-up, with no drain at the end.
Each ratio is paired: the two sides run back to back, --pairs times, and the figure is the median
of the per-pair ratios, with its quartiles (a slow spell of the machine hits both sides of a pair).

    python benchmarks/runtime_early_exit.py BUNDLE --data fashion-mnist:../shared/data --alpha 0.9
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Confidence, Fixed, Runtime, read_manifest
from seenn_deploy.runtime.executors.base import Executor, TensorInfo
from seenn_deploy.runtime.loop import normalise
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X


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
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "pairs": pairs}


class StoredStep(Executor):
    """The step graph's interface with stored outputs: states pass through, confidence and prediction are
    zeros. Costs nothing, so what a run through it costs is the runtime's own work."""

    def __init__(self, manifest) -> None:
        inputs = [TensorInfo(X, (None, *manifest.step_input_shape), np.dtype(manifest.input.dtype)),
                  TensorInfo(RESET, (None,), np.dtype(np.bool_))]
        inputs += [TensorInfo(s.name, (None, *s.shape), np.dtype(s.dtype)) for s in manifest.states]
        super().__init__(inputs, [CONFIDENCE, PREDICTION] + [s.output for s in manifest.states], "stored step")
        self.states = manifest.states
        self.confidence = np.zeros(manifest.max_batch, np.float32)
        self.prediction = np.zeros(manifest.max_batch, np.int64)

    def _run_impl(self, feeds):
        b = len(feeds[RESET])
        out = {CONFIDENCE: self.confidence[:b], PREDICTION: self.prediction[:b]}
        out.update((s.output, feeds[s.name]) for s in self.states)
        return out


def host_cost(bundle: str, x: np.ndarray, batch: int, modes=("slots", "compact"), repeats: int = 5) -> list[dict]:
    """The runtime's CPU time per admitted sample and per step through `infer`, without ONNX Runtime.

    Fixed(k) runs every sample k steps, so a step admits and answers B/k samples; the fit of
    thread CPU time = a * samples + b * steps over k = 1, 2, 4, 8 (up to T_max) gives a and b.
    Thread CPU time, the best of `repeats`: on a shared machine, wall time would count other work.
    """
    manifest = read_manifest(bundle)
    ks = [k for k in (1, 2, 4, 8) if k <= manifest.timesteps]
    rows = []
    for mode in modes:
        samples, steps, seconds = [], [], []
        for k in ks:
            runtime = Runtime(manifest, StoredStep(manifest), None, Fixed(k), mode=mode, batch=batch)
            runtime.infer(x[: 4 * batch])  # warm
            best = None
            for _ in range(repeats):
                calls, started = runtime.step.calls, time.thread_time()
                runtime.infer(x)
                best = min(best or (float("inf"), 0), (time.thread_time() - started, runtime.step.calls - calls))
            samples.append(len(x))
            steps.append(best[1])
            seconds.append(best[0])
        (per_sample, per_step), *_ = np.linalg.lstsq(np.array([samples, steps], float).T, np.array(seconds), rcond=None)
        rows.append({"mode": mode, "batch": batch, "us_per_sample": 1e6 * per_sample, "us_per_step": 1e6 * per_step,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--samples", type=int, default=10000,
                        help="batch 64: answers per timed window of the steady stream (the data cycles)")
    parser.add_argument("--samples-batch1", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=9, help="back-to-back pairs per ratio at batch 64")
    parser.add_argument("--pairs-batch1", type=int, default=31, help="back-to-back pairs per ratio at batch 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the speedups time: wall seconds, or the thread's CPU seconds (with --threads 1 "
                             "ORT computes in that thread, so the figure ignores other load on a shared machine)")
    parser.add_argument("--modes", default="slots,compact,naive", help="batch-64 modes to measure")
    parser.add_argument("--skip-batch1", action="store_true", help="no batch-1 efficiency")
    parser.add_argument("--skip-overhead", action="store_true", help="no comparison with a bare session.run loop")
    parser.add_argument("--host-cost-only", action="store_true", help="only the runtime's own cost, without ORT")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (ONNX Runtime computing in the timed thread)")

    data = parse_data_spec(args.data).load("test")
    t_max = read_manifest(args.bundle).timesteps
    report: dict = {"bundle": args.bundle, "data": data.name, "alpha": args.alpha, "t_max": t_max}
    x_host = data.x[np.arange(20000) % len(data.x)]
    report["host_cost"] = host_cost(args.bundle, x_host, 64)
    print(f"runtime's own cost through infer(), no ORT (stored outputs), batch 64, {len(x_host)} samples, "
          "thread CPU time, best of 5:")
    for row in report["host_cost"]:
        print(f"  {row['mode']:<8} {row['us_per_sample']:.2f} us per admitted sample (target <= 2), "
              f"{row['us_per_step']:.1f} us per step")
    report["submit_cost"] = submit_cost(args.bundle, x_host, 64)
    print(f"  submit() from one thread: {report['submit_cost']['caller_us_per_sample']:.2f} us per sample in the caller, "
          f"{report['submit_cost']['worker_us_per_sample']:.2f} us in the worker")
    if args.host_cost_only:
        return _write(args.json, report)
    from seenn_deploy.profile.bench import steady_stream

    def efficiency(batch: int, mode: str, x: np.ndarray, answers: int, pairs: int) -> dict:
        """Fixed(T_max) and Confidence(alpha) on one runtime (one session), switching its exit policy; each
        side a steady stream of `answers` answers after a warm-up of about 20 steps."""
        early_exit, fixed_exit = Confidence(args.alpha), Fixed(t_max)
        with Runtime.from_bundle(args.bundle, exit=early_exit, mode=mode, batch=batch, threads=args.threads) as rt:
            prepared = rt.prepare(x)
            avg_t = float(np.mean([r.timesteps for r in steady_stream(rt, prepared, answers).results]))
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
        with Runtime.from_bundle(args.bundle, exit=Fixed(t_max), mode="compact", batch=batch,
                                 threads=args.threads) as rt:
            bare = bare_loop(rt, x, batch)
            ratio = paired(lambda: timed(lambda: rt.infer(x)), lambda: timed(bare), pairs)
        return {"batch": batch, "overhead": {k: v - 1.0 for k, v in ratio.items() if k != "pairs"}}

    x1 = data.x[: args.samples_batch1]
    x64 = data.x[: args.samples]
    modes = args.modes.split(",")
    if not args.skip_batch1:
        report["batch1"] = efficiency(1, "slots", x1, len(x1), args.pairs_batch1)
    report["batch64"] = [efficiency(64, mode, x64, args.samples, args.pairs) for mode in modes]
    if not args.skip_overhead:
        report["overhead"] = [overhead(1, x1, args.pairs_batch1), overhead(64, x64, args.pairs)]

    def spread(d: dict, scale: float = 1.0, fmt: str = ".3f") -> str:
        return f"{scale * d['median']:{fmt}} [{scale * d['q1']:{fmt}}, {scale * d['q3']:{fmt}}]"

    print(f"{data.name}, T_max {t_max}, Confidence({args.alpha}), ORT CPU, steady state, {args.clock} clock; "
          f"median [quartiles] of paired runs: {args.pairs_batch1} of {len(x1)} answers at batch 1, "
          f"{args.pairs} of {args.samples} at batch 64")
    if "batch1" in report:
        b1 = report["batch1"]
        print(f"batch 1 : avg T {b1['avg_timesteps']:.3f}, ideal {b1['ideal']:.2f}x, "
              f"speedup {spread(b1['speedup'], fmt='.2f')} -> efficiency {spread(b1['efficiency'])} (target >= 0.95)")
    print("batch 64:  mode     ideal  speedup              efficiency")
    for row in report["batch64"]:
        print(f"          {row['mode']:<8} {row['ideal']:5.2f}x {spread(row['speedup'], fmt='.2f'):<20} "
              f"{spread(row['efficiency'])}")
    print("          (target: slots efficiency >= 0.90)")
    for row in report.get("overhead", []):
        print(f"overhead, Fixed(T_max) runtime vs bare session.run loop, batch {row['batch']}: "
              f"{spread(row['overhead'], 100, '+.1f')} % (target <= 3 %)")
    _write(args.json, report)


def _write(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
