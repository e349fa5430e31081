"""Which torch module each NIR node becomes, and the timestep dt that discretises the neurons.

Stateless nodes map one to one (nodes.stateless). Neuron nodes (nodes.neuron) need their input
shape, known once the stateless part has been probed: per-neuron parameters written as scalars
(snnTorch 1.0's exporter) are broadcast to the layer's shape there, and each broadcast is
reported as a repair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.nir import layers, neurons
from seenn_deploy.export.nir.layers import array

SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d", "Scale",
             "Threshold", "IF", "LIF", "CubaLIF", "LI", "CubaLI", "I")
NEURONS = ("Threshold", "IF", "LIF", "CubaLIF", "LI", "CubaLI", "I")
DT_RTOL = 1e-5  # neuron nodes agree on dt within this (float32 parameters written by float32 arithmetic)


def kind(node: Any, name: str) -> str:
    """The node's NIR type name; UserError naming the node if it is not one export supports."""
    kind_ = type(node).__name__
    if node is None:
        raise UserError(
            f"NIR node {name!r} is empty: the exporting framework wrote no node for that layer (Norse's to_nir has "
            "none for Flatten, for example); replace the layer by one the framework exports, or reshape the input"
        )
    if kind_ not in SUPPORTED:
        why = {"Delay": "a delay line keeps a queue of past inputs, which the step contract has no state for"}.get(
            kind_, "it has no state-explicit equivalent here")
        raise UserError(
            f"NIR node {name!r} is a {kind_}, which cannot be exported ({why}); supported nodes: "
            f"{', '.join(SUPPORTED)}"
        )
    return kind_


def stateless(node: Any, name: str) -> nn.Module | None:
    """The torch module of a stateless node, None for a neuron node (built later by `neuron`)."""
    k = kind(node, name)
    try:
        if k in ("Input", "Output"):
            return layers.Identity()
        if k in ("Affine", "Linear"):
            return layers.linear(node, name, bias=k == "Affine")
        if k in ("Conv1d", "Conv2d"):
            return layers.conv(node, name, dims=int(k[-2]))
        if k in ("SumPool2d", "AvgPool2d"):
            return layers.pool(node, name, total=k == "SumPool2d")
        if k == "Flatten":
            return layers.flatten(node, name)
        if k == "Scale":
            return layers.Scale(array(node, "scale", name))
    except (ValueError, TypeError, RuntimeError) as exc:  # torch refusing a layer's settings
        raise UserError(f"NIR node {name!r} ({k}) has settings torch cannot build: {exc}") from None
    return None


def unit_gain_dt(node: Any, name: str) -> np.ndarray | None:
    """The dt at which a neuron node takes its input with gain 1 (tau / r, or 1 / r without leak); None if none."""
    k = kind(node, name)
    with np.errstate(divide="ignore", invalid="ignore"):
        if k in ("LIF", "LI"):
            values = array(node, "tau", name) / array(node, "r", name)
        elif k in ("CubaLIF", "CubaLI"):
            values = array(node, "tau_mem", name) / array(node, "r", name)
        elif k in ("IF", "I"):
            values = 1.0 / array(node, "r", name)
        else:
            return None
    values = values[np.isfinite(values) & (values > 0)]
    return values if values.size else None


def infer_dt(nodes: dict[str, Any]) -> float | None:
    """The one dt at which every neuron node takes its input with unit gain (what snnTorch and Sinabs write).

    None when the graph has no neuron with a resistance; UserError when the nodes disagree (pass dt).
    Rounded to 6 significant digits: float32 parameters give dt = 1e-4 as 1.00000005e-4. Refused
    where that dt would leave a leaky node no memory (dt = tau: Norse writes r = 1 whatever its dt).
    """
    found: dict[str, np.ndarray] = {}
    for name, node in nodes.items():
        values = unit_gain_dt(node, name)
        if values is not None:
            found[name] = values
    if not found:
        return None
    ref = float(np.median(np.concatenate([v.reshape(-1) for v in found.values()])))
    for name, values in found.items():
        if not np.allclose(values, ref, rtol=DT_RTOL, atol=0):
            far = float(values.reshape(-1)[np.argmax(np.abs(values.reshape(-1) - ref))])
            raise UserError(
                f"cannot infer dt: NIR node {name!r} takes its input with unit gain at dt = {far:g}, other neurons "
                f"at {ref:g}; pass the timestep the model was trained with (--dt DT; Norse uses 0.001)"
            )
    dt = float(f"{ref:.6g}")
    for name, node in nodes.items():  # unit gain with dt = tau: no membrane kept between steps, so not what was meant
        for attr in ("tau", "tau_mem", "tau_syn"):
            if type(node).__name__ in NEURONS and getattr(node, attr, None) is not None:
                tau = array(node, attr, name)
                if np.any(dt >= tau * (1 - DT_RTOL)):
                    raise UserError(
                        f"cannot infer dt: at unit input gain NIR node {name!r} would forget its state every step "
                        f"(dt = {attr} = {float(tau.min()):g}); pass the timestep the model was trained with (--dt DT; "
                        "a file from Norse's to_nir(dt=D) needs dt = D * D)"
                    )
    return dt


def _shaped(node: Any, attr: str, name: str, shape: tuple[int, ...], repairs: dict[str, list[str]]) -> np.ndarray:
    """Parameter `attr` broadcast to the layer's shape (a scalar to every neuron: reported as a repair)."""
    value = array(node, attr, name)
    if value.shape == shape:
        return value
    if value.size == 1:
        repairs.setdefault(name, []).append(attr)
        return np.full(shape, float(value.reshape(-1)[0]))
    try:
        return np.broadcast_to(value, shape).copy()
    except ValueError:
        raise UserError(
            f"NIR node {name!r}: {attr} has shape {list(value.shape)}, which does not fit its input "
            f"{list(shape)}; give one value per neuron or one for the layer"
        ) from None


def neuron(node: Any, name: str, shape: tuple[int, ...], dt: float,
           repairs: dict[str, list[str]]) -> neurons.NIRNeuron:
    """The state-explicit module of a neuron node whose input is `shape` per sample, discretised with `dt`.

    `repairs` gets node name -> the parameters given as one scalar and broadcast to the layer.
    """
    k = kind(node, name)

    def p(attr: str) -> np.ndarray:
        return _shaped(node, attr, name, shape, repairs)

    def reset() -> np.ndarray:
        return p("v_reset") if getattr(node, "v_reset", None) is not None else np.zeros(shape)

    if k == "Threshold":
        return neurons.Threshold(name, p("threshold"))
    if k == "IF":
        return neurons.IF(name, dt * p("r"), p("v_threshold"), reset())
    if k == "I":
        ones = np.ones(shape)
        return neurons.LI(name, neurons.Decay(ones, dt * p("r"), 0 * ones))
    if k in ("LIF", "LI"):
        decay = neurons.euler(dt, p("tau"), p("r"), p("v_leak"), name, "tau")
        if k == "LI":
            return neurons.LI(name, decay)
        return neurons.LIF(name, decay, p("v_threshold"), reset())
    # CubaLIF, CubaLI
    w_in = p("w_in") if getattr(node, "w_in", None) is not None else np.ones(shape)
    synapse = neurons.euler(dt, p("tau_syn"), w_in, np.zeros(shape), name, "tau_syn")
    membrane = neurons.euler(dt, p("tau_mem"), p("r"), p("v_leak"), name, "tau_mem")
    if k == "CubaLI":
        return neurons.CubaLIF(name, synapse, membrane, None, None)
    return neurons.CubaLIF(name, synapse, membrane, p("v_threshold"), reset())
