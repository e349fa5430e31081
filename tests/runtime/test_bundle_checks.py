"""A bundle's graphs are checked against its manifest when it opens, every file it reads lies inside it (symlinks
resolved), and a failed open leaves no executor open."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.bundle import bundle_path, open_executors
from seenn_deploy.runtime.executors.ort import OrtExecutor
from seenn_deploy.runtime.manifest import MANIFEST, RESET, X, read_manifest


@pytest.fixture
def bundle(digits_bundle, tmp_path):
    return shutil.copytree(digits_bundle, tmp_path / "b.seenn")


def rename_output(graph_path, old: str, new: str) -> None:
    model = onnx.load(str(graph_path))
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for output in model.graph.output:
        if output.name == old:
            output.name = new
    onnx.save(model, str(graph_path))


def edit_manifest(bundle, edit) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    edit(data)
    (bundle / MANIFEST).write_text(json.dumps(data))


@pytest.fixture
def opened(monkeypatch):
    """Every OrtExecutor made while the test runs (the real class; its __init__ is only recorded)."""
    made: list[OrtExecutor] = []
    init = OrtExecutor.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(OrtExecutor, "__init__", recording_init)
    return made


def test_a_matching_bundle_opens_and_runs(bundle):
    manifest = read_manifest(bundle)
    with open_executors(bundle, manifest, "ort") as graphs:
        assert graphs.policy is None
        x = np.zeros((2, *manifest.input.shape), np.float32)
        encoded = graphs.encoder.run({X: x})["encoded"]
        states = {s.name: np.zeros((2, *s.shape), np.float32) for s in manifest.states}
        out = graphs.step.run({X: encoded, RESET: np.ones(2, bool), **states})
        assert out["confidence"].shape == (2,)


def test_a_renamed_output_is_refused_at_open_and_nothing_stays_open(bundle, opened):
    rename_output(bundle / "step.onnx", "prediction", "pred")
    with pytest.raises(UserError) as info:
        open_executors(bundle, read_manifest(bundle), "ort")
    message = str(info.value)
    assert "the step graph (step.onnx) does not match the bundle's manifest" in message
    assert "lacks output prediction [B] int32/int64" in message and "re-export the bundle" in message
    assert opened and all(executor.session is None for executor in opened)


def test_the_graphs_opened_before_a_failing_one_are_closed(bundle, opened):
    rename_output(bundle / "encoder.onnx", "encoded", "features")  # the step graph opens and checks first
    with pytest.raises(UserError, match=r"the encoder graph \(encoder\.onnx\).*lacks output encoded \[B, 16, 8, 8\]"):
        open_executors(bundle, read_manifest(bundle), "ort")
    assert len(opened) == 2 and all(executor.session is None for executor in opened)


def test_shapes_and_dtypes_the_graph_does_not_have_are_refused(bundle):
    def edit(data):
        data["states"][2]["shape"] = [64]
        data["num_classes"], data["classes"] = 11, data["classes"] + ["10"]

    edit_manifest(bundle, edit)
    with pytest.raises(UserError) as info:
        open_executors(bundle, read_manifest(bundle), "ort")
    message = str(info.value)
    assert "input body.layers.8.v [B, 128] float32 should be body.layers.8.v [B, 64] float32" in message
    assert "output body.layers.8.v.next [B, 128] float32 should be body.layers.8.v.next [B, 64] float32" in message
    assert "output logits [B, 10] float32 should be logits [B, 11] float32/float16" in message


def test_a_state_the_graph_lacks_is_refused(bundle):
    edit_manifest(bundle, lambda data: data["states"].append({"name": "extra", "shape": [3], "init": 0.0}))
    with pytest.raises(UserError, match=r"lacks input extra \[B, 3\] float32.*lacks output extra\.next \[B, 3\]"):
        open_executors(bundle, read_manifest(bundle), "ort")


def test_a_graph_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    shutil.move(bundle / "step.onnx", tmp_path / "elsewhere" / "step.onnx")
    (bundle / "step.onnx").symlink_to(tmp_path / "elsewhere" / "step.onnx")
    with pytest.raises(UserError, match=r"the step graph .*step\.onnx resolves to .*elsewhere/step\.onnx, outside the "
                                        r"bundle"):
        read_manifest(bundle)


def test_symlinks_inside_the_bundle_and_a_symlinked_bundle_are_fine(bundle, tmp_path):
    (bundle / "graphs").mkdir()
    shutil.move(bundle / "step.onnx", bundle / "graphs" / "step.onnx")
    (bundle / "step.onnx").symlink_to("graphs/step.onnx")
    (tmp_path / "current.seenn").symlink_to(bundle)
    manifest = read_manifest(tmp_path / "current.seenn")
    open_executors(tmp_path / "current.seenn", manifest, "ort").close()


def test_bundle_path_refuses_what_resolves_outside(bundle, tmp_path):
    (tmp_path / "outside").mkdir()
    (bundle / "calib").symlink_to(tmp_path / "outside")
    with pytest.raises(UserError, match=r"the calib folder .*calib resolves to .*outside, outside the bundle"):
        bundle_path(bundle, "calib", "the calib folder")
    with pytest.raises(UserError, match="outside the bundle"):
        bundle_path(bundle, "calib/profile.npz", "the profile")
    with pytest.raises(UserError, match="outside the bundle"):
        bundle_path(bundle, "../x", "a file")
    assert bundle_path(bundle, "engines/not-yet.plan", "a plan") == bundle.resolve() / "engines" / "not-yet.plan"


def test_backends_and_their_options_are_checked(bundle):
    manifest = read_manifest(bundle)
    with pytest.raises(UserError, match=r"backend 'onnx' is not one of ort, torch, trt"):
        open_executors(bundle, manifest, "onnx")
    with pytest.raises(UserError, match=r"backend 'ort' takes the options providers, threads, not device"):
        open_executors(bundle, manifest, "ort", device="cuda")
    with pytest.raises(UserError, match=r"backend 'torch' takes the options checkpoint, device, cuda_graphs, not gpu"):
        open_executors(bundle, manifest, "torch", gpu=True)


def test_the_torch_backend_passes_the_same_checks(bundle):
    manifest = read_manifest(bundle)
    with open_executors(bundle, manifest, "torch") as graphs:
        assert graphs.step.outputs[:3] == ["confidence", "prediction", "logits"]
