"""A NIR graph as a SpikingModel: one executor runs the nodes in order, one timestep at a time.

Each timestep the body evaluates every node once, in an order where a node comes after the
nodes that feed it; a node's input is the sum of what its edges bring (NIR's rule). An edge that
closes a cycle (recurrence: snnTorch's RLeaky writes lif -> w_rec -> lif) brings its source's
output of the PREVIOUS timestep: that output is a state of the step contract, `body.delay.NODE`,
0 at the start. Neuron nodes read and write their membranes through the frame as every
state-explicit neuron here does, so the model exports, verifies and runs like the zoo's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.nir import nodes as nir_nodes
from seenn_deploy.export.nir.neurons import NIRNeuron, total
from seenn_deploy.export.nir.reading import FlatGraph, flatten_graph, require_nir
from seenn_deploy.snn.model import InputSpec, SpikingModel
from seenn_deploy.snn.state import Frame, Stateful

DEFAULT_DT = 1.0  # used only when the graph has no neuron with a time constant or resistance to infer it from
DISCRETISATION = ("forward Euler, states from 0: v' = (1 - dt/tau) v + (dt r/tau) I + (dt/tau) v_leak; CubaLIF's "
                  "current first, its new value into v; a spike where v' - v_threshold > 0, then v' = v_reset")


@dataclass
class NIRImport:
    """What the import decided, recorded in the bundle's provenance["nir"]."""

    dt: float
    dt_source: str  # "given", "inferred" (unit input gain, see nodes.infer_dt) or "default"
    discretisation: str
    nodes: dict[str, str]  # name -> NIR type, in execution order
    recurrent_edges: list[list[str]] = field(default_factory=list)  # (source, target): source's previous step
    repairs: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # nodes that do not lead to the output
    nir_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NIRBody(Stateful):
    """Runs the graph: x [T*B, ...] (time-major) -> output [T*B, K]. `inputs[node]`: (source, delayed) pairs."""

    def __init__(self, modules: dict[str, nn.Module], keys: dict[str, str], order: list[str],
                 inputs: dict[str, list[tuple[str, bool]]], input_node: str, output_node: str,
                 input_view: tuple[int, ...] | None, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.nodes = nn.ModuleDict({keys[name]: modules[name] for name in order})
        self.keys, self.order, self.inputs = keys, order, inputs
        self.input_node, self.output_node, self.input_view = input_node, output_node, input_view
        self.delayed = sorted({src for name in order for src, late in inputs[name] if late}, key=order.index)
        self.shapes = shapes

    def forward(self, x: Tensor, frame: Frame) -> Tensor:
        steps = frame.timesteps
        xs = x.chunk(steps, dim=0) if steps > 1 else (x,)
        batch = xs[0].shape[0]

        def zeros(shape: tuple[int, ...]) -> Tensor:
            return xs[0].new_zeros((batch, *shape))

        states: dict[str, tuple[Tensor, ...]] = {}
        for name in self.order:
            module = self.nodes[self.keys[name]]
            if isinstance(module, NIRNeuron):
                states[name] = tuple(frame.read(module, s, like=zeros(self.shapes[name]), init=0.0)
                                     for s in module.STATES)
        previous = {src: frame.read(self, f"delay.{self.keys[src]}", like=zeros(self.shapes[src]), init=0.0)
                    for src in self.delayed}
        spikes: dict[str, list[Tensor]] = {}
        outputs = []
        for x_t in xs:
            values: dict[str, Tensor] = {}
            for name in self.order:
                module = self.nodes[self.keys[name]]
                if name == self.input_node:
                    parts = [x_t if self.input_view is None else x_t.reshape(batch, *self.input_view)]
                else:
                    parts = [previous[src] if late else values[src] for src, late in self.inputs[name]]
                if isinstance(module, NIRNeuron):
                    value, states[name] = module.step(parts, states[name])
                    if module.spiking:
                        spikes.setdefault(name, []).append(value)
                else:
                    value = module(total(parts))
                values[name] = value
            previous = {src: values[src] for src in self.delayed}
            outputs.append(values[self.output_node])
        for name, values_ in states.items():
            module = self.nodes[self.keys[name]]
            for local, value in zip(module.STATES, values_):
                frame.write(module, local, value)
        for src in self.delayed:
            frame.write(self, f"delay.{self.keys[src]}", previous[src])
        for name, parts in spikes.items():
            frame.record_spikes(self.nodes[self.keys[name]], parts[0] if steps == 1 else torch.cat(parts, dim=0))
        return outputs[0] if steps == 1 else torch.cat(outputs, dim=0)


class NIRModel(SpikingModel):
    """A NIR graph as a SpikingModel (eval only): identity encoder, NIRBody body. `report`: what the import decided."""

    body: NIRBody

    def __init__(self, body: NIRBody, input_spec: InputSpec, num_classes: int, report: NIRImport) -> None:
        super().__init__(input_spec, num_classes)
        self.encoder = nn.Identity()
        self.body = body
        self.report = report
        self.eval()

    def _device(self) -> torch.device:
        for tensor in [*self.parameters(), *self.buffers()]:
            return tensor.device
        return torch.device("cpu")


def nir_model(graph: Any, input_shape: tuple[int, ...], dt: float | None = None) -> NIRModel:
    """The SpikingModel of `graph` (a nir.NIRGraph) for samples of `input_shape` (C, H, W), neurons discretised by `dt`.

    dt None: inferred (nodes.infer_dt), or 1.0 if the graph has no neuron to infer it from.
    """
    nir = require_nir()
    if not isinstance(graph, nir.NIRGraph):
        raise UserError(f"export takes a nir.NIRGraph, got {type(graph).__name__}")
    shape = _check_input_shape(input_shape)
    if dt is not None and not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise UserError(f"dt must be a positive number (the timestep in the graph's time unit), got {dt!r}")
    flat = flatten_graph(graph)
    order, inputs, recurrent, dropped = _schedule(flat)
    for name in order:
        nir_nodes.kind(flat.nodes[name], name)  # unsupported types refused by name before anything else
    if dt is None:
        inferred = nir_nodes.infer_dt({n: flat.nodes[n] for n in order})
        dt_value, source = (inferred, "inferred") if inferred is not None else (DEFAULT_DT, "default")
    else:
        dt_value, source = float(dt), "given"
    input_view = _input_view(flat.nodes[flat.input], shape)
    modules = {name: nir_nodes.stateless(flat.nodes[name], name) for name in order}
    shapes = _probe(modules, order, inputs, flat, input_view or shape)
    broadcast: dict[str, list[str]] = {}
    for name in order:
        if modules[name] is None:
            modules[name] = nir_nodes.neuron(flat.nodes[name], name, shapes[name], dt_value, broadcast)
    repairs = [f"{name}: {', '.join(attrs)}: scalar broadcast to {list(shapes[name])}"
               for name, attrs in broadcast.items()]
    out_shape = shapes[flat.output]
    if len(out_shape) != 1:
        raise UserError(
            f"the NIR graph's output {flat.output!r} is {list(out_shape)} per sample and timestep, not a vector of "
            "class scores: end the network with an Affine/Linear layer (and a neuron)"
        )
    report = NIRImport(
        dt=dt_value, dt_source=source, discretisation=DISCRETISATION,
        nodes={name: type(flat.nodes[name]).__name__ for name in order},
        recurrent_edges=[list(e) for e in recurrent], repairs=repairs, dropped=dropped,
        nir_version=str(getattr(nir, "__version__", "unknown")),
    )
    body = NIRBody(modules, _keys(order), order, inputs, flat.input, flat.output, input_view, shapes)
    return NIRModel(body, InputSpec(*shape), out_shape[0], report)


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(
            f"input_shape must be C, H, W (three positive ints; 1, 1, N for N features), got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _input_view(node: Any, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """How one sample enters the graph: None (as given) or the Input node's shape, when that differs but fits."""
    declared = (getattr(node, "input_type", None) or {}).get("input")
    if declared is None or np.asarray(declared).size == 0:
        return None
    declared = tuple(int(v) for v in np.asarray(declared).reshape(-1))
    if declared == shape or (len(declared) == len(shape) + 1 and declared[0] == 1 and declared[1:] == shape):
        return None  # as given; nirtorch records the sample's batch of 1 in front
    target = declared[1:] if len(declared) > 1 and declared[0] == 1 else declared
    if int(np.prod(target)) != int(np.prod(shape)):
        raise UserError(
            f"input_shape {list(shape)} does not fit the graph, whose Input node takes {list(declared)}: "
            "give the shape of one sample as the model was exported for (--input-shape C,H,W)"
        )
    return target


def _schedule(flat: FlatGraph) -> tuple[list[str], dict[str, list[tuple[str, bool]]], list[tuple[str, str]], list[str]]:
    """Execution order, each node's (source, delayed) inputs (forward edges first), the delayed edges, and the nodes
    dropped because they do not lead to the Output. UserError for nodes the Input does not reach.

    Each cycle is cut at the edge out of its last neuron node before the edge that closes it in
    a depth-first walk from the Input: what crosses a step boundary is then that neuron's previous
    spikes (0 at the start), which is how snnTorch's RLeaky feeds `recurrent(spk)`, bias included.
    A cycle without a neuron is cut where the walk closes it.
    """
    if flat.predecessors(flat.input):
        raise UserError(f"the NIR graph's input {flat.input!r} has incoming edges; an Input takes only the data")
    if flat.successors(flat.output):
        raise UserError(f"the NIR graph's output {flat.output!r} has outgoing edges; an Output ends the graph")
    neurons = {n for n, node in flat.nodes.items() if type(node).__name__ in nir_nodes.NEURONS}
    delayed: set[tuple[str, str]] = set()
    seen = {flat.input}
    path = [flat.input]
    stack = [iter(flat.successors(flat.input))]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            path.pop()
        elif child in path:  # a cycle: path[path.index(child):] + back to child
            cycle = path[path.index(child):] + [child]
            cut = max((i for i in range(len(cycle) - 1) if cycle[i] in neurons), default=len(cycle) - 2)
            delayed.add((cycle[cut], cycle[cut + 1]))
        elif child not in seen:
            seen.add(child)
            path.append(child)
            stack.append(iter(flat.successors(child)))
    if flat.output not in seen:
        raise UserError(f"the NIR graph's output {flat.output!r} is not reached from its input {flat.input!r}: "
                        "an edge is missing; re-export the model")
    unreached = [n for n in flat.nodes if n not in seen]
    if unreached:
        raise UserError(f"NIR node(s) {', '.join(map(repr, unreached))} get no input from the graph's Input "
                        f"{flat.input!r}: the graph is broken; re-export the model")
    order = _topological([n for n in flat.nodes if n in seen], [e for e in flat.edges if e not in delayed])
    live = {flat.output}
    for _ in range(len(order) + 1):  # what feeds the output, through any edge
        grown = {a for a, b in flat.edges if b in live and a not in live}
        if not grown:
            break
        live |= grown
    dropped = [n for n in order if n not in live]
    order = [n for n in order if n in live]
    inputs = {n: sorted(((a, (a, n) in delayed) for a in flat.predecessors(n) if a in live), key=lambda p: p[1])
              for n in order}
    recurrent = sorted(e for e in delayed if e[0] in live and e[1] in live)
    return order, inputs, recurrent, dropped


def _topological(names: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's order of `names` (ties in the given order); UserError naming the nodes of a cycle left over."""
    indegree = {n: 0 for n in names}
    for _, b in edges:
        if b in indegree:
            indegree[b] += 1
    ready = [n for n in names if indegree[n] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for a, b in edges:
            if a == name and b in indegree:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    if len(order) != len(names):
        stuck = [n for n in names if n not in order]
        raise UserError(f"NIR nodes {', '.join(map(repr, stuck))} form a loop that one timestep cannot order; "
                        "export supports recurrence through a neuron's previous spikes")
    return order


def _probe(modules: dict[str, nn.Module | None], order: list[str], inputs: dict[str, list[tuple[str, bool]]],
           flat: FlatGraph, sample: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each node's per-sample shape (neurons pass their input's shape). In a loop a node is probed once any of
    its inputs has a shape, so passes repeat until every node has one; then all inputs of a node must agree."""
    values: dict[str, Tensor] = {}
    with torch.no_grad():
        for _ in range(len(order)):
            for name in order:
                if name in values:
                    continue
                if name == flat.input:
                    values[name] = torch.zeros(1, *sample)
                    continue
                feeds = [src for src, _ in inputs[name] if src in values]
                if feeds:
                    values[name] = _probe_node(modules[name], name, flat, feeds, values)
            if len(values) == len(order):
                break
        for name in order:  # every input of a node, recurrent ones too, has one shape
            _probe_node(None, name, flat, [src for src, _ in inputs.get(name, [])] or [name], values)
    return {name: tuple(value.shape[1:]) for name, value in values.items()}


def _probe_node(module: nn.Module | None, name: str, flat: FlatGraph, feeds: list[str],
                values: dict[str, Tensor]) -> Tensor:
    value = values[feeds[0]]
    for src in feeds[1:]:
        if values[src].shape != value.shape:
            raise UserError(f"NIR node {name!r} sums inputs of shapes {list(value.shape[1:])} and "
                            f"{list(values[src].shape[1:])} (from {src!r}): the graph is inconsistent")
        value = value + values[src]
    if module is None:
        return value
    try:
        return module(value)
    except RuntimeError as exc:
        raise UserError(
            f"NIR node {name!r} ({type(flat.nodes[name]).__name__}) cannot take its input of shape "
            f"{list(value.shape[1:])} per sample: {str(exc).splitlines()[0]}; check input_shape"
        ) from None


def _keys(order: list[str]) -> dict[str, str]:
    """A module name per node: NIR names may hold dots and other characters a torch module name cannot."""
    keys: dict[str, str] = {}
    taken = set(dir(nn.ModuleDict))
    for name in order:
        key = re.sub(r"\W", "_", name) or "node"
        while key in taken:
            key += "_"
        taken.add(key)
        keys[name] = key
    return keys
