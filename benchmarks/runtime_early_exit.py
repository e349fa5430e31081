"""Early exit through the runtime, measured in one run on one bundle, data set and backend (ORT CPU).

Prints ratios, not absolute targets (machines are noisy):
  * batch 1: speedup of Confidence(alpha) over Fixed(T_max), divided by T_max / avg T (target >= 0.95);
  * batch 64: the same efficiency for slot, compact and naive modes (target for slots >= 0.90);
  * overhead of Fixed(T_max) through the runtime over a bare `session.run` loop (target <= 3 %).
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
from seenn_deploy.runtime.loop import normalise


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def paired(numerator, denominator, pairs: int) -> dict:
    """Median and quartiles of time(numerator) / time(denominator) over back-to-back pairs; the side that
    runs first alternates, so an order effect (caches, clocks) cancels out."""
    numerator(), denominator()  # warm both
    ratios = []
    for i in range(pairs):
        if i % 2:
            bottom = timed(denominator)
            ratios.append(timed(numerator) / bottom)
        else:
            top = timed(numerator)
            ratios.append(top / timed(denominator))
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "pairs": pairs}


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
                        help="batch 64: samples per run; thousands, so that the queue's last few steps (slots "
                             "draining) weigh as little as in a server's steady state")
    parser.add_argument("--samples-batch1", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=9, help="back-to-back pairs per ratio at batch 64")
    parser.add_argument("--pairs-batch1", type=int, default=31, help="back-to-back pairs per ratio at batch 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data = parse_data_spec(args.data).load("test")
    t_max = read_manifest(args.bundle).timesteps
    report: dict = {"bundle": args.bundle, "data": data.name, "alpha": args.alpha, "t_max": t_max}

    def efficiency(batch: int, mode: str, x: np.ndarray, pairs: int) -> dict:
        """Fixed(T_max) and Confidence(alpha) on one runtime (one session), switching its exit policy."""
        early_exit, fixed_exit = Confidence(args.alpha), Fixed(t_max)
        with Runtime.from_bundle(args.bundle, exit=early_exit, mode=mode, batch=batch, threads=args.threads) as rt:
            avg_t = float(np.mean([r.timesteps for r in rt.infer(x)]))

            def run_with(policy):
                rt.exit = policy
                rt.infer(x)

            speedup = paired(lambda: run_with(fixed_exit), lambda: run_with(early_exit), pairs)
        ideal = t_max / avg_t
        return {"mode": mode, "batch": batch, "avg_timesteps": avg_t, "speedup": speedup, "ideal": ideal,
                "efficiency": {k: v / ideal for k, v in speedup.items() if k != "pairs"}}

    def overhead(batch: int, x: np.ndarray, pairs: int) -> dict:
        with Runtime.from_bundle(args.bundle, exit=Fixed(t_max), mode="compact", batch=batch,
                                 threads=args.threads) as rt:
            ratio = paired(lambda: rt.infer(x), bare_loop(rt, x, batch), pairs)
        return {"batch": batch, "overhead": {k: v - 1.0 for k, v in ratio.items() if k != "pairs"}}

    x1 = data.x[: args.samples_batch1]
    x64 = data.x[: args.samples]
    report["batch1"] = efficiency(1, "slots", x1, args.pairs_batch1)
    report["batch64"] = [efficiency(64, mode, x64, args.pairs) for mode in ("slots", "compact", "naive")]
    report["overhead"] = [overhead(1, x1, args.pairs_batch1), overhead(64, x64, args.pairs)]

    def spread(d: dict, scale: float = 1.0, fmt: str = ".3f") -> str:
        return f"{scale * d['median']:{fmt}} [{scale * d['q1']:{fmt}}, {scale * d['q3']:{fmt}}]"

    b1 = report["batch1"]
    print(f"{data.name}, T_max {t_max}, Confidence({args.alpha}), ORT CPU; "
          f"median [quartiles] of paired runs: {args.pairs_batch1} on {len(x1)} samples at batch 1, "
          f"{args.pairs} on {len(x64)} at batch 64")
    print(f"batch 1 : avg T {b1['avg_timesteps']:.3f}, ideal {b1['ideal']:.2f}x, speedup {spread(b1['speedup'], fmt='.2f')} "
          f"-> efficiency {spread(b1['efficiency'])} (target >= 0.95)")
    print("batch 64:  mode     ideal  speedup              efficiency")
    for row in report["batch64"]:
        print(f"          {row['mode']:<8} {row['ideal']:5.2f}x {spread(row['speedup'], fmt='.2f'):<20} "
              f"{spread(row['efficiency'])}")
    print("          (target: slots efficiency >= 0.90)")
    for row in report["overhead"]:
        print(f"overhead, Fixed(T_max) runtime vs bare session.run loop, batch {row['batch']}: "
              f"{spread(row['overhead'], 100, '+.1f')} % (target <= 3 %)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
