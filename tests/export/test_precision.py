"""FP16 layout: which layers run in FP16, keeping named ones in FP32, and verify's hint on where flips come from."""

import onnx
import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.export.precision import HalfCompute, for_precision, fp16_layers
from seenn_deploy.export.verify import fp32_hint, verify_bundle
from seenn_deploy.runtime.manifest import read_manifest
from seenn_deploy.snn.checkpoint import load_checkpoint
from seenn_deploy.snn.zoo import create_model, list_models


def half_weights(step_onnx):
    graph = onnx.load(str(step_onnx)).graph
    weights = {i.name: i.data_type for i in graph.initializer if i.name.endswith("weight")}
    return [n for n, t in weights.items() if t == onnx.TensorProto.FLOAT16], len(weights)


@pytest.mark.parametrize("name", [e.name for e in list_models() if e.spiking])
def test_fp16_layers_are_the_layers_the_export_wraps(name):
    model = create_model(name, num_classes=5, in_channels=3, image_size=32 if name == "vgg16" else 12)
    wrapped = {n.removesuffix(".layer") for n, m in for_precision(model, "fp16").named_modules()
               if isinstance(m, HalfCompute)}
    assert wrapped == set(fp16_layers(model)) and wrapped


def test_fp32_layers_keeps_the_named_layer_in_fp32(digits_checkpoint, tmp_path):
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b",
                                 ExportOptions(precision="fp16", fp32_layers=("body.layers.2",)))
    assert manifest.fp32_layers == ["body.layers.2"] and read_manifest(tmp_path / "b").fp32_layers == ["body.layers.2"]
    half, total = half_weights(tmp_path / "b" / "step.onnx")
    assert total == 3 and len(half) == 1  # the hidden fc only; the conv and the classifier stay FP32
    model, config = load_checkpoint(digits_checkpoint)
    assert fp16_layers(model) == ["body.layers.2", "body.layers.7"]
    assert fp16_layers(model, ["body.layers.2"]) == ["body.layers.7"]


def test_fp32_layers_refuses_unknown_layers_and_fp32_bundles(digits_checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"body\.layers\.3: not a Conv2d or Linear.*body\.layers\.2, body\.layers\.7"):
        export_checkpoint(digits_checkpoint, tmp_path / "a", ExportOptions(precision="fp16", fp32_layers=("body.layers.3",)))
    with pytest.raises(UserError, match="applies to --precision fp16"):
        export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(fp32_layers=("body.layers.2",)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_hint_names_the_fp16_layer_where_flips_start(digits_checkpoint, tmp_path):
    model, _ = load_checkpoint(digits_checkpoint)
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16"))
    rates = {"body.layers.0": 1e-7, "body.layers.4": 2e-5, "body.layers.8": 1e-3}  # 0: fed by the FP32 encoder
    hint = fp32_hint(model, rates, manifest)
    assert "flips start at body.layers.4 (2.0e-05), fed by body.layers.2 in FP16" in hint
    assert hint.endswith("--fp32-layers body.layers.2 to keep it in FP32")
    manifest.fp32_layers = ["body.layers.2"]  # kept: the next FP16-fed layer that flips is body.layers.8
    assert "--fp32-layers body.layers.2,body.layers.7 " in fp32_hint(model, rates, manifest)
    rates["body.layers.8"] = 0.0
    assert fp32_hint(model, rates, manifest) is None


def test_verify_reports_flips_per_neuron_layer(digits_checkpoint, tmp_path):
    from seenn_deploy.data import Normalisation, parse_data_spec

    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16"))
    model, config = load_checkpoint(digits_checkpoint)
    data = parse_data_spec("digits").load("test").subset(200)
    report = verify_bundle(tmp_path / "b", manifest, model, data, Normalisation.from_dict(config.normalisation))
    assert list(report.layer_flip_rates) == ["body.layers.0", "body.layers.4", "body.layers.8"]
    flips = sum(rate * n for rate, n in zip(report.layer_flip_rates.values(), (16 * 64, 32 * 16, 128)))
    assert flips == pytest.approx(report.spike_flip_rate * (16 * 64 + 32 * 16 + 128))
    assert (report.hint is None) == (report.spike_flip_rate == 0.0)


def test_cli_passes_fp32_layers_and_refuses_unknown_ones(digits_checkpoint, tmp_path, run_cli):
    result = run_cli("export", digits_checkpoint, "--out", tmp_path / "b", "--precision", "fp16",
                     "--fp32-layers", "body.layers.7, body.layers.2")
    assert result.code == 0, result.err
    assert read_manifest(tmp_path / "b").fp32_layers == ["body.layers.7", "body.layers.2"]
    assert half_weights(tmp_path / "b" / "step.onnx") == ([], 3)
    line = run_cli("export", digits_checkpoint, "--out", tmp_path / "c", "--precision", "fp16",
                   "--fp32-layers", "body.layers.8").error()
    assert "body.layers.8: not a Conv2d or Linear" in line and not (tmp_path / "c").exists()
