"""Soak test of the streaming runtime: many submissions from many threads, cancellations, device faults.

Each client thread keeps a window of outstanding futures (a caller with bounded concurrency),
cancels a random outstanding one now and then (a client time-out), and checks every answer
against a fault-free reference run of the same sample. The step executor raises on every
`--fault-every`-th call (a device that fails now and then); each fault must fail exactly the
requests in flight in that step and nothing else. Counts:

  lost        futures never resolved (after close(), waited --patience seconds);
  duplicated  futures the worker answered twice (counted where it delivers);
  wrong       results that differ from the reference for that sample;
  failed      answered with the injected fault, per fault against the rows in flight at it.

Then the same load without faults, for the throughput ratio. Not a test: it prints figures.

    python benchmarks/soak_runtime.py --submissions 200000          # trains a digits bundle first
    python benchmarks/soak_runtime.py --bundle runs/digits.seenn --mode compact --batch 32
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Confidence, Runtime, read_manifest
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.loop import open_bundle_graphs


class InjectedFault(RuntimeError):
    def __init__(self, index: int) -> None:
        super().__init__(f"injected fault #{index}")
        self.index = index


class FaultyStep(Executor):
    """The real step graph; every `every`-th call raises InjectedFault and records the rows in flight then."""

    def __init__(self, inner: Executor, every: int) -> None:
        super().__init__(inner.inputs, inner.outputs, "faulty step")
        self.inner, self.every = inner, every
        self.runtime: "SoakRuntime | None" = None
        self.in_flight: list[int] = []  # per fault: requests holding a row in the failing step

    def _run_impl(self, feeds):
        if self.every and (self.calls + 1) % self.every == 0:
            self.in_flight.append(len(self.runtime.current.held()))
            raise InjectedFault(len(self.in_flight) - 1)
        return self.inner._run_impl(feeds)

    def close(self) -> None:
        self.inner.close()


class SoakRuntime(Runtime):
    """A Runtime that keeps a handle on its worker's scheduler and counts futures it answers twice."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current = None
        self.duplicated = 0

    def new_scheduler(self, claim=None):
        scheduler = super().new_scheduler(claim)
        if claim is not None:  # the worker's
            self.current = scheduler
        return scheduler

    def _deliver(self, settled) -> None:
        for future in settled.keys:  # only the worker delivers, so a mark on the future counts exactly
            self.duplicated += hasattr(future, "soak_delivered")
            future.soak_delivered = True
        super()._deliver(settled)


def digits_bundle(folder: Path) -> Path:
    """Train the small digits CNN briefly and export it (what the test suite's fixtures do)."""
    from seenn_deploy.export.exporter import export_checkpoint
    from seenn_deploy.train.trainer import TrainConfig, train

    train(TrainConfig(arch="spiking_cnn", data="digits", timesteps=4, epochs=10, out=folder / "ckpt", batch_size=64),
          log=lambda s: None, progress=False)
    export_checkpoint(folder / "ckpt", folder / "digits.seenn")
    return folder / "digits.seenn"


def soak(bundle: Path, x: np.ndarray, reference: list[tuple], args, fault_every: int) -> dict:
    manifest = read_manifest(bundle)
    step, encoder = open_bundle_graphs(bundle, manifest)
    faulty = FaultyStep(step, fault_every)
    runtime = SoakRuntime(manifest, faulty, encoder, Confidence(args.alpha), mode=args.mode, batch=args.batch)
    faulty.runtime = runtime
    tallies = [Counter() for _ in range(args.threads)]
    failed_at: list[Counter] = [Counter() for _ in range(args.threads)]

    def check(future: Future, sample: int, tally: Counter, failures: Counter) -> None:
        try:
            r = future.result(timeout=args.patience)
        except CancelledError:
            tally["cancelled"] += 1
        except FutureTimeout:
            tally["lost"] += 1
        except InjectedFault as exc:
            tally["failed"] += 1
            failures[exc.index] += 1
        except Exception:
            tally["other errors"] += 1
        else:
            tally["answered"] += 1
            tally["wrong"] += (r.prediction, r.confidence, r.timesteps) != reference[sample]

    def client(k: int) -> None:
        rng, window, tally = random.Random(args.seed + k), deque(), tallies[k]
        for i in range(k, args.submissions, args.threads):
            window.append((runtime.submit(x[i % len(x)]), i % len(x)))
            if rng.random() < args.cancel:  # a client time-out on one of its outstanding requests
                tally["cancel() too late"] += not window[rng.randrange(len(window))][0].cancel()
            if len(window) >= args.window:
                check(*window.popleft(), tally, failed_at[k])
        while window:
            check(*window.popleft(), tally, failed_at[k])

    started = time.perf_counter()
    clients = [threading.Thread(target=client, args=(k,)) for k in range(args.threads)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    seconds = time.perf_counter() - started
    runtime.close()
    total = sum(tallies, Counter())
    failures = sum(failed_at, Counter())
    in_flight = faulty.in_flight
    return {
        "fault_every": fault_every, "seconds": seconds, "throughput": (total["answered"] + total["failed"]) / seconds,
        "steps": faulty.calls, "duplicated": runtime.duplicated, **total,
        "faults": len(in_flight), "in_flight_at_faults": int(sum(in_flight)),
        "faults_failing_exactly_their_rows": sum(failures[i] == n for i, n in enumerate(in_flight)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="Default: train and export a digits bundle.")
    parser.add_argument("--data", default="digits", help="Samples, cycled (test split).")
    parser.add_argument("--submissions", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--window", type=int, default=64, help="Outstanding futures per client thread.")
    parser.add_argument("--cancel", type=float, default=0.01, help="Share of submissions followed by a cancel().")
    parser.add_argument("--fault-every", type=int, default=5000, help="Step calls between injected faults.")
    parser.add_argument("--mode", default="slots")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--patience", type=float, default=60.0, help="Seconds to wait for a future before calling it lost.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="seenn-soak-") as tmp:
        bundle = args.bundle or digits_bundle(Path(tmp))
        x = parse_data_spec(args.data).load("test").x
        with Runtime.from_bundle(bundle, exit=Confidence(args.alpha), batch=args.batch) as runtime:
            reference = [(r.prediction, r.confidence, r.timesteps) for r in runtime.infer(x)]
        runs = [soak(bundle, x, reference, args, args.fault_every), soak(bundle, x, reference, args, 0)]

    print(f"{args.submissions:,} submissions from {args.threads} threads (window {args.window}), {len(x)} samples "
          f"cycled, {args.mode} batch {args.batch}, Confidence({args.alpha}), ORT CPU, cancel {100 * args.cancel:g} %")
    columns = ["answered", "failed", "cancelled", "cancel() too late", "lost", "duplicated", "wrong", "other errors",
               "steps", "seconds", "throughput"]
    print(f"{'':<22}" + "".join(f"{c:>18}" for c in columns))
    for run in runs:
        label = f"fault every {run['fault_every']}" if run["fault_every"] else "no faults"
        print(f"{label:<22}" + "".join(f"{run.get(c, 0):>18,.1f}" if c in ("seconds", "throughput")
                                       else f"{run.get(c, 0):>18,}" for c in columns))
    faulty = runs[0]
    print(f"faults injected: {faulty['faults']}; failed {faulty['failed']:,} against {faulty['in_flight_at_faults']:,} "
          f"requests in flight at them; faults that failed exactly their in-flight rows: "
          f"{faulty['faults_failing_exactly_their_rows']}/{faulty['faults']}")
    print(f"throughput with faults / without: {faulty['throughput'] / runs[1]['throughput']:.3f}")


if __name__ == "__main__":
    main()
