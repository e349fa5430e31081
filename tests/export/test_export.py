"""Export: every zoo model's ONNX step loop equals its torch multi-step forward; bundles are clean or absent."""

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, ExportSource, export_bundle, export_checkpoint
from seenn_deploy.export.onnx_export import FORBIDDEN_OPS
from seenn_deploy.runtime.executors.ort import OrtExecutor
from seenn_deploy.runtime.loop import open_bundle_graphs, run_timesteps
from seenn_deploy.runtime.manifest import METADATA_KEY, read_manifest
from seenn_deploy.snn.zoo import create_model, list_models
from seenn_deploy.train.trainer import TrainConfig, train

SPIKING = [e.name for e in list_models() if e.spiking]
T = 3


def randomise(model, seed=0):
    """Random BN statistics so that neurons fire at a rate strictly between 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.8)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4)
    return model.eval()


def small_model(name):
    size = 32 if name == "vgg16" else 12
    kwargs = {"width": 1} if name == "resnet20" else {}
    return randomise(create_model(name, num_classes=5, in_channels=3, image_size=size, **kwargs))


@pytest.mark.parametrize("name", SPIKING)
def test_zoo_model_exports_and_its_step_loop_matches_torch(name, tmp_path):
    model = small_model(name)
    manifest = export_bundle(ExportSource(model, T, [str(i) for i in range(5)], arch=name), tmp_path / "b",
                             ExportOptions(max_batch=8))
    graph = onnx.load(str(tmp_path / "b" / "step.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    x = np.random.default_rng(0).uniform(0, 1, (4, *model.input_spec.shape)).astype(np.float32)
    step, encoder = open_bundle_graphs(tmp_path / "b", manifest)
    trace = run_timesteps(manifest, step, x, encoder=encoder)
    with torch.no_grad():
        expected, frame = model.run_steps(torch.from_numpy(x), T)
    rates = [float(s.mean()) for s in frame.spikes.values()]
    assert any(0 < r < 1 for r in rates), rates
    np.testing.assert_allclose(trace.logits, expected.numpy(), atol=2e-4, rtol=1e-4)


def test_bundle_manifest_describes_the_graphs(digits_bundle, digits_checkpoint):
    manifest = read_manifest(digits_bundle)
    assert manifest.graphs == {"step": "step.onnx", "encoder": "encoder.onnx"}
    assert manifest.timesteps == 4 and manifest.input.shape == (1, 8, 8) and manifest.input.kind == "static"
    assert len(manifest.provenance["checkpoint_sha256"]) == 64 and manifest.provenance["opset"] == 18
    step = onnx.load(str(digits_bundle / "step.onnx"))
    names = [i.name for i in step.graph.input]
    assert names == ["x", "reset", *[s.name for s in manifest.states]]
    assert [o.name for o in step.graph.output][:3] == ["confidence", "prediction", "logits"]
    embedded = json.loads({p.key: p.value for p in step.metadata_props}[METADATA_KEY])
    assert embedded["states"] == json.loads((digits_bundle / "manifest.json").read_text())["states"]
    assert [s.name for s in manifest.states][-2:] == ["exit.acc_logits", "exit.count"]


def test_one_graph_serves_batch_1_and_256(digits_bundle):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    x = np.random.default_rng(1).uniform(0, 1, (256, 1, 8, 8)).astype(np.float32)
    big = run_timesteps(manifest, step, x, encoder=encoder, batch_size=256)
    one = run_timesteps(manifest, step, x[:5], encoder=encoder, batch_size=1)
    np.testing.assert_allclose(one.logits, big.logits[:, :5], atol=1e-5)
    assert np.array_equal(one.prediction, big.prediction[:, :5])


def test_reset_gives_a_row_fresh_states_and_leaves_the_others(digits_bundle):
    manifest = read_manifest(digits_bundle)
    step = OrtExecutor(digits_bundle / "step.onnx")
    encoder = OrtExecutor(digits_bundle / "encoder.onnx")
    x = encoder.run({"x": np.random.default_rng(2).normal(size=(2, 1, 8, 8)).astype(np.float32)})["encoded"]
    fresh = {s.name: np.full((2, *s.shape), s.init, np.float32) for s in manifest.states}
    states, outs = fresh, []
    for reset in ([False, False], [False, False], [True, False]):
        out = step.run({"x": x, "reset": np.array(reset), **states})
        states = {s.name: out[s.output] for s in manifest.states}
        outs.append(out)
    # row 0 restarted at the third call: it repeats the first step; row 1 went on
    assert np.array_equal(outs[2]["logits"][0], outs[0]["logits"][0])
    assert outs[2]["confidence"][0] == outs[0]["confidence"][0]
    assert states["exit.count"].tolist() == [1.0, 3.0]


def test_confidence_is_the_max_softmax_of_accumulated_logits(digits_bundle):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    x = np.random.default_rng(3).uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    trace = run_timesteps(manifest, step, x, encoder=encoder)
    mean = np.cumsum(trace.logits, 0) / np.arange(1, 5).reshape(-1, 1, 1)
    p = np.exp(mean - mean.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(trace.confidence, p.max(-1), rtol=1e-5)
    assert np.array_equal(trace.prediction, mean.argmax(-1))


def test_fp16_bundle_agrees_with_fp32(digits_checkpoint, tmp_path):
    options = ExportOptions(precision="fp16", encoder_split="on")
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "fp16", options)
    assert manifest.precision == "fp16" and manifest.input.dtype == "float32"
    graph = onnx.load(str(tmp_path / "fp16" / "step.onnx"))
    weights = {i.name: i.data_type for i in graph.graph.initializer if i.name.endswith("weight")}
    half = [n for n, t in weights.items() if t == onnx.TensorProto.FLOAT16]
    # the hidden conv and fc run in FP16, each with a hi and a lo weight; the classifier stays FP32
    # (and the encoder, in encoder.onnx)
    assert len(half) == 4 and len(weights) == 5, weights
    encoder = onnx.load(str(tmp_path / "fp16" / "encoder.onnx"))
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in encoder.graph.initializer)
    from seenn_deploy.data import parse_data_spec

    data = parse_data_spec("digits").load("test")
    step, encoder = open_bundle_graphs(tmp_path / "fp16", manifest)
    half = run_timesteps(manifest, step, data.x, encoder=encoder)
    full_manifest = export_checkpoint(digits_checkpoint, tmp_path / "fp32")
    step, encoder = open_bundle_graphs(tmp_path / "fp32", full_manifest)
    full = run_timesteps(full_manifest, step, data.x, encoder=encoder)
    assert (half.prediction == full.prediction).mean() >= 0.98


def cli(*args):
    return subprocess.run([sys.executable, "-m", "seenn_deploy.cli", *map(str, args)], capture_output=True, text=True)


def test_verify_passes_on_the_exported_bundle_and_fails_past_tolerance(digits_bundle, tmp_path):
    report = tmp_path / "verify.json"
    result = cli("verify", digits_bundle, "--data", "digits", "--json", report)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["agreement"] == [1.0] * 4 and data["spike_layers"] == 3
    assert data["spike_flip_rate"] < 1e-4
    tampered = shutil.copytree(digits_bundle, tmp_path / "tampered.seenn")  # a valid graph that computes otherwise
    graph = onnx.load(str(tampered / "step.onnx"))
    for init in graph.graph.initializer:
        if init.name.endswith("weight"):
            init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), init.name))
    onnx.save(graph, str(tampered / "step.onnx"))
    failed = cli("verify", tampered, "--data", "digits", "--samples", "20")
    assert failed.returncode == 1 and "FAIL" in failed.stdout, failed.stderr


def test_verify_refuses_another_checkpoint(digits_bundle, digits_checkpoint, tmp_path):
    other = tmp_path / "other"
    train(TrainConfig(arch="spiking_cnn", data="digits", timesteps=4, epochs=1, out=other, seed=1),
          log=lambda s: None, progress=False)
    result = cli("verify", digits_bundle, "--data", "digits", "--checkpoint", other)
    assert result.returncode == 2 and "not the checkpoint" in result.stderr


def no_partials(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name] == []


def test_export_bad_input_is_refused_and_writes_nothing(digits_checkpoint, tmp_path):
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "photo.jpg").write_text("x")
    result = cli("export", digits_checkpoint, "--out", tmp_path / "notabundle")
    assert result.returncode == 2 and "not a seenn-deploy bundle" in result.stderr
    assert [p.name for p in (tmp_path / "notabundle").iterdir()] == ["photo.jpg"]
    result = cli("export", digits_checkpoint, "--out", tmp_path / "b", "--max-batch", "0")
    assert result.returncode == 2 and "--max-batch" in result.stderr and not (tmp_path / "b").exists()
    no_config = tmp_path / "noconfig"
    no_config.mkdir()
    (no_config / "weights.safetensors").write_bytes((digits_checkpoint / "weights.safetensors").read_bytes())
    result = cli("export", no_config, "--out", tmp_path / "c")
    assert result.returncode == 2 and "config.json" in result.stderr and not (tmp_path / "c").exists()
    assert no_partials(tmp_path)


def test_existing_bundle_needs_force(digits_checkpoint, digits_bundle, tmp_path):
    out = tmp_path / "b"
    export_checkpoint(digits_checkpoint, out)
    with pytest.raises(UserError, match="--force"):
        export_checkpoint(digits_checkpoint, out)
    export_checkpoint(digits_checkpoint, out, ExportOptions(force=True, accumulate="sum"))
    assert read_manifest(out).exit.accumulate == "sum" and no_partials(tmp_path)


def test_of_two_concurrent_exports_to_one_out_the_second_is_refused(digits_checkpoint, tmp_path):
    import time

    from seenn_deploy.files import lock_path

    out = tmp_path / "b"
    args = [sys.executable, "-m", "seenn_deploy.cli", "export", digits_checkpoint, "--out", out, "--force"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock_path(out).exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # paused inside the export, holding the lock, whatever the machine's speed
    try:
        second = cli("export", digits_checkpoint, "--out", out, "--force", "--accumulate", "sum")
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.communicate()
    first.stdout.close(), first.stderr.close()
    assert second.returncode == 2 and second.stderr.strip() == (
        f"error: {out} is being written by another seenn-deploy process (pid {first.pid}, export); "
        "wait for it or choose another --out")
    assert read_manifest(out).exit.accumulate == "mean" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_a_failing_export_leaves_nothing(digits_checkpoint, tmp_path, monkeypatch):
    import seenn_deploy.export.exporter as exporter

    def boom(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(exporter, "export_graph", boom)
    with pytest.raises(RuntimeError):
        export_checkpoint(digits_checkpoint, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_with_a_policy_exports_policy_onnx(digits_checkpoint, tmp_path):
    from seenn_deploy.snn.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(digits_checkpoint)
    policy = randomise(create_model("policy_resnet8", num_classes=3, in_channels=1, image_size=8))
    config.policy = {"arch": "policy_resnet8", "model": {"num_classes": 3, "in_channels": 1, "image_size": 8},
                     "candidates": [1, 2, 4]}
    ckpt = tmp_path / "with_policy"
    ckpt.mkdir()
    save_checkpoint(ckpt, model, config, policy=policy)
    manifest = export_checkpoint(ckpt, tmp_path / "b")
    assert manifest.graphs["policy"] == "policy.onnx" and manifest.exit.candidates == [1, 2, 4]
    x = np.random.default_rng(4).normal(size=(5, 1, 8, 8)).astype(np.float32)
    scores = OrtExecutor(tmp_path / "b" / "policy.onnx").run({"x": x})["scores"]
    with torch.no_grad():
        np.testing.assert_allclose(scores, policy(torch.from_numpy(x)).numpy(), atol=1e-5)
    config.policy["candidates"] = [1, 9]
    save_checkpoint(ckpt, model, config, policy=create_model("policy_resnet8", num_classes=2, in_channels=1, image_size=8))
    with pytest.raises(UserError, match="candidates"):
        export_checkpoint(ckpt, tmp_path / "c")
