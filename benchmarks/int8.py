"""INT8 against FP32 on ONNX Runtime's CPU provider: throughput ratios, Fixed(T_max) and early exit, batch 1 and 64.

One command, one table (bundles exported from the same checkpoint)::

    python benchmarks/int8.py --fp32 /tmp/int8/fm.fp32.seenn --int8 /tmp/int8/fm.int8.seenn \\
        --int8 /tmp/int8/fm.int8-single.seenn --data fashion-mnist:/work/shared/data \\
        --early-exit confidence:0.496@2 --threads 1

For each INT8 bundle, exit and batch it prints FP32 time / INT8 time (> 1: INT8 is faster; target
>= 1.5 at batch 64) as the median and quartiles of --pairs paired runs: the two sides run back to
back through `Runtime.infer` on the same --samples test samples, the side that goes first
alternating, each timed in the calling thread's CPU seconds (ONNX Runtime computes in that thread
with --threads 1), which other load on the machine barely moves. It also prints which ops the
optimised INT8 step graph runs (ONNX Runtime's own graph after its QDQ fusions) and the share of
the FP32 step's kernel time that its Conv / Gemm / MatMul layers take: the most INT8 can win there.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Runtime, read_manifest

from runtime_early_exit import paired  # this folder, beside this script: the same paired-ratio statistics

WEIGHTED = ("Conv", "FusedConv", "Gemm", "MatMul", "MatMulIntegerToFloat", "QLinearConv", "ConvInteger",
            "MatMulInteger", "QGemm")
CONV_LAYOUT = ("ReorderInput", "ReorderOutput")  # the NCHWc layout changes around ORT's FP32 convolutions


def timer(runtime: Runtime, x: np.ndarray):
    def run() -> float:
        started = time.thread_time()
        runtime.infer(x)
        return time.thread_time() - started
    return run


def optimised_ops(step: Path) -> dict:
    """Op types of ONNX Runtime's optimised CPU graph (basic + extended + layout fusions) of a step graph."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(step), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return dict(collections.Counter(n.op_type for n in graph.node if n.op_type in WEIGHTED))


def weighted_share(step: Path, batch: int, runs: int = 30) -> float:
    """Share of the step graph's kernel time in its weighted ops and their layout changes (ORT profiling, one
    thread, random inputs): INT8 can speed up that part only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = 1, True, 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(step), options, providers=["CPUExecutionProvider"])
        feed = {i.name: (np.random.rand(batch, *i.shape[1:]).astype(np.float32) if i.type == "tensor(float)"
                         else np.zeros(batch, np.bool_)) for i in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernel = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernel[event["args"]["op_name"]] += event["dur"]
    return sum(v for k, v in kernel.items() if k in WEIGHTED + CONV_LAYOUT) / max(sum(kernel.values()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, help="the FP32 bundle")
    parser.add_argument("--int8", action="append", required=True, help="an INT8 bundle of the same checkpoint (repeat)")
    parser.add_argument("--data", required=True, help="data spec; its test split is used")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--early-exit", default="confidence", help="the early exit (default: the bundle's calibrated one)")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    x = parse_data_spec(args.data).load("test").x[: args.samples]
    t_max = read_manifest(Path(args.fp32)).timesteps
    exits = {"Fixed(T_max)": f"fixed:{t_max}", "early exit": args.early_exit}
    report = {"fp32": args.fp32, "samples": len(x), "threads": args.threads, "bundles": {}}
    fp32_step = Path(args.fp32) / read_manifest(Path(args.fp32)).graphs["step"]
    report["fp32_weighted_share"] = {b: weighted_share(fp32_step, int(b)) for b in args.batches.split(",")}
    for bundle in args.int8:
        manifest = read_manifest(Path(bundle))
        rows = {}
        for name, spelled in exits.items():
            for batch in (int(b) for b in args.batches.split(",")):
                opened = [Runtime.from_bundle(b, exit=spelled, mode="slots", batch=batch, threads=args.threads)
                          for b in (args.fp32, bundle)]
                try:
                    samples = x[: max(batch * 4, 64)] if batch == 1 else x
                    rows[f"{name}, batch {batch}"] = paired(timer(opened[0], samples), timer(opened[1], samples),
                                                            args.pairs)
                finally:
                    for runtime in opened:
                        runtime.close()
        report["bundles"][bundle] = {"weights": manifest.fp16_weights, "ratios": rows,
                                     "optimised_int8_ops": optimised_ops(Path(bundle) / manifest.graphs["step"])}
    print(f"INT8 over FP32 on ONNX Runtime CPU ({args.threads} thread(s), thread CPU time, {len(x)} samples): "
          "FP32 time / INT8 time, median [q1, q3]")
    shares = ", ".join(f"batch {b}: {s:.0%} (ceiling {1 / (1 - s):.2f}x)" for b, s in report["fp32_weighted_share"].items())
    print(f"  FP32 step: Conv / Gemm (+ layout) share of kernel time {shares}; the rest is membranes, resets and "
          "the exit head, the same in both")
    for bundle, entry in report["bundles"].items():
        print(f"  {bundle} ({entry['weights']} INT8 weights); optimised graph runs {entry['optimised_int8_ops']}")
        for row, r in entry["ratios"].items():
            print(f"    {row:28s} {r['median']:.2f}x [{r['q1']:.2f}, {r['q3']:.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
