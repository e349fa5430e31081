"""INT8 export: spikes pass Q/DQ exactly, the weights' rounding stays in its bound, the Q/DQ layout is the one
TensorRT fuses (a broken one is refused at export), ONNX Runtime runs the Linear layers on integer kernels, and
the bundle computes what the torch INT8 layout computes."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from seenn_deploy.errors import UserError
from seenn_deploy.export import qdq
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.export.int8 import (
    LOW_STEPS, QMAX, QuantCompute, activation_grids, exact_grid, quantize_pair, quantize_weight, quantized_layers,
)
from seenn_deploy.export.precision import for_precision
from seenn_deploy.export.qdq import check_qdq_layout
from seenn_deploy.runtime.manifest import read_manifest
from seenn_deploy.snn.checkpoint import load_checkpoint
from seenn_deploy.snn.zoo import create_model, list_models


@pytest.fixture(scope="module")
def int8_bundle(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "digits.int8.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8"))
    return out


def quantize_through_onnx(x: np.ndarray, scale: float) -> np.ndarray:
    """x -> QuantizeLinear(scale, 0 int8) -> DequantizeLinear on ONNX Runtime."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("pool, amplitude", [(1, 1.0), (2, 1.0), (4, 1.0), (3, 1.0), (2, 0.37)])
def test_spikes_and_their_pools_pass_qdq_exactly(pool, amplitude):
    torch.manual_seed(0)
    spikes = (torch.rand(64, 8, 12, 12) < 0.4).float() * amplitude
    pooled = torch.nn.functional.avg_pool2d(spikes, pool) if pool > 1 else spikes
    scale = exact_grid(pooled)
    assert scale == pytest.approx(amplitude / pool**2)
    x = pooled.numpy()
    through = quantize_through_onnx(x, scale)
    if amplitude == 1.0 and pool != 3:  # k / 4 and k / 16 are floats: bit for bit
        np.testing.assert_array_equal(through, x)
    else:  # k / 9 or k * 0.37 / 4 are on the grid up to their own float rounding, which Q/DQ may swap for k * fp32(s)
        np.testing.assert_allclose(through, x, rtol=0, atol=1e-7)


def test_analog_values_and_too_fine_grids_have_no_int8_grid():
    torch.manual_seed(0)
    assert exact_grid(torch.randn(1000)) is None
    assert exact_grid(torch.arange(0, 200).float()) is None  # 200 steps: more than INT8 holds
    assert exact_grid(torch.arange(0, 128).float()) == 1.0 and exact_grid(torch.zeros(5)) == 1.0


def test_weight_quantization_stays_within_half_a_step_per_channel():
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3) * torch.logspace(-3, 1, 16).reshape(-1, 1, 1, 1)
    weight[5] = 0.0
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == QMAX and scale[5] == 1.0 and not q[5].any()
    peak = weight.abs().flatten(1).amax(1)
    torch.testing.assert_close(scale[peak > 0], peak[peak > 0] / QMAX)
    error = (weight - q.float() * scale.reshape(-1, 1, 1, 1)).abs().flatten(1).amax(1)
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    high, low, scale = quantize_pair(weight)
    assert torch.equal(high, q) and int(low.abs().max()) <= QMAX
    kept = (high.float() + low.float() / LOW_STEPS) * scale.reshape(-1, 1, 1, 1)
    assert ((weight - kept).abs().flatten(1).amax(1) <= scale / (2 * LOW_STEPS) * (1 + 1e-5)).all()


def test_quant_compute_sums_integers_as_the_int8_kernels_do():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3, padding=1)
    spikes = torch.nn.functional.avg_pool2d((torch.rand(5, 8, 12, 12) < 0.3).float(), 2)
    for weights in ("single", "pair"):
        layer = QuantCompute(copy.deepcopy(conv), "conv", 0.25, weights)
        q, low, scale = quantize_pair(conv.weight)
        exact = torch.nn.functional.conv2d((spikes * 4).double(), q.double(), padding=1) * (0.25 * scale.double()).reshape(1, -1, 1, 1)
        if weights == "pair":
            exact += torch.nn.functional.conv2d((spikes * 4).double(), low.double(), padding=1) * (0.25 * scale.double() / LOW_STEPS).reshape(1, -1, 1, 1)
        exact += conv.bias.double().reshape(1, -1, 1, 1)
        torch.testing.assert_close(layer(spikes).double(), exact, rtol=0, atol=1e-6)
    single = QuantCompute(copy.deepcopy(conv), "conv", 0.25, "single")(spikes)
    pair = QuantCompute(copy.deepcopy(conv), "conv", 0.25, "pair")(spikes)
    fp32 = conv(spikes)
    assert (pair - fp32).abs().max() < (single - fp32).abs().max() / 50  # the low weights recover most of the rounding


@pytest.mark.parametrize("name", [pytest.param(e.name, marks=[pytest.mark.slow] if e.name in ("resnet18", "resnet19", "vgg16") else [])
                                  for e in list_models() if e.spiking])
