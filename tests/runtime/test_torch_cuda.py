"""The GPU paths of the torch and ONNX Runtime backends, as far as a CPU machine shows them: TF32 off around
every torch call, a warm-up that leaves the states alone, device states (and their CUDA graph) reused across
schedulers, clear refusals of a device or provider that is not there, and the CLI's --device / --providers.
On a GPU, benchmarks/gpu_check.py runs the same paths with CUDA graphs (tests/test_gpu_check.py runs its dry run).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Confidence, Runtime, read_manifest
from seenn_deploy.runtime.executors.base import TensorInfo
from seenn_deploy.runtime.executors.torch_executor import TorchExecutor, full_fp32, open_torch_graphs
from seenn_deploy.runtime.manifest import RESET, X, StateInfo


class Probe(nn.Module):
    """A step graph that records the TF32 settings it runs under; its state counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, x, reset, count):
        self.seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        count = torch.where(reset, torch.zeros_like(count), count) + 1
        confidence = x.mean(dim=1)
        return confidence, torch.zeros_like(count, dtype=torch.int32), x, count


STATES = [StateInfo("count", (), 0.0)]


def probe_executor() -> TorchExecutor:
    inputs = [TensorInfo(X, (None, 3), np.dtype(np.float32)), TensorInfo(RESET, (None,), np.dtype(np.bool_)),
              TensorInfo("count", (None,), np.dtype(np.float32))]
    return TorchExecutor(Probe(), inputs, ["confidence", "prediction", "logits", STATES[0].output], "cpu", "probe")


def test_every_call_runs_without_tf32_and_restores_the_settings():
    executor = probe_executor()
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    assert before[0] == "tf32"  # torch's default for cuDNN convolutions: what made the reference flip spikes
    executor.run({X: np.ones((2, 3), np.float32), RESET: np.ones(2, bool), "count": np.zeros(2, np.float32)})
    states = executor.open_states(2, STATES)
    states.step({0: np.ones(3, np.float32)}, np.ones(2, bool))
    assert executor.module.seen == [("ieee", "ieee")] * 2
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    with full_fp32(torch):
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == before[0]


def test_the_warm_up_before_a_capture_leaves_the_states_alone():
    """The graph's first replay must start from the states as they were: a warm-up that wrote them (as it did,
    racing the clone meant to restore them) would run the first step twice."""
    executor = probe_executor()
    states = executor.open_states(2, STATES)
    states.step(None, np.ones(2, bool))
    states.step(None, np.zeros(2, bool))
    before = [s.clone() for s in states.states]
    states.warm_up()
    assert all(torch.equal(a, b) for a, b in zip(before, states.states)) and before[0].tolist() == [2.0, 2.0]


def test_device_states_and_their_graph_are_reused_by_the_next_scheduler():
    executor = probe_executor()
    first = executor.open_states(4, STATES)
    first.step(None, np.ones(4, bool))
    tensors = [first.x, first.reset, *first.states]
    first.close()
    second = executor.open_states(4, STATES)  # the next infer(): same tensors, so a captured graph replays
    assert second is first and [second.x, second.reset, *second.states] == tensors
    assert second.states[0].tolist() == [0.0] * 4 and second.bytes_to_device == 0  # a fresh sequence
    assert executor.open_states(4, STATES) is not second  # a second scheduler at once gets its own
    assert executor.open_states(3, STATES).batch == 3


def test_the_runtime_imports_nothing_from_the_torch_side():
    """No import statement, not even one inside a function: the torch backend gets its modules from the source
    the torch side registers (the runtime names that module for importlib the first time; it imports none of its
    names)."""
    import ast
    from pathlib import Path

    import seenn_deploy.runtime

    torch_side = ("seenn_deploy.export", "seenn_deploy.snn", "seenn_deploy.train", "seenn_deploy.convert",
                  "seenn_deploy.calib", "seenn_deploy.profile", "seenn_deploy.cli", "seenn_deploy.engine")
    found = []
    for path in Path(seenn_deploy.runtime.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith(torch_side)]
    assert found == []


def test_the_torch_backend_refuses_a_device_it_does_not_have(digits_bundle):
    manifest = read_manifest(digits_bundle)
    with pytest.raises(UserError, match=r"device cuda:0: this torch is a CPU build; use --device cpu"):
        open_torch_graphs(digits_bundle, manifest, device="cuda:0")
    with pytest.raises(UserError, match=r"device 'tpu' is not one the torch backend takes: use cpu, cuda or cuda:N"):
        open_torch_graphs(digits_bundle, manifest, device="tpu")


def test_a_gpu_provider_that_did_not_load_is_refused_with_the_fix(digits_bundle):
    from seenn_deploy.runtime.executors.ort import parse_providers

    assert parse_providers("cuda:1,cpu") == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    with pytest.raises(UserError, match=r"'gpu' is not an ONNX Runtime execution provider; use cpu, cuda, tensorrt"):
        parse_providers("gpu")
    with pytest.raises(UserError) as info:  # this machine's onnxruntime is the CPU build
        Runtime.from_bundle(digits_bundle, providers=parse_providers("cuda,cpu"))
    message = str(info.value)
    assert "this onnxruntime has no CUDAExecutionProvider (it has " in message
    assert "pip install 'seenn-deploy[gpu-cu12]'" in message and "pip uninstall -y onnxruntime" in message
    with Runtime.from_bundle(digits_bundle, exit=Confidence(0.9), providers=["CPUExecutionProvider"]) as runtime:
        assert runtime.step.placement == "CPUExecutionProvider" and runtime.step.cuda_device is None


def test_the_cli_takes_device_and_providers_for_the_backend_that_uses_them(digits_bundle, run_cli):
    run = ["run", digits_bundle, "--data", "digits", "--samples", "20"]
    assert "this torch is a CPU build" in run_cli(*run, "--backend", "torch", "--device", "cuda:0").error()
    assert "--providers, e.g. --providers cuda:1,cpu" in run_cli(*run, "--device", "cuda:1").error()
    assert "--providers are ONNX Runtime's options" in run_cli(*run, "--backend", "torch", "--providers", "cuda").error()
    assert "seenn-deploy[gpu-cu12]" in run_cli(*run, "--providers", "cuda,cpu").error()
    assert "runs on a GPU; give cuda or cuda:N" in run_cli(*run, "--backend", "trt", "--device", "cpu").error()
    result = run_cli(*run, "--backend", "torch", "--device", "cpu")
    assert result.code == 0 and "torch on torch cpu" in result.out, result.err
    result = run_cli(*run, "--providers", "cpu")
    assert result.code == 0 and "ort on CPUExecutionProvider" in result.out, result.err
    bench = ["bench", "--engine", digits_bundle, "--synthetic", "--samples", "32", "--iterations", "1"]
    assert "this torch is a CPU build" in run_cli(*bench, "--backend", "torch", "--device", "cuda").error()
    assert "--power nvml measures a GPU" in run_cli(*bench, "--power", "nvml").error()
    verify = ["verify", digits_bundle, "--data", "digits", "--samples", "20"]
    assert "this torch is a CPU build" in run_cli(*verify, "--backend", "torch", "--device", "cuda:0").error()
    assert "seenn-deploy[gpu-cu12]" in run_cli(*verify, "--providers", "cuda").error()
