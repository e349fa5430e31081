"""The torch layout of an int8 bundle computes with the INT8 weights its step graph holds, whatever chose them, and
refuses a graph that does not belong to the checkpoint."""

import dataclasses
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seenn_deploy.data import Normalisation, parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.export.bundle_layout import bundle_layout
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.export.int8 import quantized_layers
from seenn_deploy.export.precision import for_precision
from seenn_deploy.export.verify import reference_trace
from seenn_deploy.runtime.executors.ort import OrtExecutor
from seenn_deploy.runtime.loop import run_timesteps
from seenn_deploy.runtime.manifest import read_manifest, write_manifest
from seenn_deploy.snn.checkpoint import load_checkpoint

LAYER = "body.layers.7"


@pytest.fixture(scope="module")
def int8_bundle(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("layout") / "digits.int8.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8", int8_weights="single"))
    return out


def edited_copy(bundle, tmp_path, edit) -> object:
    """A copy of `bundle` whose step graph's initializers went through edit(name -> array) (in place)."""
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    proto = onnx.load(str(copy / "step.onnx"))
    arrays = {i.name: numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
    edit(arrays)
    kept = [numpy_helper.from_array(arrays[i.name], i.name) for i in proto.graph.initializer if i.name in arrays]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    onnx.save(proto, str(copy / "step.onnx"))
    return copy


def test_the_torch_layout_computes_with_the_graphs_own_int8_weights(int8_bundle, digits_checkpoint, tmp_path):
    def nudge(arrays):  # weights another rounding would give: some one step up or down
        q = arrays[f"{LAYER}.weight_int8"].astype(np.int16)
        step = np.random.default_rng(0).integers(-1, 2, q.shape)
        arrays[f"{LAYER}.weight_int8"] = np.clip(q + step, -127, 127).astype(np.int8)

    bundle = edited_copy(int8_bundle, tmp_path, nudge)
    manifest = read_manifest(bundle)
    model, config = load_checkpoint(digits_checkpoint)
    data = parse_data_spec("digits").load("test").subset(96)
    norm = Normalisation.from_dict(config.normalisation)
    with OrtExecutor(bundle / "step.onnx") as step:
        graph = run_timesteps(manifest, step, data.x, 4, None, 32).logits
    read_back, _ = reference_trace(bundle_layout(model, bundle, manifest), data.x, norm, 4, 32)
    recomputed, _ = reference_trace(for_precision(model, "int8", (), "single"), data.x, norm, 4, 32)
    np.testing.assert_allclose(graph, read_back, rtol=0, atol=2e-5)
    assert np.abs(graph - recomputed).max() > 1e-3  # the nudged weights matter: max-abs rounding is not the graph


def test_an_unquantized_bundle_is_the_precision_layout(digits_bundle, digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    laid_out = bundle_layout(model, digits_bundle, read_manifest(digits_bundle))
    assert not quantized_layers(laid_out) and not laid_out.training


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.pop(f"{LAYER}.weight_scale"), f"no INT8 weights for layer {LAYER}"),
    (lambda a: a.__setitem__(f"{LAYER}.weight_int8", a[f"{LAYER}.weight_int8"][:, :-1]), "the checkpoint's layer needs"),
    (lambda a: a[f"{LAYER}.weight_int8"].__setitem__((0, 0), -128), "weights of -128"),
    (lambda a: a[f"{LAYER}.weight_scale"].__setitem__(0, 0.0), "scales that are not finite and > 0"),
])
def test_a_graph_that_is_not_the_checkpoints_int8_export_is_refused(int8_bundle, digits_checkpoint, tmp_path, edit,
                                                                     message):
    bundle = edited_copy(int8_bundle, tmp_path, edit)
    model, _ = load_checkpoint(digits_checkpoint)
    with pytest.raises(UserError, match="re-export the bundle") as info:
        bundle_layout(model, bundle, read_manifest(bundle))
    assert message in str(info.value)


def test_a_manifest_whose_weights_form_is_not_its_graphs_is_refused(int8_bundle, digits_checkpoint, tmp_path):
    bundle = tmp_path / "pair-claimed.seenn"
    shutil.copytree(int8_bundle, bundle)
    manifest = dataclasses.replace(read_manifest(bundle), fp16_weights="pair")
    write_manifest(bundle, manifest)
    model, _ = load_checkpoint(digits_checkpoint)
    with pytest.raises(UserError, match="layer body.layers.2 holds single INT8 weights, the layout expects pair"):
        bundle_layout(model, bundle, manifest)