def test_every_body_layer_of_the_zoo_is_spike_driven(name):
    model = create_model(name, num_classes=5, in_channels=3, image_size=32 if name == "vgg16" else 12)
    grids = activation_grids(model)
    assert grids and all(s is not None for s in grids.values()), grids  # the analog conv is the encoder's
    assert not any(n.startswith("encoder") for n in grids)


def test_a_layer_fed_by_analog_input_stays_in_float():
    model = create_model("spiking_cnn", num_classes=3, in_channels=1, image_size=8)
    model.body.layers.insert(0, model.encoder[0])  # a foreign-style model: the analog conv in the body
    model.encoder = torch.nn.Identity()
    grids = activation_grids(model)
    assert grids["body.layers.0"] is None and grids["body.layers.3"] == 0.25


def test_int8_bundle_layout(int8_bundle, digits_checkpoint):
    manifest = read_manifest(int8_bundle)
    assert manifest.precision == "int8" and manifest.fp16_weights == "pair"
    assert manifest.provenance["int8_input_scales"] == {"body.layers.2": 0.25, "body.layers.7": 0.25, "body.layers.9": 1.0}
    proto = onnx.load(str(int8_bundle / "step.onnx"))
    model, _ = load_checkpoint(digits_checkpoint)
    layers = quantized_layers(for_precision(model, "int8"))
    assert [q.name for q in layers] == ["body.layers.2", "body.layers.7", "body.layers.9"]
    assert check_qdq_layout(proto) == len(layers)
    weights = {i.name: i for i in proto.graph.initializer if i.name.endswith(".weight_int8")}
    assert {i.data_type for i in weights.values()} == {TensorProto.INT8} and len(weights) == 3
    assert not [i for i in proto.graph.initializer if i.name.endswith("layers.2.layer.weight")]  # no FP32 copy left


