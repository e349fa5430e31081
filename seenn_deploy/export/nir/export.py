"""NIR graph or .nir file -> bundle, through the same step contract and bundle writer as every model."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, ExportSource, export_bundle
from seenn_deploy.export.nir.model import NIRModel, nir_model
from seenn_deploy.export.nir.reading import read_graph, require_nir
from seenn_deploy.files import file_sha256
from seenn_deploy.runtime.manifest import Manifest

# The parameters of each neuron type, broadcast to the layer's shape by `repaired_graph`.
NEURON_PARAMS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"), "LI": ("tau", "r", "v_leak"),
    "IF": ("r", "v_threshold", "v_reset"), "I": ("r",), "Threshold": ("threshold",),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
}


def export_nir(path: Path, out: Path, *, input_shape: tuple[int, ...], timesteps: int,
               options: ExportOptions | None = None, dt: float | None = None,
               classes: list[str] | None = None) -> Manifest:
    """Export the NIR graph in file `path` (nir.write's HDF5) to a bundle at `out`; returns its manifest.

    `input_shape`: one sample's C, H, W. `timesteps`: T_max of the bundle. `dt`: the timestep that
    discretises the neurons (None: the dt at which the file's neurons take their input with unit
    gain, which is what snnTorch and Sinabs write). `classes`: names (default "0".."K-1").
    """
    path = Path(path)
    graph = read_graph(path)
    source = {"file": path.name, "sha256": file_sha256(path)}
    return _export(graph, Path(out), input_shape, timesteps, options, dt, classes, source)


def export_nir_graph(graph: Any, out: Path, *, input_shape: tuple[int, ...], timesteps: int,
                     options: ExportOptions | None = None, dt: float | None = None,
                     classes: list[str] | None = None) -> Manifest:
    """Export an in-memory nir.NIRGraph to a bundle at `out`; see export_nir."""
    return _export(graph, Path(out), input_shape, timesteps, options, dt, classes, {"file": None})


def _export(graph: Any, out: Path, input_shape: tuple[int, ...], timesteps: int, options: ExportOptions | None,
            dt: float | None, classes: list[str] | None, source: dict[str, Any]) -> Manifest:
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise UserError(f"timesteps must be an int >= 1, got {timesteps!r}")
    model = nir_model(graph, input_shape, dt)
    names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise UserError(f"{len(names)} class names for a graph with {model.num_classes} outputs: give one per output")
    # No encoder split: the first layer lives in the graph (see export/foreign.py for the same choice).
    options = dataclasses.replace(options or ExportOptions(), encoder_split="off")
    provenance = {"nir": {**source, **model.report.to_dict()}}
    export_source = ExportSource(model=model, timesteps=timesteps, classes=names, arch="nir", provenance=provenance)
    return export_bundle(export_source, out, options)


def repaired_graph(graph: Any, input_shape: tuple[int, ...], dt: float | None = None) -> Any:
    """A copy of `graph` that nir.write can save and nir 1.0.8 reads back with full types.

    Scalar neuron parameters (snnTorch 1.0's exporter) are broadcast to the layer's shape, and
    the input shapes exporters leave out (Conv input_shape, Flatten input_type) are filled in,
    all from the shapes `nir_model` probes (`dt` as there); the graph's types are then inferred again.
    """
    nir = require_nir()
    model: NIRModel = nir_model(graph, input_shape, dt)
    shapes = model.body.shapes
    inputs = model.body.inputs
    fixed = copy.deepcopy(graph)

    def input_shape_of(name: str) -> tuple[int, ...] | None:
        feeds = [src for src, _ in inputs.get(name, [])]
        return shapes.get(feeds[0]) if feeds else None

    def walk(g: Any, prefix: str) -> None:
        for name, node in g.nodes.items():
            full = prefix + str(name)
            kind = type(node).__name__
            if isinstance(node, nir.NIRGraph):
                walk(node, full + ".")
                continue
            if full not in shapes:
                continue
            if kind in NEURON_PARAMS:
                for attr in NEURON_PARAMS[kind]:
                    value = getattr(node, attr, None)
                    if value is not None and np.asarray(value).shape != shapes[full]:
                        setattr(node, attr, np.broadcast_to(np.asarray(value, dtype=np.float32),
                                                            shapes[full]).copy())
                node.__post_init__()
            elif kind in ("Conv1d", "Conv2d") and node.input_shape is None and input_shape_of(full):
                node.input_shape = np.array(input_shape_of(full)[1:])
                node.__post_init__()
            elif kind == "Flatten" and node.input_type.get("input") is None and input_shape_of(full):
                node.input_type = {"input": np.array(input_shape_of(full))}
                node.__post_init__()
            elif kind in ("Input", "Output"):  # nirtorch writes the sample's batch of 1 into these
                node.input_type = {"input": np.array(shapes[full])}
                node.output_type = {"output": np.array(shapes[full])}
            elif kind in ("SumPool2d", "AvgPool2d", "Scale"):
                node.input_type = {"input": np.array(input_shape_of(full))}
                node.output_type = {"output": np.array(shapes[full])}
        if hasattr(g, "_update_input_output_types"):
            g._update_input_output_types()

    walk(fixed, "")
    return fixed
