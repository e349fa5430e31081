"""Early exit through the runtime, measured in one run on one bundle, data set and backend (ORT CPU).

Prints ratios, not absolute targets (machines are noisy):
  * batch 1: speedup of Confidence(alpha) over Fixed(T_max), divided by T_max / avg T (target >= 0.95);
  * batch 64: the same efficiency for slot, compact and naive modes (target for slots >= 0.90);
  * overhead of Fixed(T_max) through the runtime over a bare `session.run` loop (target <= 3 %).
Each figure is the median of --repeats interleaved runs.

    python benchmarks/runtime_early_exit.py BUNDLE --data fashion-mnist:../shared/data --alpha 0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Confidence, Fixed, Runtime, read_manifest
from seenn_deploy.runtime.loop import normalise


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bare_loop(bundle: str, x: np.ndarray, batch: int, threads: int | None):
    """Fixed(T_max) with plain InferenceSession.run calls: the floor the runtime is compared with."""
    manifest = read_manifest(bundle)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    step = ort.InferenceSession(f"{bundle}/{manifest.graphs['step']}", options, providers=["CPUExecutionProvider"])
    encoder = (ort.InferenceSession(f"{bundle}/{manifest.graphs['encoder']}", options,
                                    providers=["CPUExecutionProvider"]) if manifest.has_encoder else None)
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
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--samples-batch1", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = parse_data_spec(args.data).load("test")
    t_max = read_manifest(args.bundle).timesteps
    report: dict = {"bundle": args.bundle, "data": data.name, "alpha": args.alpha, "t_max": t_max}

    def runtime(exit_policy, mode, batch):
        return Runtime.from_bundle(args.bundle, exit=exit_policy, mode=mode, batch=batch, threads=args.threads)

    def efficiency(batch: int, mode: str, x: np.ndarray) -> dict:
        with runtime(Fixed(t_max), mode, batch) as fixed, runtime(Confidence(args.alpha), mode, batch) as early:
            avg_t = float(np.mean([r.timesteps for r in early.infer(x)]))
            t_fixed, t_early = [], []
            for _ in range(args.repeats):
                t_fixed.append(timed(lambda: fixed.infer(x)))
                t_early.append(timed(lambda: early.infer(x)))
        speedup = statistics.median(t_fixed) / statistics.median(t_early)
        ideal = t_max / avg_t
        return {"mode": mode, "batch": batch, "avg_timesteps": avg_t, "speedup": speedup, "ideal": ideal,
                "efficiency": speedup / ideal, "fixed_samples_per_s": len(x) / statistics.median(t_fixed),
                "early_samples_per_s": len(x) / statistics.median(t_early)}

    def overhead(batch: int, x: np.ndarray) -> dict:
        bare = bare_loop(args.bundle, x, batch, args.threads)
        with runtime(Fixed(t_max), "compact", batch) as rt:
            t_rt, t_bare = [], []
            for _ in range(args.repeats):
                t_bare.append(timed(bare))
                t_rt.append(timed(lambda: rt.infer(x)))
        ratio = statistics.median(t_rt) / statistics.median(t_bare)
        return {"batch": batch, "runtime_s": statistics.median(t_rt), "bare_s": statistics.median(t_bare),
                "overhead": ratio - 1.0}

    x1 = data.x[: args.samples_batch1]
    x64 = data.x[: args.samples]
    report["batch1"] = efficiency(1, "slots", x1)
    report["batch64"] = [efficiency(64, mode, x64) for mode in ("slots", "compact", "naive")]
    report["overhead"] = [overhead(1, x1), overhead(64, x64)]

    b1 = report["batch1"]
    print(f"{data.name}, T_max {t_max}, Confidence({args.alpha}), ORT CPU, median of {args.repeats}")
    print(f"batch 1 : avg T {b1['avg_timesteps']:.3f}, speedup {b1['speedup']:.2f}x of ideal {b1['ideal']:.2f}x "
          f"-> efficiency {b1['efficiency']:.3f} (target >= 0.95)")
    print("batch 64:  mode     speedup  ideal  efficiency  fixed/s  early/s")
    for row in report["batch64"]:
        print(f"          {row['mode']:<8} {row['speedup']:6.2f}x {row['ideal']:5.2f}x  {row['efficiency']:9.3f}  "
              f"{row['fixed_samples_per_s']:7.0f}  {row['early_samples_per_s']:7.0f}")
    print("          (target: slots efficiency >= 0.90)")
    for row in report["overhead"]:
        print(f"overhead, Fixed(T_max) runtime vs bare session.run loop, batch {row['batch']}: "
              f"{100 * row['overhead']:+.1f}% (target <= 3 %)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
