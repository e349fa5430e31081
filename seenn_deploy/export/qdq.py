"""Explicit Q/DQ in the step graph: where the nodes go, and the check that TensorRT can fuse them.

`insert_qdq` rewrites each quantized layer (`int8.LayerQuant`) of an exported FP32 graph:

    x -> QuantizeLinear(s_x, 0) -> DequantizeLinear(s_x, 0) -> Conv <- DequantizeLinear(axis 0) <- W int8
    x -> Q -> DQ -> MatMul <- DequantizeLinear(axis 1) <- W^T int8 [K, N];  -> Sub(-bias)   (a Linear)

which is TensorRT's placement for explicit quantization: Q/DQ on the inputs of the weighted
operation only (its output stays FP32, so membranes, bias and the exit head stay FP32), the
weights pre-quantized INT8 behind a DequantizeLinear, per output channel, zero points 0
(TensorRT quantizes symmetrically only), activations per tensor. A Linear becomes MatMul rather
than Gemm (MatMul weights per channel on axis 1, as ONNX Runtime's quantizer and ModelOpt write
them): TensorRT fuses both, and ONNX Runtime's CPU provider fuses DQ -> MatMul with a float
output into MatMulIntegerToFloat, an integer kernel (its QDQ Gemm and Conv fusions need a
QuantizeLinear on the output, which would round the membrane's input). The bias is a Sub of -b:
ONNX Runtime's MatMulAddFusion (level 1) turns MatMul + Add into a float Gemm before its QDQ
fusions (level 2) run; subtracting the negated bias is bitwise the same sum and stays out of it.

With pair weights (int8.py) the low weights are more output channels of the same op (scale / 254;
the bias goes with the high ones), and Split + Add sums the halves in FP32: one INT8 kernel of
twice the width (so not for a grouped Conv, whose extra channels would read other input groups:
refused). Two ops on one Q/DQ'd input would be the same work, but ONNX Runtime then fuses
neither into its integer kernel (measured, 1.32).

int8+fp16 (`int8.LayerQuant.half`): the exported layer is FP16, and so are its Q/DQ scales, the
bias and the Split / Add of a pair, as ModelOpt's ONNX PTQ writes a graph with high_precision_dtype
fp16: TensorRT's strongly typed mode takes each tensor's type from the graph, its Quantize takes
"scale: tensor of type T1" (the type of its input; T1 float16, bfloat16 or float32, TensorRT 10
operator reference), and ONNX's QuantizeLinear / DequantizeLinear take float16 scales from opset 19
(DequantizeLinear's output has its scale's type). The scales are FP16 numbers by construction
(int8.fp16_ceil), so writing them as FP16 rounds nothing.

Why not ONNX Runtime's `quantize_static` or ModelOpt: both choose activation scales from
calibration ranges and put Q/DQ on every quantizable tensor (outputs included, which here
would round what the membranes integrate). Their overrides could pin the scales, but the scales
here come from the model's structure (int8.activation_grids), not from data, and which layers
to quantize is a property of the spiking graph: writing the few nodes directly states the layout
exactly, and `check_qdq_layout` enforces the rules whatever wrote them.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.int8 import LayerQuant
from seenn_deploy.lazy import require

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
# Output-channel axis of the weight input (input 1) of each weighted op as this exporter writes them.
WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}
FIX = "re-export the bundle with `seenn-deploy export --precision int8` (or int8+fp16)"
SCALE_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


def insert_qdq(proto, layers: dict[str, LayerQuant]) -> None:
    """In place: the layer whose weight initializer is named `key` (the parameter's name in the exported module)
    reads its input through Q/DQ and its weight from INT8 through DQ. InternalError if a layer is not found as a
    Conv or a plain Gemm (alpha = beta = 1, transA = 0, transB = 1) consuming that initializer as its weight."""
    onnx = require("onnx", "INT8 export")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced: dict[int, list] = {}  # id(node) -> the nodes that take its place
    for weight_name, layer in layers.items():
        users = consumers.get(weight_name, [])
        if weight_name not in inits or len(users) != 1 or list(users[0].input[1:2]) != [weight_name]:
            raise InternalError(f"{layer.name}: weight {weight_name} is not the weight input of exactly one node in "
                                "the exported graph")
        node = users[0]
        conv = node.op_type == "Conv"
        if not conv and not (node.op_type == "Gemm" and _plain_linear(node)):
            raise InternalError(f"{layer.name}: exported as {node.op_type} ({_attrs(node)}), not a Conv or a Gemm with "
                                "transB=1")
        if conv and layer.weight_low is not None and _attrs(node).get("group", 1) != 1:
            raise InternalError(f"{layer.name}: pair weights on a grouped Conv: the low channels would read the wrong "
                                "input group (int8.QuantCompute refuses this)")
        p = layer.name
        float_type = numpy_helper.to_array(inits[weight_name]).dtype  # float32; float16 for int8+fp16
        parts = [layer.weight] if layer.weight_low is None else [layer.weight, layer.weight_low]
        scales = [layer.weight_scale] if layer.weight_low is None else [layer.weight_scale, layer.low_scale]
        q_weight = np.concatenate(parts, axis=0)  # pair: the low channels after the high ones
        q_weight = q_weight if conv else np.ascontiguousarray(q_weight.T)  # MatMul: [K, N]
        channels = len(layer.weight_scale)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        input_scale = _exact(np.array(layer.input_scale, np.float32), float_type, f"{p} input scale")
        weight_scale = _exact(np.concatenate(scales).astype(np.float32), float_type, f"{p} weight scales")
        graph.initializer.extend([
            numpy_helper.from_array(input_scale, f"{p}.input_scale"),
            numpy_helper.from_array(np.array(0, np.int8), f"{p}.input_zero_point"),
            numpy_helper.from_array(np.ascontiguousarray(q_weight, np.int8), f"{p}.weight_int8"),
            numpy_helper.from_array(weight_scale, f"{p}.weight_scale"),
            numpy_helper.from_array(np.zeros(len(parts) * channels, np.int8), f"{p}.weight_zero_point"),
        ])
        new = [
            helper.make_node("QuantizeLinear", [node.input[0], f"{p}.input_scale", f"{p}.input_zero_point"],
                             [f"{p}.input_int8"], name=f"{p}.input_quantize"),
            helper.make_node("DequantizeLinear", [f"{p}.input_int8", f"{p}.input_scale", f"{p}.input_zero_point"],
                             [f"{p}.input_dq"], name=f"{p}.input_dequantize"),
            helper.make_node("DequantizeLinear", [f"{p}.weight_int8", f"{p}.weight_scale", f"{p}.weight_zero_point"],
                             [f"{p}.weight_dq"], axis=WEIGHT_AXIS["Conv" if conv else "MatMul"],
                             name=f"{p}.weight_dequantize"),
        ]
        out = node.output[0]
        product = out if layer.weight_low is None and (conv or bias is None) else f"{p}.product"
        if conv:
            if bias is not None and layer.weight_low is not None:  # the bias goes with the high channels
                b = numpy_helper.to_array(inits[bias])
                graph.initializer.append(numpy_helper.from_array(np.concatenate([b, np.zeros_like(b)]), f"{p}.bias"))
                bias = f"{p}.bias"
            op = helper.make_node("Conv", [f"{p}.input_dq", f"{p}.weight_dq", *([bias] if bias else [])], [product],
                                  name=f"{p}.conv")
            op.attribute.extend(node.attribute)
            new.append(op)
        else:
            new.append(helper.make_node("MatMul", [f"{p}.input_dq", f"{p}.weight_dq"], [product], name=f"{p}.matmul"))
        if layer.weight_low is not None:
            total = out if conv or bias is None else f"{p}.sum"
            graph.initializer.append(numpy_helper.from_array(np.array([channels, channels], np.int64), f"{p}.halves"))
            new += [helper.make_node("Split", [product, f"{p}.halves"], [f"{p}.high", f"{p}.low"], axis=1,
                                     name=f"{p}.split"),
                    helper.make_node("Add", [f"{p}.high", f"{p}.low"], [total], name=f"{p}.sum")]
            product = total
        if not conv and bias is not None:
            if layer.weight_low is None:  # Sub of -b: ONNX Runtime fuses MatMul + Add into a float Gemm (see above)
                graph.initializer.append(numpy_helper.from_array(-numpy_helper.to_array(inits[bias]), f"{p}.minus_bias"))
                new.append(helper.make_node("Sub", [product, f"{p}.minus_bias"], [out], name=f"{p}.bias"))
            else:
                new.append(helper.make_node("Add", [product, bias], [out], name=f"{p}.bias"))
        replaced[id(node)] = new
        graph.initializer.remove(inits[weight_name])
    nodes = [n for node in graph.node for n in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # a conv bias replaced by its pair form
        graph.initializer.remove(init)


def _exact(values: np.ndarray, float_type: np.dtype, what: str) -> np.ndarray:
    """`values` (float32) as `float_type`; InternalError if that rounds any (int8+fp16 scales are FP16 numbers)."""
    cast = values.astype(float_type)
    if not np.array_equal(cast.astype(np.float32), values):
        raise InternalError(f"{what} are not exact in {np.dtype(float_type).name}: the Q/DQ scales would round")
    return cast


def _attrs(node) -> dict:
    onnx = require("onnx", "INT8 export")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _plain_linear(node) -> bool:
    attrs = _attrs(node)
    return (attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and attrs.get("transA", 0) == 0
            and attrs.get("transB", 0) == 1)


def check_qdq_layout(proto, where: str = "the step graph") -> int:
    """The number of weighted ops that run in INT8; UserError naming the node and the rule where the graph's Q/DQ
    layout is one TensorRT does not fuse into INT8 Conv / MatMul kernels (or cannot build at all):

    * QuantizeLinear / DequantizeLinear: INT8, zero points all 0 (symmetric), scales constant, finite and > 0,
      FP32 or FP16 (int8+fp16), and a QuantizeLinear's input of its scale's type (TensorRT's Quantize: "scale:
      tensor of type T1", the input's type; a strongly typed network inserts no cast for it);
    * an activation Q feeds only DQ nodes with its scale and zero point, per tensor (scalar scale);
    * every DQ feeds weighted ops (Conv, MatMul, Gemm) directly: an op between DQ and the Conv stops the fusion;
    * a weight DQ reads a constant INT8 initializer, per output channel (Conv axis 0, MatMul axis 1) or per tensor;
    * a weighted op has DQ on both its data and weight inputs or on neither (half-quantized runs in float).
    """
    onnx = require("onnx", "INT8 export")
    graph = proto.graph
    types = _tensor_types(proto)
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = onnx.numpy_helper.to_array(_attrs(node)["value"])
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems: list[str] = []

    def refuse(node, rule: str) -> None:
        problems.append(f"{node.op_type} {node.name or node.output[0]}: {rule}")

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero = (consts.get(node.input[i]) if len(node.input) > i and node.input[i] else None for i in (1, 2))
        if scale is None:
            refuse(node, "its scale is not a constant")
            continue
        if scale.dtype not in SCALE_TYPES:
            refuse(node, f"its scale is {scale.dtype}: TensorRT takes FP32 or FP16 scales")
            continue
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            refuse(node, "its scale has values that are not finite and > 0")
        if zero is None:
            if len(node.input) > 2 and node.input[2]:
                refuse(node, "its zero point is not a constant")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            refuse(node, f"zero point {zero.dtype} {np.unique(zero)[:4].tolist()}: TensorRT takes INT8 with zero point 0 "
                   "(symmetric) only")
        if node.op_type == "QuantizeLinear":
            given = types.get(node.input[0])
            if given is not None and given != scale.dtype:
                refuse(node, f"its input is {given.name} and its scale {scale.dtype.name}: TensorRT quantizes a "
                       "tensor with a scale of its own type (cast the input, or write the scale in its type)")
            users = consumers.get(node.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                refuse(node, "feeds something other than DequantizeLinear")
            elif any(not _same_params(consts, node, u) for u in users):
                refuse(node, "its DequantizeLinear has another scale or zero point")
            if scale.size != 1:
                refuse(node, "activations are quantized per tensor (a scalar scale)")
            continue
        # DequantizeLinear
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type not in WEIGHTED_OPS for u in users):
            kinds = sorted({u.op_type for u in users}) or ["a graph output"]
            refuse(node, f"feeds {', '.join(kinds)}: a DequantizeLinear must feed the Conv / MatMul directly")
            continue
        source = node.input[0]
        if source in consts:
            if consts[source].dtype != np.int8:
                refuse(node, f"weights of type {consts[source].dtype}, not INT8")
            for user in users:
                if list(user.input[1:2]) != [node.output[0]]:
                    refuse(node, f"INT8 constant feeds input 0 of {user.op_type} {user.name}, not its weight input")
                    continue
                axis = WEIGHT_AXIS.get(user.op_type)
                got = _attrs(node).get("axis", 1)
                if scale.size > 1 and (axis is None or got % consts[source].ndim != axis):
                    refuse(node, f"per-channel weight scales on axis {got}; {user.op_type} weights are quantized per "
                           f"output channel (axis {axis})")
        elif source not in producer or producer[source].op_type != "QuantizeLinear":
            refuse(node, "reads neither an INT8 constant nor a QuantizeLinear")
    quantized = 0
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        fed = [name in producer and producer[name].op_type == "DequantizeLinear" for name in node.input[:2]]
        if any(fed) and not all(fed):
            side = "data" if fed[1] else "weight"
            refuse(node, f"its {side} input has no DequantizeLinear: TensorRT runs a half-quantized op in float")
        quantized += all(fed)
    if problems:
        raise UserError(f"{where} has a Q/DQ layout TensorRT does not fuse into INT8 kernels: "
                        f"{'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}: {FIX}")
    return quantized


def _tensor_types(proto) -> dict[str, np.dtype]:
    """name -> numpy dtype of every graph input, initializer and inferred intermediate tensor whose type is known."""
    onnx = require("onnx", "INT8 export")
    inferred = onnx.shape_inference.infer_shapes(proto)
    found: dict[str, np.dtype] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem:
            found[value.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    for init in proto.graph.initializer:
        found[init.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
    return found


def _same_params(consts: dict, q, dq) -> bool:
    def params(node) -> Iterable:
        return [consts.get(node.input[i]) if len(node.input) > i and node.input[i] else None for i in (1, 2)]

    return all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
               for a, b in zip(params(q), params(dq)))


def qdq_rewrite(module) -> Callable[[object], None] | None:
    """For an exported module holding int8.QuantCompute layers: the `export_graph` rewrite that inserts their Q/DQ
    nodes and checks the layout (every layer fused); None when it holds none."""
    from seenn_deploy.export.int8 import quantized_layers

    layers = quantized_layers(module)
    if not layers:
        return None
    names = {id(p): name for name, p in module.named_parameters()}
    by_weight = {names[id(layer.layer.weight)]: layer.spec() for layer in layers}

    def rewrite(proto) -> None:
        insert_qdq(proto, by_weight)
        fused = check_qdq_layout(proto)
        if fused != len(by_weight):
            raise InternalError(f"{fused} weighted ops run in INT8 after the Q/DQ rewrite, expected {len(by_weight)}")

    return rewrite
