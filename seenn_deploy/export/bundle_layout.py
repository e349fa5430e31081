"""The torch layout of a bundle: its checkpoint laid out for the bundle's precision, with the INT8 weights the
bundle ships.

The torch layout of an int8 bundle (`verify --backend torch`, the torch runtime backend) must compute
with the weights the graph holds. Max-abs weights could be recomputed from the checkpoint, but
weights tuned on calibration data (int8_rounding.py) cannot without the data, so the layout always
takes them from the graph: `{layer}.weight_int8` and `{layer}.weight_scale`, the initializers
`qdq.insert_qdq` writes (a pair's low channels follow the high ones; `{layer}.halves` marks a pair).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.export.int8 import QMAX, QuantCompute, low_scale, quantized_layers
from seenn_deploy.export.precision import for_precision
from seenn_deploy.lazy import require
from seenn_deploy.runtime.manifest import Manifest
from seenn_deploy.snn.model import SpikingModel

FIX = "re-export the bundle from its checkpoint (`seenn-deploy export CHECKPOINT` with the same --precision)"


def bundle_layout(model: SpikingModel, bundle: Path, manifest: Manifest) -> SpikingModel:
    """An eval-mode copy of `model` (the bundle's checkpoint) computing what the bundle's graphs compute: laid out
    for its precision (precision.for_precision), an int8 bundle's quantized layers holding the graph's weights."""
    laid_out = for_precision(model, manifest.precision, manifest.fp32_layers, manifest.fp16_weights)
    if quantized_layers(laid_out):
        load_graph_int8_weights(laid_out, Path(bundle) / manifest.graphs["step"])
    return laid_out


def graph_initializers(step: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The named initializers of an ONNX graph, as arrays (only those present)."""
    onnx = require("onnx", "INT8 bundles on the torch backend")
    proto = onnx.load(str(step), load_external_data=True)
    return {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name in names}


def load_graph_int8_weights(model: SpikingModel, step: Path) -> int:
    """In place: every QuantCompute of `model` (the int8 layout of the bundle's checkpoint) takes the INT8 weights
    and scales of the same layer in the step graph `step`. Returns the number of layers loaded. UserError when the
    graph lacks a layer, holds weights of another shape or form (pair / single), or values outside INT8's symmetric
    range: the bundle and its checkpoint do not belong together."""
    layers = quantized_layers(model)
    keys = {f"{layer.name}.{part}" for layer in layers for part in ("weight_int8", "weight_scale", "halves")}
    found = graph_initializers(step, keys)
    for layer in layers:
        _load(layer, found, step)
    return len(layers)


def _load(layer: QuantCompute, found: dict[str, np.ndarray], step: Path) -> None:
    p = layer.name
    if f"{p}.weight_int8" not in found or f"{p}.weight_scale" not in found:
        raise UserError(f"{step}: no INT8 weights for layer {p} (initializers {p}.weight_int8, {p}.weight_scale): the "
                        f"graph is not the int8 export of this checkpoint: {FIX}")
    weight, scale = found[f"{p}.weight_int8"], found[f"{p}.weight_scale"].astype(np.float32).reshape(-1)
    if layer.kind == "linear":
        weight = weight.T  # MatMul [K, N] -> Linear [N, K]
    pair = f"{p}.halves" in found
    if pair != (layer.q_low is not None):
        raise UserError(f"{step}: layer {p} holds {'pair' if pair else 'single'} INT8 weights, the layout expects "
                        f"{'pair' if layer.q_low is not None else 'single'}: the manifest's weights form does not "
                        f"match its graph: {FIX}")
    parts = 2 if pair else 1
    expected = (parts * layer.q_weight.shape[0], *layer.q_weight.shape[1:])
    if weight.dtype != np.int8 or tuple(weight.shape) != expected or scale.shape != (expected[0],):
        raise UserError(f"{step}: layer {p} has INT8 weights {weight.dtype} {list(weight.shape)} and {scale.size} "
                        f"scales, the checkpoint's layer needs int8 {list(expected)} and {expected[0]}: {FIX}")
    if np.any(weight < -QMAX) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise UserError(f"{step}: layer {p} has weights of -128 or scales that are not finite and > 0: {FIX}")
    channels = layer.q_weight.shape[0]
    high, high_scale = torch.from_numpy(weight[:channels].astype(np.float32)), torch.from_numpy(scale[:channels])
    if pair and not np.array_equal(scale[channels:], low_scale(scale[:channels], layer.half)):
        raise UserError(f"{step}: layer {p}'s low weight scales are not the ones its high scales give: {FIX}")
    with torch.no_grad():
        layer.q_weight.copy_(high)
        layer.weight_scale.copy_(high_scale)
        if pair:
            layer.q_low.copy_(torch.from_numpy(weight[channels:].astype(np.float32)))
        layer.layer.weight.copy_(high * high_scale.reshape(-1, *[1] * (high.dim() - 1)))