def test_onnx_runtime_runs_the_linear_layers_on_integer_kernels(int8_bundle, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(int8_bundle / "step.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [(n.op_type, n.name) for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ("MatMulIntegerToFloat", "body.layers.7.matmul") in ops and ("MatMulIntegerToFloat", "body.layers.9.matmul") in ops
    assert not [op for op, _ in ops if op in ("Gemm", "MatMul")]  # no Linear left in float


def test_the_bundle_computes_the_torch_int8_layout(int8_bundle, digits_checkpoint):
    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.export.verify import cumulative_mean, reference_trace
    from seenn_deploy.runtime.executors.ort import OrtExecutor
    from seenn_deploy.runtime.loop import run_timesteps

    manifest = read_manifest(int8_bundle)
    model, config = load_checkpoint(digits_checkpoint)
    data = parse_data_spec("digits").load("test").subset(120)
    norm = Normalisation.from_dict(config.normalisation)
    laid_out, _ = reference_trace(for_precision(model, "int8"), data.x, norm, 4, 64)
    fp32, _ = reference_trace(model.float().eval(), data.x, norm, 4, 64)
    with OrtExecutor(int8_bundle / "step.onnx") as step:
        trace = run_timesteps(manifest, step, data.x, 4, None, 64)
    np.testing.assert_allclose(trace.logits, laid_out, rtol=0, atol=2e-5)
    assert (trace.prediction == cumulative_mean(fp32).argmax(-1)).mean() >= 0.99


def break_layout(proto, how: str) -> None:
    """Mutate a valid INT8 step graph into one TensorRT does not fuse."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    dq = next(n for n in graph.node if n.name == "body.layers.2.input_dequantize")
    if how == "op between DQ and conv":
        conv = next(n for n in graph.node if n.name == "body.layers.2.conv")
        conv.input[0] = "relu_out"
        graph.node.insert(list(graph.node).index(conv), helper.make_node("Relu", [dq.output[0]], ["relu_out"], name="relu"))
    elif how == "zero point":
        inits["body.layers.2.input_zero_point"].CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "body.layers.2.input_zero_point"))
    elif how == "uint8":
        inits["body.layers.2.input_zero_point"].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), "body.layers.2.input_zero_point"))
    elif how == "weight axis":
        wdq = next(n for n in graph.node if n.name == "body.layers.7.weight_dequantize")
        wdq.attribute[0].CopyFrom(helper.make_attribute("axis", 0))
    elif how == "float weight":
        wdq = next(n for n in graph.node if n.name == "body.layers.9.weight_dequantize")
        weight = numpy_helper.to_array(inits[wdq.input[0]]).astype(np.float32) * numpy_helper.to_array(inits[wdq.input[1]])
        graph.initializer.append(numpy_helper.from_array(weight, "float_weight"))
        matmul = next(n for n in graph.node if n.name == "body.layers.9.matmul")
        matmul.input[1] = "float_weight"
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how, rule", [
    ("op between DQ and conv", "must feed the Conv / MatMul directly"),
    ("zero point", "zero point 0"),
    ("uint8", "zero point 0"),
    ("weight axis", "per output channel (axis 1)"),
    ("float weight", "weight input has no DequantizeLinear"),
])
def test_layouts_tensorrt_does_not_fuse_are_refused(int8_bundle, how, rule):
    proto = onnx.load(str(int8_bundle / "step.onnx"))
    break_layout(proto, how)
    with pytest.raises(UserError, match="Q/DQ layout TensorRT does not fuse") as info:
        check_qdq_layout(proto)
    assert rule in str(info.value)


def test_export_refuses_a_broken_layout_and_writes_nothing(digits_checkpoint, tmp_path, monkeypatch):
    insert = qdq.insert_qdq

    def broken(proto, layers):
        insert(proto, layers)
        break_layout(proto, "op between DQ and conv")

    monkeypatch.setattr(qdq, "insert_qdq", broken)
    with pytest.raises(UserError, match="must feed the Conv / MatMul directly"):
        export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="int8"))
    assert not (tmp_path / "b").exists()


def test_int8_options_are_checked(digits_checkpoint, tmp_path):
    with pytest.raises(UserError, match="--int8-weights 'triple' is not one of pair, single"):
        export_checkpoint(digits_checkpoint, tmp_path / "a", ExportOptions(precision="int8", int8_weights="triple"))
    with pytest.raises(UserError, match=r"body\.layers\.3: not a Conv2d or Linear"):
        export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="int8", fp32_layers=("body.layers.3",)))
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "c", ExportOptions(
        precision="int8", int8_weights="single", fp32_layers=("body.layers.9",)))
    assert manifest.fp16_weights == "single" and manifest.fp32_layers == ["body.layers.9"]
    assert check_qdq_layout(onnx.load(str(tmp_path / "c" / "step.onnx"))) == 2  # the classifier kept in FP32
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def grouped_model() -> torch.nn.Module:
    """spiking_cnn (8x8, untrained) with its hidden conv grouped (groups=2), scaled so that every LIF fires."""
    torch.manual_seed(0)
    model = create_model("spiking_cnn", num_classes=3, in_channels=1, image_size=8)
    model.body.layers[2] = torch.nn.Conv2d(16, 32, 3, padding=1, groups=2, bias=False)
    with torch.no_grad():
        model.encoder[0].weight.mul_(3.0)
        model.body.layers[2].weight.mul_(3.0)
        model.body.layers[7].weight.mul_(8.0)
    return model.eval()


def test_grouped_conv_pair_is_refused_and_single_computes_the_torch_int8_layout(tmp_path):
    """A pair is one conv of twice the output channels: with groups > 1 the low channels would read the wrong input
    group, so the pair is refused by name; single keeps the groups and the bundle computes the torch layout."""
    from seenn_deploy.data import Normalisation
    from seenn_deploy.export.exporter import ExportSource, export_bundle
    from seenn_deploy.export.verify import reference_trace
    from seenn_deploy.runtime.executors.ort import OrtExecutor
    from seenn_deploy.runtime.loop import run_timesteps

    model = grouped_model()
    source = ExportSource(model=model, timesteps=3, classes=["a", "b", "c"])
    with pytest.raises(UserError, match=r"body\.layers\.2 is a grouped Conv2d \(groups=2\).*--int8-weights single"):
        export_bundle(source, tmp_path / "pair", ExportOptions(precision="int8"))
    assert not (tmp_path / "pair").exists()
    manifest = export_bundle(source, tmp_path / "single", ExportOptions(precision="int8", int8_weights="single"))
    assert "body.layers.2" in manifest.provenance["int8_input_scales"]
    assert check_qdq_layout(onnx.load(str(tmp_path / "single" / "step.onnx"))) == 3
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)).numpy()
    norm = Normalisation((0.0,), (1.0,))
    laid_out, spikes = reference_trace(for_precision(model, "int8", fp16_weights="single"), x, norm, 3, 64)
    rates = [float((s != 0).mean()) for s in spikes.values()]
    assert all(0.01 < r < 0.99 for r in rates), rates  # the grouped conv's input and output layers fire
    with OrtExecutor(tmp_path / "single" / "step.onnx") as step:
        trace = run_timesteps(manifest, step, x, 3, None, 64)
    np.testing.assert_allclose(trace.logits, laid_out, rtol=0, atol=2e-5)
    assert float(np.abs(laid_out[-1] - laid_out[-1].mean(0)).max()) > 1e-3  # the logits depend on the input


def test_weights_options_of_another_precision_are_refused(digits_checkpoint, tmp_path):
    """--int8-weights / --fp16-weights would otherwise be ignored silently: a non-default value needs its precision."""
    refused = [(ExportOptions(precision="fp32", int8_weights="single"), r"--int8-weights single .* int8 and int8\+fp16 only, not fp32"),
               (ExportOptions(precision="fp16", int8_weights="single"), r"--int8-weights single .* int8 and int8\+fp16 only, not fp16"),
               (ExportOptions(precision="int8", fp16_weights="single"), "--fp16-weights single .* fp16 only, not int8")]
    for options, fragment in refused:
        with pytest.raises(UserError, match=fragment):
            export_checkpoint(digits_checkpoint, tmp_path / "b", options)
    assert not (tmp_path / "b").exists()
    ExportOptions(precision="fp16", fp16_weights="single", int8_weights="pair").check()  # the defaults stay accepted
