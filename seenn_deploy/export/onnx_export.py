"""torch -> ONNX for the bundle's graphs, with a dynamic batch dimension and the hygiene checks.

The dynamo exporter (torch.export + onnxscript) is the default: it folds BatchNorm into the
convolutions and constants away. The TorchScript exporter stays available as a fallback.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.lazy import require

EXPORTERS = ("dynamo", "torchscript")
MIN_OPSET, MAX_OPSET = 17, 21
# Operators TensorRT 10 does not take, or takes only with data-dependent shapes we never want here.
FORBIDDEN_OPS = {"NonZero", "Loop", "Scan", "If", "ScatterND", "SequenceConstruct", "SequenceAt", "Unique", "BatchNormalization"}


@dataclass(frozen=True)
class GraphSpec:
    """What one ONNX graph takes and gives: names in order; every input and output is batch-first."""

    inputs: Sequence[str]
    outputs: Sequence[str]


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset} is outside the supported {MIN_OPSET}..{MAX_OPSET} (TensorRT 10 parses up to 21)")


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress and warnings meant for its own developers; keep the user's terminal clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(module: nn.Module, args: tuple[Tensor, ...], spec: GraphSpec, path: Path, opset: int,
                 max_batch: int, exporter: str = "dynamo", metadata: dict[str, str] | None = None,
                 rewrite: Callable[[object], None] | None = None) -> None:
    """Export `module(*args)` to `path` with batch dimension 0 dynamic in 1..max_batch, then check it.

    `rewrite(proto)` edits the exported ModelProto in place before the checks (the INT8 export's Q/DQ nodes)."""
    onnx = require("onnx", "ONNX export")
    if exporter not in EXPORTERS:
        raise UserError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    module = module.eval()
    if len(args) != len(spec.inputs):
        raise InternalError(f"{len(args)} example inputs for {len(spec.inputs)} graph inputs")
    with _quiet_exporter(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
            shapes = _dynamic_batch(module, len(args), batch)
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=list(spec.inputs), output_names=list(spec.outputs),
                dynamic_shapes=shapes, opset_version=opset, optimize=True, verbose=False,
            )
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in [*spec.inputs, *spec.outputs]}
            torch.onnx.export(module, args, buffer, dynamo=False, input_names=list(spec.inputs),
                              output_names=list(spec.outputs), dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True)
            proto = onnx.load_from_string(buffer.getvalue())
    _rename_batch_dim(proto)
    if rewrite is not None:
        rewrite(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    check_graph(proto, spec)
    onnx.save(proto, str(path))


def _dynamic_batch(module: nn.Module, count: int, batch) -> tuple:
    """torch.export's dynamic_shapes for forward(a, b, *rest): dim 0 of every tensor is `batch`."""
    params = inspect.signature(module.forward).parameters.values()
    fixed = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    shapes: list = [{0: batch} for _ in range(min(fixed, count))]
    if varargs:
        shapes.append(tuple({0: batch} for _ in range(count - fixed)))
    return tuple(shapes)


def _rename_batch_dim(proto) -> None:
    """Name the dynamic batch dimension 'batch' on every graph input and output."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def check_graph(proto, spec: GraphSpec) -> None:
    """onnx.checker, shape inference, names and the operator allow-list; an InternalError names what failed."""
    onnx = require("onnx", "ONNX export")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise InternalError(f"the exported graph fails onnx.checker: {exc}") from exc
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    got_in = [i.name for i in inferred.graph.input]
    got_out = [o.name for o in inferred.graph.output]
    if got_in != list(spec.inputs) or got_out != list(spec.outputs):
        raise InternalError(f"exported graph has inputs {got_in} and outputs {got_out}, expected {list(spec.inputs)} and {list(spec.outputs)}")
    used = {n.op_type for n in inferred.graph.node}
    for fn in inferred.functions:
        used |= {n.op_type for n in fn.node}
    bad = used & FORBIDDEN_OPS
    if bad:
        raise InternalError(f"exported graph uses {sorted(bad)}, which TensorRT 10 cannot build into a static-shape engine")
