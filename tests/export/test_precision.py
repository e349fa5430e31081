"""FP16 layout: which layers run in FP16, keeping named ones in FP32, and verify's hint on where flips come from."""

import copy
import json

import onnx
import pytest
import torch

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
    assert total == 5 and len(half) == 2  # the hidden fc's hi and lo; the encoder and hidden convs and the classifier stay FP32
    model, config = load_checkpoint(digits_checkpoint)
    assert fp16_layers(model) == ["body.layers.2", "body.layers.7"]
    assert fp16_layers(model, ["body.layers.2"]) == ["body.layers.7"]


def test_paired_fp16_weights_keep_the_fp32_weights_and_their_products():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    spikes = (torch.rand(4, 16, 10, 10) < 0.3).float()
    exact = conv(spikes).double()
    pair, single = HalfCompute(copy.deepcopy(conv), "pair"), HalfCompute(copy.deepcopy(conv), "single")
    rounding = (pair.layer.weight.float() - conv.weight).abs().max()
    kept = pair.layer.weight.float() + pair.low.weight.float() / 2**11
    assert (kept - conv.weight).abs().max() < rounding / 1000  # about 22 bits: hi's 11 and lo's 11
    assert single.low is None and torch.equal(single.layer.weight, conv.weight.half())
    output_rounding = exact.abs() * 2**-11 + 1e-7  # half an FP16 ulp of the result
    assert ((pair(spikes).double() - exact).abs() <= output_rounding).all()  # only the output is rounded
    assert ((single(spikes).double() - exact).abs() > output_rounding).float().mean() > 0.1  # and the weights here


def test_single_fp16_weights_round_once(digits_checkpoint, tmp_path):
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16", fp16_weights="single"))
    assert manifest.fp16_weights == "single" and read_manifest(tmp_path / "b").fp16_weights == "single"
    assert len(half_weights(tmp_path / "b" / "step.onnx")[0]) == 2
    with pytest.raises(UserError, match="--fp16-weights 'triple' is not one of pair, single"):
        export_checkpoint(digits_checkpoint, tmp_path / "c", ExportOptions(precision="fp16", fp16_weights="triple"))


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
    rates["body.layers.8"] = 5e-7  # as often as an FP32 bundle flips: no hint
    assert fp32_hint(model, rates, manifest) is None


def test_verify_reports_flips_per_neuron_layer(digits_checkpoint, tmp_path):
    from seenn_deploy.data import Normalisation, parse_data_spec

    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16", fp16_weights="single"))
    model, config = load_checkpoint(digits_checkpoint)
    data = parse_data_spec("digits").load("test").subset(200)
    report = verify_bundle(tmp_path / "b", manifest, model, data, Normalisation.from_dict(config.normalisation))
    assert list(report.layer_flip_rates) == ["body.layers.0", "body.layers.4", "body.layers.8"]
    flips = sum(rate * n for rate, n in zip(report.layer_flip_rates.values(), (16 * 64, 32 * 16, 128)))
    assert flips == pytest.approx(report.spike_flip_rate * (16 * 64 + 32 * 16 + 128))
    assert report.backend == "ort"


def test_cli_passes_fp32_layers_and_refuses_unknown_ones(digits_checkpoint, tmp_path, run_cli):
    result = run_cli("export", digits_checkpoint, "--out", tmp_path / "b", "--precision", "fp16",
                     "--fp32-layers", "body.layers.7, body.layers.2")
    assert result.code == 0, result.err
    assert read_manifest(tmp_path / "b").fp32_layers == ["body.layers.7", "body.layers.2"]
    assert half_weights(tmp_path / "b" / "step.onnx") == ([], 4)  # the encoder conv (FP32 by design) and three FP32 layers
    line = run_cli("export", digits_checkpoint, "--out", tmp_path / "c", "--precision", "fp16",
                   "--fp32-layers", "body.layers.8").error()
    assert "body.layers.8: not a Conv2d or Linear" in line and not (tmp_path / "c").exists()


def test_verify_on_torch_runs_real_fp16_arithmetic(digits_checkpoint, tmp_path, run_cli):
    export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16"))
    ort_run = run_cli("verify", tmp_path / "b", "--data", "digits", "--samples", "100", "--json", tmp_path / "ort.json")
    torch_run = run_cli("verify", tmp_path / "b", "--data", "digits", "--samples", "100", "--backend", "torch",
                        "--json", tmp_path / "torch.json")
    assert ort_run.code == 0 and torch_run.code == 0, ort_run.out + torch_run.out
    assert "runs the FP16 layers in FP32" in ort_run.out and "runs the FP16 layers in FP32" not in torch_run.out
    ort_report, torch_report = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ort", "torch"))
    assert ort_report["backend"] == "ort" and torch_report["backend"] == "torch"
    assert list(torch_report["layer_flip_rates"]) == ["body.layers.0", "body.layers.4", "body.layers.8"]
    assert min(torch_report["agreement"]) >= 0.95  # FP16 rounds, but this small net stays close
    # FP16 outputs round on torch and not on ORT's CPU provider, so more spikes flip there
    assert torch_report["spike_flip_rate"] > ort_report["spike_flip_rate"]


def test_the_torch_backend_runs_the_fp16_layers_in_half_precision(digits_checkpoint, tmp_path):
    from seenn_deploy.runtime.executors.torch_executor import open_torch_graphs

    manifest = export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="fp16"))
    step = open_torch_graphs(tmp_path / "b", manifest)("step")
    half = [m for m in step.module.modules() if isinstance(m, HalfCompute)]
    assert len(half) == 2 and all(p.dtype == torch.float16 for m in half for p in m.parameters())
