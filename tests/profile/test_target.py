"""`bench --engine PATH` on what is not a bundle directory: a lone ONNX step graph (its metadata carries
the manifest), a plan in its bundle, and clear refusals for the rest.
"""

from __future__ import annotations

import json
import shutil

import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.profile.target import resolve_target
from seenn_deploy.runtime.engine_meta import ENGINES_DIR, EngineMeta, engine_file_name, meta_path, write_engine_meta
from seenn_deploy.runtime.manifest import read_manifest

FAST = ("--data", "digits", "--exit", "confidence:0.9", "--batch", "16", "--iterations", "1", "--warmup-ms", "0",
        "--power", "none")


@pytest.fixture(scope="module")
def one_graph_bundle(digits_checkpoint, tmp_path_factory):
    """The digits model exported with --no-encoder-split: step.onnx is the whole network."""
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("one-graph") / "digits.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(encoder_split="off"))
    return out


def bench_json(run_cli, engine, out, *args) -> dict:
    result = run_cli("bench", "--engine", engine, *FAST, *args, "--json", out)
    assert result.code == 0, result.err
    return json.loads(out.read_text())


def test_a_lone_step_graph_benches_as_its_bundle(one_graph_bundle, run_cli, tmp_path):
    lone = tmp_path / "lone" / "step.onnx"
    lone.parent.mkdir()
    shutil.copy(one_graph_bundle / "step.onnx", lone)
    alone = bench_json(run_cli, lone, tmp_path / "lone.json")
    bundled = bench_json(run_cli, one_graph_bundle, tmp_path / "bundle.json")
    assert alone["bundle"] == str(lone) and alone["backend"] == "ort"
    (a,), (b,) = alone["runs"], bundled["runs"]
    assert a["samples"] == b["samples"] == 360
    assert (a["accuracy"], a["avg_timesteps"], a["exit_histogram"]) == (b["accuracy"], b["avg_timesteps"],
                                                                         b["exit_histogram"])
    assert 1.0 <= a["avg_timesteps"] < 4.0 and a["accuracy"] > 0.8


def test_a_lone_step_graph_whose_encoder_is_missing_is_refused(digits_bundle, run_cli, tmp_path):
    shutil.copy(digits_bundle / "step.onnx", tmp_path / "step.onnx")
    line = run_cli("bench", "--engine", tmp_path / "step.onnx", *FAST).error()
    assert "needs its encoder graph" in line and "encoder.onnx" in line and "not beside it" in line
    shutil.copy(digits_bundle / "encoder.onnx", tmp_path / "encoder.onnx")
    target = resolve_target(tmp_path / "step.onnx")
    assert target.kind == "onnx" and target.manifest.has_encoder
    with pytest.raises(UserError, match="not a step graph"):
        resolve_target(tmp_path / "encoder.onnx")
    assert "runs with --backend ort" in run_cli("bench", "--engine", tmp_path / "step.onnx", *FAST,
                                                 "--backend", "trt").error()


@pytest.fixture
def planned_bundle(digits_bundle, tmp_path):
    """A copy of the digits bundle with a step and an encoder 'plan' (bytes TensorRT would refuse) and their records."""
    bundle = shutil.copytree(digits_bundle, tmp_path / "digits.seenn")
    (bundle / ENGINES_DIR).mkdir()
    plans = {}
    for role in read_manifest(bundle).graphs:
        name = engine_file_name(role, "fp32", "Orin", "10.3.0")
        plans[role] = bundle / ENGINES_DIR / name
        plans[role].write_bytes(b"not a plan")
        write_engine_meta(meta_path(plans[role]), EngineMeta(role=role, plan=name, tensorrt_version="10.3.0",
                                                             gpu_name="Orin", compute_capability="8.7",
                                                             precision="fp32"))
    return plans


def test_a_plan_without_tensorrt_says_what_to_install(planned_bundle, run_cli, no_tensorrt):
    line = run_cli("bench", "--engine", planned_bundle["step"], *FAST).error()
    assert "tensorrt is not installed" in line and "pip install 'seenn-deploy[trt-cu12]'" in line


def test_a_plan_must_be_the_step_plan_of_a_bundle(planned_bundle, run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("seenn_deploy.runtime.executors.trt.load_tensorrt", lambda *_: None)  # as if installed
    target = resolve_target(planned_bundle["step"])
    assert (target.kind, target.default_backend, target.engine.role) == ("plan", "trt", "step")
    assert target.bundle == planned_bundle["step"].parent.parent and "TensorRT 10.3.0" in target.notes()[0]
    assert "runs with --backend trt" in run_cli("bench", "--engine", planned_bundle["step"], *FAST,
                                                "--backend", "ort").error()
    with pytest.raises(UserError, match="the bundle's encoder engine: give the step plan"):
        resolve_target(planned_bundle["encoder"])
    alone = shutil.copy(planned_bundle["step"], tmp_path / "step.plan")
    assert "is not inside a bundle" in run_cli("bench", "--engine", alone, *FAST).error()


def test_other_files_are_refused_clearly(run_cli, tmp_path):
    (tmp_path / "random.bin").write_bytes(b"\x00\x01 random")
    line = run_cli("bench", "--engine", tmp_path / "random.bin", *FAST).error()
    assert "neither a bundle directory, a TensorRT plan (.plan) nor an ONNX step graph (.onnx)" in line
    (tmp_path / "random.onnx").write_bytes(b"\x00\x01 random")
    assert "ONNX Runtime cannot load" in run_cli("bench", "--engine", tmp_path / "random.onnx", *FAST).error()
    assert "does not exist" in run_cli("bench", "--engine", tmp_path / "nothing", *FAST).error()
