"""The bundle's step graph, adapted to the tensors Triton's sequence batcher hands a stateful model.

Triton's sequence batcher gives each control input the shape [B, 1] (one flag per batch slot) and
keeps each implicit state as [B, *dims] with non-empty dims. The step contract takes `reset` [B] and
has per-sample scalar states [B] (the step counter). So the adapted graph:

* takes `START` [B, 1] and `READY` [B, 1] (bool) and computes reset = START or not READY: a slot's first
  step, and every step of a slot that holds no sequence (its states stay at their initial values);
* takes and gives each scalar state as [B, 1] (Squeeze on the way in, Unsqueeze on the way out);
* leaves every other tensor, name and weight as the bundle has them.

Needs the `onnx` package (the torch extra); the result is checked with onnx.checker.
"""

from __future__ import annotations

from pathlib import Path

from seenn_deploy.lazy import require
from seenn_deploy.runtime.manifest import RESET, Manifest

START, READY = "START", "READY"  # the control inputs' names in the adapted graph and in config.pbtxt
_ROWS = ".rows"  # suffix of the [B] tensors the Squeeze / Unsqueeze nodes connect to the original graph


def scalar_states(manifest: Manifest) -> list[str]:
    """Names of the states that hold one number per sample ([B] in the step graph, [B, 1] in Triton)."""
    return [s.name for s in manifest.states if s.shape == ()]


def adapt_step_graph(step_onnx: Path, manifest: Manifest, out: Path) -> dict[str, str]:
    """Write the step graph at `step_onnx` adapted for Triton's sequence batcher (module docstring) to `out`;
    return the numpy dtype name of each of its inputs and outputs."""
    onnx = require("onnx", "the Triton step model")
    helper = onnx.helper
    model = onnx.load(str(step_onnx))
    graph = model.graph
    scalars = set(scalar_states(manifest))
    renamed = {RESET: RESET + _ROWS, **{name: name + _ROWS for name in scalars}}
    outputs = {s.output: s.output + _ROWS for s in manifest.states if s.name in scalars}
    everywhere = {**renamed, **outputs}  # the original graph sees its own [B] tensors under these names
    for node in graph.node:
        node.input[:] = [everywhere.get(name, name) for name in node.input]
        node.output[:] = [outputs.get(name, name) for name in node.output]
    for value in graph.value_info:
        value.name = everywhere.get(value.name, value.name)

    axes = helper.make_tensor("triton.axes", onnx.TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    nodes = [
        helper.make_node("Squeeze", [START, axes.name], ["triton.start" + _ROWS]),
        helper.make_node("Squeeze", [READY, axes.name], ["triton.ready" + _ROWS]),
        helper.make_node("Not", ["triton.ready" + _ROWS], ["triton.idle" + _ROWS]),
        helper.make_node("Or", ["triton.start" + _ROWS, "triton.idle" + _ROWS], [renamed[RESET]]),
    ]
    nodes += [helper.make_node("Squeeze", [name, axes.name], [renamed[name]]) for name in sorted(scalars)]
    tail = [helper.make_node("Unsqueeze", [rows, axes.name], [name]) for name, rows in outputs.items()]
    new_nodes = nodes + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(new_nodes)

    batch = "batch"
    inputs = []
    for value in graph.input:
        if value.name == RESET:
            inputs += [helper.make_tensor_value_info(flag, onnx.TensorProto.BOOL, [batch, 1]) for flag in (START, READY)]
        elif value.name in scalars:
            inputs.append(helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, [batch, 1]))
        else:
            inputs.append(value)
    del graph.input[:]
    graph.input.extend(inputs)
    for value in graph.output:
        if value.name in outputs:
            dims = value.type.tensor_type.shape.dim
            dims.add().dim_value = 1
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return tensor_dtypes(onnx, graph)


def tensor_dtypes(onnx, graph) -> dict[str, str]:
    """numpy dtype name of every input and output of an ONNX graph."""
    to_numpy = onnx.helper.tensor_dtype_to_np_dtype
    return {v.name: to_numpy(v.type.tensor_type.elem_type).name for v in [*graph.input, *graph.output]}
