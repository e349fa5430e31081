"""The price of the server hop: throughput through Triton against the in-process runtime, same bundle, same batch.

In process: every sample goes to `Runtime.submit` (slots mode, BATCH slots) from CLIENTS threads, each
waiting for its answer before the next, as the Triton clients do (and, for the ceiling, all queued at once).
Through Triton: `seenn-deploy serve`'s repository on a real tritonserver (the Python model runs the same
runtime with BATCH slots); CLIENTS tritonclient clients each send one sample per request, back to back,
over gRPC and over HTTP. Prints samples/s for each and the ratio Triton / in process (1 = a free hop),
the median of --rounds rounds.

    python benchmarks/triton_hop.py BUNDLE [--data digits] [--samples 2000] [--clients 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from seenn_deploy.runtime.api import Runtime
from seenn_deploy.runtime.manifest import read_manifest
from seenn_deploy.serve.launch import serve_bundle
from seenn_deploy.serve.model_repository import RepositoryOptions
from seenn_deploy.serve.server import find_installation, resolve_ports


def in_process(bundle: Path, x: np.ndarray, batch: int, clients: int, exit_spec: str | None,
               threads: int | None, queued: bool = False) -> float:
    """Samples per second through Runtime.submit from `clients` threads, each waiting for its answer before it
    sends the next sample, as the Triton clients do; queued=True: every sample submitted at once (the ceiling)."""
    with Runtime.from_bundle(bundle, exit=exit_spec, mode="slots", batch=batch, threads=threads) as runtime:
        runtime.infer(x[:batch])  # warm-up
        shares = np.array_split(np.arange(len(x)), clients)

        def client(rows: np.ndarray) -> None:
            if queued:
                wait([runtime.submit(x[r]) for r in rows])
            else:
                for r in rows:
                    runtime.submit(x[r]).result()

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, shares))
        elapsed = time.perf_counter() - start
    return len(x) / elapsed


def through_triton(url: str, protocol: str, x: np.ndarray, clients: int, model: str = "seenn") -> float:
    """Samples per second from `clients` tritonclient clients, one sample per request."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module

    def client(rows: np.ndarray) -> None:
        connection = module.InferenceServerClient(url)
        try:
            for r in rows:
                tensor = module.InferInput("x", [1, *x.shape[1:]], "FP32")
                tensor.set_data_from_numpy(x[r:r + 1])
                connection.infer(model, [tensor])
        finally:
            connection.close()

    client(np.arange(min(8, len(x))))  # warm-up: connections, the model's first batches
    shares = np.array_split(np.arange(len(x)), clients)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", default=None, help="Data spec for real samples (default: uniform noise in [0, 1]).")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="Slots of the runtime, in process and in Triton.")
    parser.add_argument("--exit", default=None, help="Exit policy (default: the bundle's).")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads, both sides.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    shape = read_manifest(args.bundle).input.shape
    if args.data:
        from seenn_deploy.data import parse_data_spec

        pool = parse_data_spec(args.data).load("test").x
        x = pool[np.arange(args.samples) % len(pool)]
    else:
        x = np.random.default_rng(0).random((args.samples, *shape), dtype=np.float32)

    options = RepositoryOptions(max_batch=args.batch, exit=args.exit, threads=args.threads)
    figures: dict[str, list[float]] = {"in_process": [], "in_process_queued": [], "grpc": [], "http": []}
    with serve_bundle(args.bundle, options, find_installation(), resolve_ports(0, 0, 0, "127.0.0.1"),
                      address="127.0.0.1") as served:
        urls = {"grpc": served.server.endpoints()["grpc"],
                "http": served.server.endpoints()["http"].removeprefix("http://")}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every side alike
            figures["in_process"].append(in_process(args.bundle, x, args.batch, args.clients, args.exit, args.threads))
            figures["in_process_queued"].append(in_process(args.bundle, x, args.batch, args.clients, args.exit,
                                                           args.threads, queued=True))
            for protocol, url in urls.items():
                figures[protocol].append(through_triton(url, protocol, x, args.clients))
    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(f"{args.bundle}: {args.samples} samples, {args.clients} clients, batch {args.batch}, "
          f"median of {args.rounds} rounds")
    print(f"  in process (Runtime.submit): {medians['in_process']:9.1f} samples/s   (every sample queued at once: "
          f"{medians['in_process_queued']:.1f})")
    for protocol in ("grpc", "http"):
        print(f"  Triton over {protocol:4s}:            {medians[protocol]:9.1f} samples/s   "
              f"ratio Triton / in process {medians[protocol] / medians['in_process']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"samples_per_s": medians, "rounds": figures,
                                         "ratio": {p: medians[p] / medians["in_process"] for p in ("grpc", "http")},
                                         "settings": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
