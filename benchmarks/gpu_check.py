"""The GPU paths of seenn-deploy in one call, on a GPU machine with torch (CUDA), CuPy and NVML but no TensorRT.

    python benchmarks/gpu_check.py [--cpu] [--bundle DIR --checkpoint DIR] [--only env,cudart,torch,nvml]

Results go to $OUT/gpu_check.json (OUT defaults to /tmp/gpu_check), a log to stdout; exit 1 if a check failed.
Sections, each independent:

  env     driver, CUDA, torch, CuPy, ONNX Runtime versions; NVML's GPU for CUDA device 0 (by PCI bus id).
  cudart  TrtExecutor's real cuda-python path (allocations, async copies, stream capture, graph instantiate /
          launch, ping-pong parity graphs, teardown) around a stand-in `tensorrt` whose execute_async_v3
          launches a CuPy kernel of a toy step on the given stream; every step checked against numpy. Graphs
          are captured once per (batch, parity) over sequences; a plan that synchronizes inside its enqueue
          breaks the capture: it must be undone (no graph left, error cleared), reported, and run without
          graphs; 20 executors opened and closed leak no device memory. Bytes read back per step.
  torch   the torch backend on CUDA in slot mode with device states, CUDA graphs on and off, against ONNX
          Runtime on the CPU (predictions, timesteps, confidence); the same with TF32 switched on globally (the
          executor must turn it off); a warm-up/clone race probe and captures per infer(); per-step host time
          as a share of the step at batch 1 and 64 with graphs; bytes read back per step.
  nvml    the sampler's energy counter against its integrated power trace, a restarted second measurement,
          and bench's energy per sample for early exit against Fixed(T_max), NVML bound to the GPU the run used.

--cpu is the dry run CI does (tests/test_gpu_check.py): cuda-python is the test suite's FakeCudart, the toy
kernel runs in numpy, torch runs on the CPU (no graphs), NVML is the test suite's stand-in. It checks that this
script and the code paths it drives still fit together; the figures mean nothing there.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import importlib.util
import json
import os
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
K = 10  # classes of the toy plan
INPUTS = {"x": (np.float32, (K,)), "reset": (np.bool_, ()), "v": (np.float32, (K,)), "acc": (np.float32, (K,)),
          "count": (np.float32, ())}
OUTPUTS = {"confidence": (np.float32, ()), "prediction": (np.int32, ()), "logits": (np.float32, (K,)),
           "v_out": (np.float32, (K,)), "acc_out": (np.float32, (K,)), "count_out": (np.float32, ())}
STATES = [("v", "v_out"), ("acc", "acc_out"), ("count", "count_out")]


def log(*parts) -> None:
    print(*parts, flush=True)


def load_test_module(rel: str):
    """A module of the test suite (its stand-ins), loaded from its file."""
    spec = importlib.util.spec_from_file_location(Path(rel).stem + "_for_gpu_check", REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the toy plan: numpy reference and CUDA kernel
def ref_step(x, reset, v, acc, count) -> dict[str, np.ndarray]:
    r = reset[:, None]
    cnt = np.where(reset, 0, count) + np.float32(1)
    vv = np.float32(0.9) * np.where(r, 0, v) + x
    s = (vv >= 1).astype(np.float32)
    logits = (s + np.float32(0.1) * vv).astype(np.float32)
    acc_out = (np.where(r, 0, acc) + logits).astype(np.float32)
    mean = acc_out / cnt[:, None]
    conf = (1 / np.exp(mean - mean.max(1, keepdims=True)).sum(1)).astype(np.float32)
    return dict(confidence=conf, prediction=mean.argmax(1).astype(np.int32), logits=logits,
                v_out=np.where(s > 0, 0, vv).astype(np.float32), acc_out=acc_out, count_out=cnt)


KERNEL = r"""
extern "C" __global__ void toy_step(const float* x, const bool* reset, const float* v, const float* acc,
    const float* count, float* conf, int* pred, float* logits, float* v_out, float* acc_out, float* count_out,
    int B, int K) {
  int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  bool r = reset[b];
  float cnt = (r ? 0.f : count[b]) + 1.f, best = -1e30f;
  int arg = 0;
  for (int k = 0; k < K; ++k) {
    float vv = 0.9f * (r ? 0.f : v[b*K+k]) + x[b*K+k];
    float s = vv >= 1.f ? 1.f : 0.f;
    v_out[b*K+k] = s > 0.f ? 0.f : vv;
    float lg = s + 0.1f * vv; logits[b*K+k] = lg;
    float a = (r ? 0.f : acc[b*K+k]) + lg; acc_out[b*K+k] = a;
    float m = a / cnt; if (m > best) { best = m; arg = k; }
  }
  float z = 0.f;
  for (int k = 0; k < K; ++k) z += expf(acc_out[b*K+k] / cnt - best);
  conf[b] = 1.f / z; pred[b] = arg; count_out[b] = cnt;
}
"""


def toy_tensorrt(rt, cpu: bool, sync_in_enqueue: bool = False):
    """A `tensorrt` whose plan is the toy step: a CuPy kernel launched on the given stream (numpy on the
    FakeCudart's queue with --cpu); everything CUDA around it is the executor's own cuda-python calls."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.nptype = lambda dtype: dtype
    trt.stats = stats = {"plain": 0, "captured": 0}
    kernel = None if cpu else __import__("cupy").RawKernel(KERNEL, "toy_step")

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    def capturing(handle) -> bool:
        return rt.cudaStreamIsCapturing(handle)[1] != rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= 64:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.shapes["x"][0], *(INPUTS | OUTPUTS)[name][1])

        def set_tensor_address(self, name, pointer):
            if int(pointer) % 256:
                return False  # TensorRT needs 256-byte aligned tensors
            self.addresses[name] = int(pointer)
            return True

        def execute_async_v3(self, handle):
            stats["captured" if capturing(handle) else "plain"] += 1
            if sync_in_enqueue and rt.cudaStreamSynchronize(handle)[0] != rt.cudaError_t.cudaSuccess:
                return False  # what a plan whose enqueue synchronizes does under capture
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            if cpu:
                rt._enqueue(handle, lambda: self.compute(shapes, addresses))
                return True
            import cupy as cp

            batch = shapes["x"][0]
            args = [np.uint64(addresses[n]) for n in [*INPUTS, *OUTPUTS]] + [np.int32(batch), np.int32(K)]
            with cp.cuda.ExternalStream(handle):
                kernel(((batch + 127) // 128,), (128,), tuple(args))
            return True

        @staticmethod
        def compute(shapes, addresses):
            batch = shapes["x"][0]

            def at(name):
                dtype, rows = (INPUTS | OUTPUTS)[name]
                n = batch * int(np.prod(rows, dtype=np.int64)) * np.dtype(dtype).itemsize
                raw = np.ctypeslib.as_array(ctypes.cast(addresses[name], ctypes.POINTER(ctypes.c_uint8)), (n,))
                return raw.view(dtype).reshape(batch, *rows)

            for name, value in ref_step(*(at(n).copy() for n in INPUTS)).items():
                at(name)[...] = value

    class Engine:
        num_io_tensors = len(INPUTS) + len(OUTPUTS)

        def get_tensor_name(self, i):
            return [*INPUTS, *OUTPUTS][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in INPUTS else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return np.dtype((INPUTS | OUTPUTS)[name][0])

        def get_tensor_shape(self, name):
            return (-1, *(INPUTS | OUTPUTS)[name][1])

        def get_tensor_profile_shape(self, name, profile):
            rows = INPUTS[name][1]
            return [(1, *rows), (16, *rows), (64, *rows)]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return Engine()

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


def install_cuda(cpu: bool, sync_in_enqueue: bool = False):
    """(cudart, toy tensorrt) installed in sys.modules, and TrtExecutor imported against them."""
    if cpu:
        rt = load_test_module("tests/runtime/test_trt.py").FakeCudart()
        for name, module in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", types.ModuleType("cuda.bindings")),
                             ("cuda.bindings.runtime", rt)):
            sys.modules[name] = module
    else:
        from cuda.bindings import runtime as rt
    sys.modules["tensorrt"] = trt = toy_tensorrt(rt, cpu, sync_in_enqueue)
    from seenn_deploy.runtime.executors.trt import TrtExecutor

    return rt, trt, TrtExecutor


# ---------------------------------------------------------------- section: cudart (TrtExecutor on real CUDA)
def check_cudart(cpu: bool, work: Path) -> dict:
    plan = work / "toy.plan"
    plan.write_bytes(b"toy")
    rng = np.random.default_rng(0)
    samples = rng.normal(0.3, 0.5, (200, K)).astype(np.float32)
    res: dict = {}
    for label, sync_in_enqueue in (("graphs", False), ("capture_breaks", True)):
        rt, trt, TrtExecutor = install_cuda(cpu, sync_in_enqueue)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = TrtExecutor(plan, None, 0, STATES, cuda_graphs=True, label=label)
            feeds = {"x": samples[:5], "reset": np.ones(5, bool), "v": np.zeros((5, K), np.float32),
                     "acc": np.zeros((5, K), np.float32), "count": np.zeros(5, np.float32)}
            got, want = ex.run(feeds), ref_step(*feeds.values())
            worst = max(float(np.abs(got[n].astype(np.float64) - want[n]).max()) for n in want)
            steps, started = 0, time.perf_counter()
            for batch, count in ((7, 30), (3, 10), (7, 8)):  # batch 7 again after run(): its graphs replay
                if steps and batch == 7:
                    ex.run(feeds)
                ex.bind_states(batch)
                x = np.zeros((batch, K), np.float32)
                state = {"v": np.zeros((batch, K), np.float32), "acc": np.zeros((batch, K), np.float32),
                         "count": np.zeros(batch, np.float32)}
                for t in range(count):
                    reset = np.ones(batch, bool) if t == 0 else rng.random(batch) < 0.3
                    rows = {int(s): samples[(steps * 7 + int(s)) % len(samples)] for s in np.flatnonzero(reset)}
                    for slot, row in rows.items():
                        x[slot] = row
                    ref = ref_step(x, reset, state["v"], state["acc"], state["count"])
                    state = {"v": ref["v_out"], "acc": ref["acc_out"], "count": ref["count_out"]}
                    conf, pred, logits = ex.step_device(rows, reset, logits=True)
                    worst = max(worst, float(np.abs(conf - ref["confidence"]).max()),
                                float(np.abs(logits - ref["logits"]).max()))
                    assert (pred == ref["prediction"]).all(), (label, batch, t)
                    steps += 1
            ms = 1e3 * (time.perf_counter() - started) / steps
            graphs_left = len(getattr(rt, "execs", {})) if cpu else None
            ex.close()
        last = rt.cudaGetLastError()[0]
        res[label] = {"max_abs_err": worst, "steps": steps, "ms_per_step": ms, "graph_error": ex.graph_error,
                      "warnings": [str(w.message) for w in caught], "last_error_after_close": getattr(last, "name", last),
                      "instantiated_graphs_before_close": graphs_left, "bytes_back_per_step_batch7": 7 * 8, **trt.stats}
        log(f"[cudart] {label}: {res[label]}")
        assert worst < 1e-5, worst
        assert int(last) == 0, f"CUDA error left set: {last}"
    graphs, broken = res["graphs"], res["capture_breaks"]
    assert graphs["graph_error"] is None and graphs["captured"] == 4, graphs  # (7, 0/1), (3, 0/1); 7 again replays
    assert broken["graph_error"] and broken["captured"] == 1 and broken["warnings"], broken
    if not cpu:  # leak check: 20 executors opened, stepped with graphs and closed
        rt, _, TrtExecutor = install_cuda(cpu)
        free0 = rt.cudaMemGetInfo()[1]
        for _ in range(20):
            ex = TrtExecutor(plan, None, 0, STATES, cuda_graphs=True)
            ex.bind_states(64)
            for _ in range(4):
                ex.step_device(None, np.ones(64, bool))
            ex.close()
        res["leak_bytes_20_executors"] = int(free0 - rt.cudaMemGetInfo()[1])
        log(f"[cudart] leak over 20 open/close: {res['leak_bytes_20_executors']} bytes")
    for name in ("tensorrt", "cuda.bindings.runtime", "cuda.bindings", "cuda"):
        if cpu or name == "tensorrt":
            sys.modules.pop(name, None)
    return res


# ---------------------------------------------------------------- section: torch backend on CUDA
def ensure_bundle(args, work: Path) -> tuple[Path, Path]:
    if args.bundle and args.checkpoint:
        return Path(args.bundle), Path(args.checkpoint)
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
    from seenn_deploy.train.trainer import TrainConfig, train

    checkpoint, bundle = work / "ckpt", work / "digits.seenn"
    if not bundle.exists():
        train(TrainConfig(arch="spiking_cnn", data="digits", timesteps=4, epochs=10, out=checkpoint, batch_size=64),
              log=lambda line: None, progress=False)
        export_checkpoint(checkpoint, bundle, ExportOptions(encoder_split="on"))
    return bundle, checkpoint


def check_torch(args, cpu: bool, work: Path) -> dict:
    import torch

    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.profile.bench import BenchSettings, run_bench
    from seenn_deploy.runtime import Confidence, Runtime
    from seenn_deploy.runtime.executors.torch_executor import open_torch_graphs
    from seenn_deploy.runtime.loop import normalise
    from seenn_deploy.runtime.manifest import read_manifest

    device = "cpu" if cpu else "cuda:0"
    bundle, checkpoint = ensure_bundle(args, work)
    x = parse_data_spec("digits").load("test").x[: 64 if cpu else None]
    res: dict = {}

    def infer(backend: str, **options):
        with Runtime.from_bundle(bundle, backend=backend, exit=Confidence(0.9), mode="slots", batch=16, **options) as r:
            r.infer(x[:32])  # warm-up (and the captures)
            started = time.perf_counter()
            out = r.infer(x)
            return out, time.perf_counter() - started, r.step

    want, _, _ = infer("ort")
    for name, graphs, tf32 in (("eager", False, False), ("graphs", True, False), ("graphs_global_tf32_on", True, True)):
        if not cpu:
            torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
        got, seconds, step = infer("torch", checkpoint=checkpoint, device=device, cuda_graphs=graphs)
        same = [(g.prediction, g.timesteps) == (w.prediction, w.timesteps) for g, w in zip(got, want)]
        dconf = max(abs(g.confidence - w.confidence) for g, w, s in zip(got, want, same) if s)
        res[name] = {"agree_with_ort_cpu": float(np.mean(same)), "max_conf_diff": float(dconf),
                     "samples_per_s": len(x) / seconds, "captures": step.captures, "graph_error": step.graph_error,
                     "placement": step.placement}
        log(f"[torch] {name}: {res[name]}")
        assert res[name]["agree_with_ort_cpu"] >= 0.99, res[name]
        assert step.captures == (1 if graphs and not cpu else 0), "one capture per batch size, not per infer()"
    manifest = read_manifest(bundle)
    open_graph = open_torch_graphs(bundle, manifest, checkpoint, device, cuda_graphs=not cpu)
    step, encoder = open_graph("step"), open_graph("encoder")
    eager = open_torch_graphs(bundle, manifest, checkpoint, device, cuda_graphs=False)("step")
    encoded = encoder.run({"x": normalise(manifest, x[:16])})["encoded"]
    rows = {i: encoded[i] for i in range(16)}
    ref = eager.open_states(16, manifest.states)
    c_ref, _ = ref.step(rows, np.ones(16, bool))
    c2_ref, _ = ref.step(None, np.zeros(16, bool))
    mismatches, first_steps = 0, []
    for _ in range(20):  # the race probe: every sequence's first two steps against eager ones
        states = step.open_states(16, manifest.states)
        started = time.perf_counter()
        c, _ = states.step(rows, np.ones(16, bool))
        first_steps.append(time.perf_counter() - started)
        c2, _ = states.step(None, np.zeros(16, bool))
        mismatches += int(not (np.allclose(c, c_ref, atol=1e-5) and np.allclose(c2, c2_ref, atol=1e-5)))
        res["bytes_back_per_step_batch16"] = states.bytes_to_host / 2
        states.close()
    res["race_probe_mismatches_of_20"] = mismatches
    res["captures_over_20_sequences"] = step.captures
    res["first_step_ms_median"] = 1e3 * float(np.median(first_steps))
    log(f"[torch] race mismatches {mismatches}/20, captures {step.captures}, first step "
        f"{res['first_step_ms_median']:.2f} ms, {res['bytes_back_per_step_batch16']:.0f} bytes back per step")
    assert mismatches == 0 and step.captures == (0 if cpu else 1)
    for batch in (1, 64):  # host time per step outside the executor, with graphs, in steady state
        settings = BenchSettings(backend="torch", batch=batch, exit="confidence:0.9", warmup_s=0.1 if cpu else 0.5,
                                 duration_s=0.3 if cpu else 2.0, power="none")
        run = run_bench(bundle, x, None, "digits", settings, checkpoint=checkpoint, device=device,
                        cuda_graphs=not cpu).runs[0]
        res[f"batch{batch}"] = {"step_ms": run.step_ms, "host_ms_per_step": run.host_ms_per_step,
                                "host_share": run.host_ms_per_step / (run.host_ms_per_step + run.step_ms),
                                "samples_per_s": run.throughput}
        log(f"[torch] batch {batch}: {res[f'batch{batch}']}")
    return res


# ---------------------------------------------------------------- section: NVML
def check_nvml(args, cpu: bool, work: Path) -> dict:
    from seenn_deploy.profile.nvml import NvmlSampler

    if cpu:  # the test suite's stand-in NVML, one GPU
        fakes = load_test_module("tests/profile/test_nvml.py")
        sys.modules["pynvml"] = fakes.FakeNvml(fakes.GPUS[:1])
        burn = time.sleep
    else:
        import torch

        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

        def burn(seconds: float) -> None:
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                for _ in range(20):
                    a @ a
                torch.cuda.synchronize()

    sampler = NvmlSampler(0, 20)
    res: dict = {"gpu": sampler.gpu_name, "matched_by": sampler.matched, "energy_counter": sampler.has_counter}
    sampler.start()
    burn(0.3 if cpu else 3.0)
    busy = sampler.stop()
    trace = busy["trace"]
    integral = sum((b["t"] - a["t"]) * (a["mw"] + b["mw"]) / 2 for a, b in zip(trace, trace[1:]))
    time.sleep(0.1 if cpu else 1.0)
    idle = measure_idle(sampler, 0.2 if cpu else 2.0)
    sampler.close()
    res["busy"] = {"energy_mj": busy["energy_mj"], "trace_integral_mj": integral, "samples": len(trace),
                   "mean_power_w": busy["mean_power_w"]}
    res["idle_after"] = {"energy_mj": idle["energy_mj"], "mean_power_w": idle["mean_power_w"],
                         "samples": len(idle["trace"]), "starts_fresh": idle["trace"][0]["t"] < 0.1}
    log(f"[nvml] {res}")
    assert res["idle_after"]["starts_fresh"] and idle["trace"] != trace
    if not cpu:  # energy per sample: early exit against Fixed(T_max), NVML on the GPU the run used
        from seenn_deploy.data import parse_data_spec
        from seenn_deploy.profile.bench import BenchSettings, run_bench

        bundle, checkpoint = ensure_bundle(args, work)
        data = parse_data_spec("digits").load("test")
        settings = BenchSettings(backend="torch", batch=64, exit="confidence:0.9", warmup_s=0.5, duration_s=5.0,
                                 compare_fixed=True, power="nvml")
        report = run_bench(bundle, data.x, data.y, "digits", settings, checkpoint=checkpoint, device="cuda:0",
                           cuda_graphs=True)
        res["energy_per_sample_mj"] = {run.exit: run.power["energy_mj"] / run.samples for run in report.runs}
        res["avg_timesteps"] = {run.exit: run.avg_timesteps for run in report.runs}
        res["power_source"] = report.runs[0].power["source"] + ", " + report.runs[0].power["gpu"]
        log(f"[nvml] energy per sample {res['energy_per_sample_mj']} at {res['avg_timesteps']}")
    return res


def measure_idle(sampler, seconds: float) -> dict:
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()


def check_env(cpu: bool) -> dict:
    res = {"python": sys.version.split()[0]}
    for name in ("torch", "cupy", "onnxruntime", "cuda.bindings", "pynvml"):
        try:
            module = __import__(name, fromlist=["_"])
            res[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a report, not a failure
            res[name] = f"missing ({type(exc).__name__})"
    if not cpu:
        import torch

        from seenn_deploy.profile.nvml import cuda_bus_id
        from seenn_deploy.runtime.executors.cuda_runtime import cuda_version, gpu_info, load_cudart

        rt = load_cudart()
        res.update(torch_cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0), gpu_info=gpu_info(rt),
                   driver_cuda=cuda_version(rt.cudaDriverGetVersion()[1]),
                   bindings_cuda=cuda_version(rt.cudaRuntimeGetVersion()[1]), cuda0_bus=cuda_bus_id(0))
    log(f"[env] {res}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on a machine without a GPU")
    parser.add_argument("--bundle", help="a digits bundle (default: train and export one)")
    parser.add_argument("--checkpoint", help="its checkpoint")
    parser.add_argument("--only", default="env,cudart,torch,nvml")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/gpu_check"))
    work = Path(os.environ.get("WORK", "/tmp/gpu_check_work"))  # not under $OUT: only the report comes back
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    sections = {"env": lambda: check_env(args.cpu), "cudart": lambda: check_cudart(args.cpu, work),
                "torch": lambda: check_torch(args, args.cpu, work), "nvml": lambda: check_nvml(args, args.cpu, work)}
    results: dict = {"mode": "cpu dry run" if args.cpu else "gpu"}
    chosen, failed = args.only.split(","), 0
    for name in chosen:
        started = time.perf_counter()
        try:
            results[name] = sections[name]()
        except Exception as exc:  # noqa: BLE001 - every section reports, the others still run
            failed += 1
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            log(f"[{name}] FAILED: {exc}\n{traceback.format_exc()}")
        results[name + "_s"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    log(f"{len(chosen) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
