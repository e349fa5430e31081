"""ONNX Runtime CPU's three ways to run one convolution of spike inputs with INT8 weights, timed in one run.

    python benchmarks/ort_int8_conv.py [--batch 64] [--runs 50]

* fp32: Conv on the dequantized INT8 weights (what an int8 bundle's convolutions run on ORT CPU);
* convinteger: the exact integer form (Cast to uint8, ConvInteger, Cast, times the scales, plus the bias);
* qlinearconv: ORT's QDQ conv kernel, which rounds its output to 8 bits (so not usable before a membrane).

Prints each one's time per call (one thread, median of --runs) and the largest difference of the exact
forms; the README's INT8 section quotes it for why an int8 bundle's convolutions run in FP32 on the CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def session(nodes, inits, channels: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", channels, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    from onnx import TensorProto, helper
    from onnx.numpy_helper import from_array

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    c_in, c_out, step = 16, 32, 0.25  # spikes averaged by a 2x2 pool: k / 4
    weight = rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    scale = (np.abs(weight.reshape(c_out, -1)).max(1) / 127).astype(np.float32)
    q = np.round(weight / scale[:, None, None, None]).astype(np.int8)
    bias = rng.normal(size=c_out).astype(np.float32)
    x = (rng.integers(0, 5, size=(args.batch, c_in, 14, 14)) * step).astype(np.float32)
    pads = {"pads": [1, 1, 1, 1]}
    forms = {
        "fp32": session([helper.make_node("Conv", ["x", "w", "b"], ["y"], **pads)],
                        [from_array(q * scale[:, None, None, None], "w"), from_array(bias, "b")], c_in),
        "convinteger": session([
            helper.make_node("Mul", ["x", "inverse_step"], ["steps"]),
            helper.make_node("Cast", ["steps"], ["x_u8"], to=TensorProto.UINT8),
            helper.make_node("ConvInteger", ["x_u8", "q"], ["sums"], **pads),
            helper.make_node("Cast", ["sums"], ["sums_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sums_f", "scales"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["y"])],
            [from_array(np.array(1 / step, np.float32), "inverse_step"), from_array(q, "q"),
             from_array((scale * step).reshape(1, c_out, 1, 1), "scales"), from_array(bias.reshape(1, c_out, 1, 1), "bias")],
            c_in),
        "qlinearconv": session([
            helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
            helper.make_node("QLinearConv", ["x_q", "x_scale", "x_zero", "q", "w_scale", "w_zero", "y_scale", "y_zero",
                                             "bias_q"], ["y_q"], **pads),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"])],
            [from_array(np.array(step, np.float32), "x_scale"), from_array(np.array(0, np.uint8), "x_zero"),
             from_array(q, "q"), from_array(scale, "w_scale"), from_array(np.zeros(c_out, np.int8), "w_zero"),
             from_array(np.array(0.1, np.float32), "y_scale"), from_array(np.array(128, np.uint8), "y_zero"),
             from_array(np.round(bias / (scale * step)).astype(np.int32), "bias_q")], c_in),
    }
    exact = {name: forms[name].run(None, {"x": x})[0] for name in ("fp32", "convinteger")}
    print(f"batch {args.batch}, {c_in}->{c_out} channels, 3x3, 14x14, one thread; "
          f"max |fp32 - convinteger| {np.abs(exact['fp32'] - exact['convinteger']).max():.2e}")
    for name, form in forms.items():
        for _ in range(5):
            form.run(None, {"x": x})
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            form.run(None, {"x": x})
            times.append(time.perf_counter() - started)
        print(f"  {name:12s} {np.median(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
