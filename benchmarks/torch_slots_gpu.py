"""The torch executor in slot mode with device-resident states, on CUDA (or --device cpu for a smoke run).

For batch 1 and 64, with and without CUDA graphs, prints per step: the executor time (upload of
new x rows and reset, the step, read-back of confidence and prediction), the host overhead
(scheduler time around it) and the bytes that cross to and from the device.

    python benchmarks/torch_slots_gpu.py --checkpoint runs/fmnist --data fashion-mnist:../shared/data
    python benchmarks/torch_slots_gpu.py                # a fresh spiking_cnn on random 28x28 inputs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seenn_deploy.data import parse_data_spec
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.runtime import Confidence, Fixed, Runtime


def fresh_checkpoint(folder: Path) -> Path:
    from seenn_deploy.snn.checkpoint import CheckpointConfig, save_checkpoint
    from seenn_deploy.snn.zoo import create_model

    torch.manual_seed(0)
    model = create_model("spiking_cnn").eval()
    config = CheckpointConfig(arch="spiking_cnn", model={"num_classes": 10, "in_channels": 1, "image_size": [28, 28]},
                              timesteps=4, normalisation={"mean": [0.0], "std": [1.0]}, classes=[str(i) for i in range(10)])
    folder.mkdir(parents=True)
    save_checkpoint(folder, model, config)
    return folder


def measure(bundle: Path, x: np.ndarray, device: str, batch: int, graphs: bool, exit_policy) -> dict:
    from seenn_deploy.runtime.requests import Requests
    from seenn_deploy.runtime.scheduler import SlotScheduler

    with Runtime.from_bundle(bundle, backend="torch", exit=exit_policy, mode="slots", batch=batch,
                             device=device, cuda_graphs=graphs) as runtime:
        prepared = runtime.prepare(x)
        for rounds in (1, 2):  # the first round warms up (and captures the graph)
            scheduler = SlotScheduler(runtime.manifest, runtime.step, runtime.exit, batch, runtime.encoder,
                                      device_states=True)
            scheduler.add(Requests.of(prepared))
            calls, seconds = runtime.step.calls, runtime.step.seconds
            started = time.perf_counter()
            while not scheduler.idle:
                scheduler.tick()
            wall = time.perf_counter() - started
            device_states = scheduler.device
            scheduler.close()
        steps = scheduler.steps_run
        step_s = (runtime.step.seconds - seconds) / (runtime.step.calls - calls)
    return {"device": device, "batch": batch, "cuda_graphs": graphs, "exit": exit_policy.describe(), "steps": steps,
            "samples_per_s": len(x) / wall, "step_ms": 1e3 * step_s, "host_overhead_ms": 1e3 * (wall / steps - step_s),
            "bytes_to_device_per_step": device_states.bytes_to_device / steps,
            "bytes_to_host_per_step": device_states.bytes_to_host / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="seenn-bench-"))
    checkpoint = args.checkpoint or fresh_checkpoint(work / "ckpt")
    bundle = work / "bundle"
    export_checkpoint(checkpoint, bundle, ExportOptions())
    if args.data:
        x = parse_data_spec(args.data).load("test").subset(args.samples).x
    else:
        x = np.random.default_rng(0).uniform(0, 1, (args.samples, 1, 28, 28)).astype(np.float32)
    graph_options = (False, True) if args.device.startswith("cuda") else (False,)
    rows = []
    print(f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}, {len(x)} samples")
    print("batch graphs exit            steps  samples/s  step ms  host ms/step  B->dev/step  B->host/step")
    for batch in (1, 64):
        for graphs in graph_options:
            for policy in (Fixed(4), Confidence(args.alpha)):
                row = measure(bundle, x[: 512 if batch == 1 else len(x)], args.device, batch, graphs, policy)
                rows.append(row)
                print(f"{batch:>5} {str(graphs):<6} {row['exit']:<16} {row['steps']:>5} {row['samples_per_s']:>10.0f} "
                      f"{row['step_ms']:>8.3f} {row['host_overhead_ms']:>13.3f} {row['bytes_to_device_per_step']:>12.0f} "
                      f"{row['bytes_to_host_per_step']:>13.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
