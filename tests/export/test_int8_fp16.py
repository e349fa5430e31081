"""`export --precision int8+fp16`: the INT8 layout of test_int8.py with FP16 scales and the float side in FP16.
Spikes pass FP16 Q/DQ exactly, FP16 weight scales keep the INT8 error bound, a Quantize whose input type is not its
scale's is refused, the runtime carries the FP16 states alike in every mode and backend, and export + verify run
from the command line."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.export.int8 import QMAX, QuantCompute, low_scale, quantize_pair, quantize_weight
from seenn_deploy.export.precision import for_precision
from seenn_deploy.export.qdq import check_qdq_layout
from seenn_deploy.runtime.manifest import read_manifest
from seenn_deploy.snn.checkpoint import load_checkpoint

T = 4


@pytest.fixture(scope="module")
def fp16_bundle(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8fp16") / "digits.int8fp16.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8+fp16", encoder_split="on", max_batch=64))
    return out


@pytest.fixture(scope="module")
def samples():
    from seenn_deploy.data import parse_data_spec

    return parse_data_spec("digits").load("test").subset(96)


def qdq_fp16(x: np.ndarray, scale: float) -> np.ndarray:
    """x (FP16) -> QuantizeLinear(FP16 scale, 0 int8) -> DequantizeLinear on ONNX Runtime (opset 19)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float16), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, list(x.shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("pool, amplitude", [(1, 1.0), (2, 1.0), (4, 1.0), (2, 0.375), (1, 0.37)])
def test_spikes_and_their_pools_pass_fp16_qdq_exactly(pool, amplitude):
    """FP16 spikes (x theta, the FP16 threshold) and their 2x2 / 4x4 averages are k * s with |k| <= 127 and s an FP16
    number: quantize + dequantize gives them back bit for bit, on ONNX Runtime and in QuantCompute's steps."""
    torch.manual_seed(0)
    theta = float(np.float16(amplitude))
    spikes = ((torch.rand(32, 8, 12, 12) < 0.4).half() * theta)
    pooled = torch.nn.functional.avg_pool2d(spikes.float(), pool).half() if pool > 1 else spikes
    scale = float(np.float16(theta / pool**2))
    x = pooled.numpy()
    np.testing.assert_array_equal(qdq_fp16(x, scale), x)
    steps = torch.round(pooled.float() / scale)
    assert steps.abs().max() <= QMAX and torch.equal((steps * scale).half(), pooled)


@pytest.mark.parametrize("pool", [3, 5])
def test_pools_whose_step_fp16_rounds_still_give_the_int8_kernel_exact_counts(pool):
    """k / 9 and k / 25 are not FP16 numbers, nor is their step: QuantizeLinear still recovers every count k (its
    input and scale each round by at most 2^-11, which moves k <= 127 by less than half a step), which is what the
    INT8 kernel multiplies; only the dequantized value may differ from the FP16 average by an ulp."""
    torch.manual_seed(0)
    spikes = (torch.rand(32, 8, 15, 15) < 0.4).float()
    counts = torch.nn.functional.avg_pool2d(spikes, pool, divisor_override=1)  # k, the exact window sums
    pooled = (counts / pool**2).half()
    scale = float(np.float16(1 / pool**2))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float16), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, list(pooled.shape))],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, list(pooled.shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    q = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": pooled.numpy()})[0]
    np.testing.assert_array_equal(q, counts.numpy().astype(np.int8))
    assert torch.equal(torch.round(pooled.float() / scale), counts)  # QuantCompute's steps: the same counts


def test_fp16_weight_scales_are_exact_smallest_and_keep_the_error_bound():
    torch.manual_seed(0)
    weight = torch.randn(24, 8, 3, 3) * torch.logspace(-5, 1, 24).reshape(-1, 1, 1, 1)  # low scales down to subnormals
    weight[5] = 0.0
    q, scale = quantize_weight(weight, half=True)
    assert torch.equal(scale.half().float(), scale)  # an FP16 number: the graph's FP16 scale rounds nothing
    peak = weight.abs().flatten(1).amax(1)
    wanted = torch.where(peak > 0, peak / QMAX, torch.ones_like(peak))
    below = torch.from_numpy(np.nextafter(scale.numpy().astype(np.float16), np.float16(0)).astype(np.float32))
    assert (scale >= wanted).all() and (below < wanted).all()  # the smallest FP16 scale >= max|w| / 127
    assert q.dtype == torch.int8 and int(q.abs().max()) <= QMAX and scale[5] == 1.0 and not q[5].any()
    shape = (-1, 1, 1, 1)
    error = (weight - q.float() * scale.reshape(shape)).abs().flatten(1).amax(1)
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    high, low, scale = quantize_pair(weight, half=True)
    small = low_scale(scale, half=True)
    assert torch.equal(high, q) and int(low.abs().max()) <= QMAX and torch.equal(small.half().float(), small)
    kept = high.float() * scale.reshape(shape) + low.float() * small.reshape(shape)
    assert ((weight - kept).abs().flatten(1).amax(1) <= small / 2 * (1 + 1e-5)).all()
    normal = 2.0**-14  # FP16's least normal number: no subnormal scale for TensorRT
    below_small = torch.from_numpy(np.nextafter(small.numpy().astype(np.float16), np.float16(0)).astype(np.float32))
    assert (small >= scale / 254).all() and (small >= normal).all()
    assert ((below_small < scale / 254) | (small == normal)).all()  # the smallest such FP16 number
    assert (small == normal).any() and (small > normal).any()  # both cases occur here


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("weights", ["single", "pair"])
def test_fp16_quant_compute_rounds_as_the_fused_int8_kernels_do(kind, weights):
    """Exact integer sum times s_x * s_w in FP32, the conv's bias added before its one rounding to FP16; a Linear
    (MatMul) rounds its product, then adds the FP16 bias in FP16; a pair's halves are rounded, then summed in FP16."""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(8, 4, 3, padding=1) if kind == "conv" else torch.nn.Linear(72, 6)
    x = (torch.rand(5, 8, 6, 6) < 0.3).half() * 0.25 if kind == "conv" else (torch.rand(5, 72) < 0.3).half()
    s_x = 0.25 if kind == "conv" else 1.0
    high, low, scale = quantize_pair(layer.weight, half=True)
    bias = layer.bias.detach().half()
    out = QuantCompute(layer, "layer", s_x, weights, half=True)(x)
    assert out.dtype == torch.float16
    op = (lambda v, w: torch.nn.functional.conv2d(v, w, padding=1)) if kind == "conv" else torch.nn.functional.linear
    shape = (1, -1, 1, 1) if kind == "conv" else (1, -1)
    steps = (x.double() / s_x).round()
    exact = op(steps, high.double()) * (s_x * scale.double()).reshape(shape)
    expected = (exact + bias.double().reshape(shape) if kind == "conv" else exact).half()
    if weights == "pair":
        expected = expected + (op(steps, low.double()) * (s_x * low_scale(scale, True).double()).reshape(shape)).half()
    if kind == "linear":
        expected = expected + bias.reshape(shape)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_int8_fp16_bundle_layout(fp16_bundle):
    manifest = read_manifest(fp16_bundle)
    assert manifest.precision == "int8+fp16" and manifest.fp16_weights == "pair" and manifest.provenance["opset"] == 19
    assert {s.name: s.dtype for s in manifest.states if s.dtype == "float32"} == {"exit.acc_logits": "float32",
                                                                                 "exit.count": "float32"}
    assert {s.dtype for s in manifest.states} == {"float16", "float32"}  # membranes FP16, the exit head FP32
    proto = onnx.load(str(fp16_bundle / "step.onnx"))
    assert check_qdq_layout(proto) == 3
    inits = {i.name: i for i in proto.graph.initializer}
    scales = [inits[n.input[1]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(scales) == 9 and {s.data_type for s in scales} == {TensorProto.FLOAT16}
    io = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert io["x"] == io["confidence"] == io["logits"] == TensorProto.FLOAT
    assert io["body.layers.0.v"] == io["body.layers.0.v.next"] == TensorProto.FLOAT16
    assert io["exit.acc_logits"] == io["exit.acc_logits.next"] == io["exit.count"] == TensorProto.FLOAT
    encoder = onnx.load(str(fp16_bundle / "encoder.onnx"))
    assert {v.type.tensor_type.elem_type for v in [*encoder.graph.input, *encoder.graph.output]} == {TensorProto.FLOAT}
    assert any(i.data_type == TensorProto.FLOAT16 for i in encoder.graph.initializer)  # the analog conv in FP16


def retype_quantize_input(proto, layer: str, to: int) -> None:
    """Put a Cast to `to` in front of `layer`'s input QuantizeLinear."""
    quantize = next(n for n in proto.graph.node if n.name == f"{layer}.input_quantize")
    cast = helper.make_node("Cast", [quantize.input[0]], [f"{layer}.recast"], to=to, name=f"{layer}.recast")
    quantize.input[0] = f"{layer}.recast"
    proto.graph.node.insert(list(proto.graph.node).index(quantize), cast)


def test_a_quantize_whose_input_type_is_not_its_scales_is_refused(fp16_bundle, digits_checkpoint, tmp_path):
    """TensorRT's Quantize takes a scale of its input's type: FP32 input with an FP16 scale (or the reverse) is
    refused, naming the node and both types."""
    proto = onnx.load(str(fp16_bundle / "step.onnx"))
    retype_quantize_input(proto, "body.layers.7", TensorProto.FLOAT)
    with pytest.raises(UserError, match=r"body\.layers\.7\.input_quantize: its input is float32 and its scale float16"):
        check_qdq_layout(proto)
    fp32 = tmp_path / "int8.seenn"
    export_checkpoint(digits_checkpoint, fp32, ExportOptions(precision="int8"))
    proto = onnx.load(str(fp32 / "step.onnx"))
    retype_quantize_input(proto, "body.layers.2", TensorProto.FLOAT16)
    with pytest.raises(UserError, match=r"input is float16 and its scale float32"):
        check_qdq_layout(proto)


def test_opset_and_option_rules(digits_checkpoint, tmp_path):
    assert ExportOptions(precision="int8+fp16").graph_opset == 19 and ExportOptions(precision="int8").graph_opset == 18
    with pytest.raises(UserError, match="int8\\+fp16 needs --opset 19 or above.*pass --opset 19, or leave --opset out"):
        export_checkpoint(digits_checkpoint, tmp_path / "a", ExportOptions(precision="int8+fp16", opset=18))
    with pytest.raises(UserError, match="--fp16-weights single applies to --precision fp16 only, not int8\\+fp16"):
        export_checkpoint(digits_checkpoint, tmp_path / "b", ExportOptions(precision="int8+fp16", fp16_weights="single"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    manifest = export_checkpoint(digits_checkpoint, tmp_path / "c", ExportOptions(
        precision="int8+fp16", int8_weights="single", fp32_layers=("body.layers.9",), opset=20))
    assert manifest.fp16_weights == "single" and manifest.provenance["opset"] == 20
    proto = onnx.load(str(tmp_path / "c" / "step.onnx"))
    assert check_qdq_layout(proto) == 2  # the classifier kept in FP32, between casts
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert inits["model.body.layers.9.layer.weight"] == TensorProto.FLOAT


@pytest.mark.slow
def test_the_runtime_carries_fp16_states_alike_in_every_mode_and_backend(fp16_bundle, digits_checkpoint, samples):
    """ORT: per-sample, batch (compact) and slot modes, states on the host or bound, answer as the plain step loop.
    Torch: the runtime's answers are those of the loop over the torch modules, whose per-step logits are the torch
    int8+fp16 layout's (what verify --backend torch checks), and ORT agrees with it on nearly every prediction."""
    from seenn_deploy.export.verify import cumulative_mean, reference_trace
    from seenn_deploy.data import Normalisation
    from seenn_deploy.runtime.api import Runtime
    from seenn_deploy.runtime.loop import open_bundle_graphs, run_timesteps
    from seenn_deploy.runtime.executors.torch_executor import open_torch_graphs

    manifest = read_manifest(fp16_bundle)
    x = samples.x
    step, encoder = open_bundle_graphs(fp16_bundle, manifest)
    with step, encoder:
        ort_trace = run_timesteps(manifest, step, x, T, encoder, 32)
    graphs = open_torch_graphs(fp16_bundle, manifest)
    with graphs("step") as step, graphs("encoder") as encoder:
        torch_trace = run_timesteps(manifest, step, x, T, encoder, 32)
    for backend, trace in (("ort", ort_trace), ("torch", torch_trace)):
        modes = [("naive", 1, None), ("compact", 16, None), ("slots", 16, False), ("slots", 16, True)]
        for mode, batch, device_states in modes if backend == "ort" else modes[::3]:
            with Runtime.from_bundle(fp16_bundle, backend, exit="fixed", mode=mode, batch=batch,
                                     device_states=device_states) as runtime:
                results = runtime.infer(x)
            where = f"{backend} {mode} batch {batch} device_states={device_states}"
            assert [r.prediction for r in results] == trace.prediction[-1].tolist(), where
            np.testing.assert_allclose([r.confidence for r in results], trace.confidence[-1], rtol=1e-6, err_msg=where)
    model, config = load_checkpoint(digits_checkpoint)
    laid_out, _ = reference_trace(for_precision(model, "int8+fp16"), x, Normalisation.from_dict(config.normalisation),
                                  T, 32)
    np.testing.assert_allclose(torch_trace.logits, laid_out, rtol=0, atol=1e-3)
    assert (torch_trace.prediction == cumulative_mean(laid_out).argmax(-1)).mean() >= 0.99
    assert (ort_trace.prediction == torch_trace.prediction).mean() >= 0.95  # ORT computes the FP16 ops in FP32


def test_export_and_verify_from_the_command_line(digits_checkpoint, tmp_path, run_cli):
    out = tmp_path / "b.seenn"
    done = run_cli("export", digits_checkpoint, "--out", out, "--precision", "int8+fp16", "--int8-weights", "single")
    assert done.code == 0 and "int8+fp16" in done.out
    assert read_manifest(out).fp16_weights == "single"
    for backend in ("ort", "torch"):
        checked = run_cli("verify", out, "--data", "digits", "--samples", "120", "--backend", backend)
        assert checked.code == 0 and "int8+fp16" in checked.out and "PASS" in checked.out, checked.out + checked.err
    refused = run_cli("export", digits_checkpoint, "--out", tmp_path / "c", "--precision", "int8+fp16", "--opset", "18")
    assert "--opset 19" in refused.error()


def test_values_beyond_fp16s_range_are_refused_with_the_fix(digits_checkpoint):
    with pytest.raises(UserError, match=r"weight of magnitude 1e\+05 is beyond FP16's range .* --precision int8"):
        quantize_weight(torch.tensor([[1e5, 1.0]]), half=True)
    model, _ = load_checkpoint(digits_checkpoint)
    with torch.no_grad():
        model.encoder[0].weight[0, 0, 0, 0] = 7e4
    with pytest.raises(UserError, match=r"encoder\.0\.weight holds .*, beyond FP16's range: export with --precision int8"):
        for_precision(model, "int8+fp16")
    assert for_precision(model, "int8") is not None  # FP32 float side: fine


def test_the_exit_head_stays_fp32_so_a_small_temperature_cannot_overflow(digits_checkpoint, samples, tmp_path):
    """Logits / 1e-4 reach 1e5, beyond FP16's 65504: an FP16 head gave inf and NaN confidences on the torch layout."""
    from seenn_deploy.runtime.api import Runtime

    out = tmp_path / "cold.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8+fp16", temperature=1e-4))
    assert {s.name: s.dtype for s in read_manifest(out).states if s.name.startswith("exit.")} == {
        "exit.acc_logits": "float32", "exit.count": "float32"}
    for backend in ("ort", "torch"):
        with Runtime.from_bundle(out, backend, exit="fixed", batch=32) as runtime:
            confidence = np.array([r.confidence for r in runtime.infer(samples.x)])
        assert np.isfinite(confidence).all() and (confidence > 0.5).all(), backend  # a near one-hot softmax
