"""Reading a NIR file, and the graph as one flat list of nodes and edges.

Subgraphs (snnTorch writes RLeaky / RSynaptic as a NIRGraph node holding its recurrent loop)
are inlined: node `rnn` holding `lif` becomes `rnn.lif`, and the subgraph's Input and Output
nodes become pass-throughs, so one executor runs any nesting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from seenn_deploy.errors import MissingDependency, UserError
from seenn_deploy.lazy import require

NIR_HINT = "pip install 'seenn-deploy[nir]' (nir and nirtorch)"


def require_nir() -> ModuleType:
    """The `nir` package, or MissingDependency naming the extra that installs it."""
    try:
        return require("nir", "NIR graphs")
    except MissingDependency:
        raise MissingDependency(f"nir is not installed (needed for NIR graphs): {NIR_HINT}") from None


def read_graph(path: Path) -> Any:
    """The NIRGraph in a .nir (HDF5) file; UserError naming the file for a missing, unreadable or foreign file."""
    nir = require_nir()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"NIR file {path} does not exist: give the .nir file your framework wrote (nir.write)")
    try:
        # no type check: nir 1.0.8's inference rejects files older exporters wrote (scalar parameters, a batch
        # dimension in the Input's type); the model's own shape probe checks the graph instead
        graph = nir.read(str(path), type_check=False)
    except Exception as exc:  # noqa: BLE001 - h5py and nir raise OSError, KeyError, ValueError ... on a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot read {path} as a NIR graph ({type(exc).__name__}: {first}): the file is corrupt, truncated or "
            "not a NIR file; write it again with nir.write(path, graph) from the exporting framework"
        ) from None
    if not isinstance(graph, nir.NIRGraph):
        raise UserError(f"{path} holds a single {type(graph).__name__} node, not a NIR graph: save the whole network")
    return graph


@dataclass
class FlatGraph:
    """Every node by its (dotted) name, the edges between them, and the one Input and Output of the top graph."""

    nodes: dict[str, Any] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    input: str = ""
    output: str = ""

    def predecessors(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    def successors(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]


def flatten_graph(graph: Any) -> FlatGraph:
    """The top graph with every subgraph inlined; UserError unless it has exactly one Input and one Output."""
    nir = require_nir()
    flat = FlatGraph()
    _inline(nir, graph, "", flat)
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(
            f"the NIR graph has {len(inputs)} Input and {len(outputs)} Output nodes ({', '.join(inputs + outputs)}); "
            "export needs one of each: one image in, one vector of class scores out"
        )
    flat.input, flat.output = inputs[0], outputs[0]
    return flat


def _inline(nir: ModuleType, graph: Any, prefix: str, flat: FlatGraph) -> None:
    subgraphs: dict[str, tuple[str, str]] = {}  # name -> (its input node, its output node), flattened names
    for name, node in graph.nodes.items():
        full = prefix + str(name)
        if isinstance(node, nir.NIRGraph):
            ins = [n for n, m in node.nodes.items() if isinstance(m, nir.Input)]
            outs = [n for n, m in node.nodes.items() if isinstance(m, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise UserError(
                    f"NIR subgraph {full!r} has {len(ins)} Input and {len(outs)} Output nodes, not one each"
                )
            _inline(nir, node, full + ".", flat)
            subgraphs[full] = (f"{full}.{ins[0]}", f"{full}.{outs[0]}")
        else:
            flat.nodes[full] = node
    for edge in graph.edges:
        if len(edge) != 2:
            raise UserError(f"NIR edge {edge!r} is not a (source, target) pair")
        a, b = (prefix + _text(e) for e in edge)
        a = subgraphs[a][1] if a in subgraphs else a
        b = subgraphs[b][0] if b in subgraphs else b
        for end in (a, b):
            if end not in flat.nodes:
                raise UserError(f"NIR edge {edge!r} names node {end!r}, which the graph does not have")
        if (a, b) not in flat.edges:  # a repeated edge is one connection (snnTorch's importer reads it so)
            flat.edges.append((a, b))


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
