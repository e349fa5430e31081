"""NIR's neuron nodes as state-explicit step modules, discretised by forward Euler with step `dt`.

NIR gives each neuron as a continuous-time ODE. One timestep of length dt, with I the summed
input of the node (per neuron; parameters broadcast to the layer's shape) and z the spikes:

    LIF      v' = a v + g I + c            a = 1 - dt/tau, g = dt r / tau, c = dt v_leak / tau
    IF       v' = v + g I                  g = dt r
    CubaLIF  i' = a_s i + g_s I            a_s = 1 - dt/tau_syn, g_s = dt w_in / tau_syn
             v' = a v + g i' + c           a = 1 - dt/tau_mem, g = dt r / tau_mem, c = dt v_leak / tau_mem
    LI, CubaLI: as LIF, CubaLIF without firing; the output is v'
    I        v' = v + g I                  g = dt r; the output is v'
    then, for the firing nodes:  z = [v' - v_threshold > 0];  v' = v_reset where z

Every state starts at 0. This is snnTorch's own discrete forward term for term (its exporter
writes tau = dt / (1 - beta), r = tau / dt, w_in = tau_syn / dt with dt = 1e-4, so a = beta,
g = 1; its importer builds Leaky / Synaptic with reset_mechanism="zero", reset_delay=False):
the current i' enters the membrane on the same step, as in snnTorch's Synaptic (Norse adds the
input current one step later, which these files do not say). Coefficients are computed in
float64 and stored in float32; a gain of exactly 1 or a leak of exactly 0 costs no op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seenn_deploy.errors import UserError
from seenn_deploy.snn.state import Stateful
from seenn_deploy.snn.surrogate import heaviside


@dataclass(frozen=True)
class Decay:
    """One leaky integration v' = a v + g x + c, coefficients per neuron (float64, broadcast to the layer)."""

    a: np.ndarray
    g: np.ndarray
    c: np.ndarray


def euler(dt: float, tau: np.ndarray, gain: np.ndarray, v_leak: np.ndarray, node: str, what: str) -> Decay:
    """Forward-Euler coefficients of tau v. = (v_leak - v) + gain x; UserError where dt > tau (the step diverges)."""
    if np.any(tau <= 0):
        raise UserError(f"NIR node {node!r} has {what} <= 0 ({float(tau.min()):g}): a time constant must be positive")
    if np.any(dt > tau * (1 + 1e-6)):
        raise UserError(
            f"NIR node {node!r}: dt = {dt:g} is longer than its {what} ({float(tau.min()):g}), so forward Euler "
            "diverges; pass a smaller dt (--dt), the timestep the model was trained with"
        )
    return Decay(a=np.clip(1.0 - dt / tau, 0.0, 1.0), g=dt * gain / tau, c=dt * v_leak / tau)


class NIRNeuron(Stateful):
    """Base: per-neuron parameters as float32 buffers, and one timestep `step(x, states) -> (out, states)`.

    `states` are named by `STATES` (membrane `v`, current `i`), each starting at 0. `spiking`
    nodes output 0/1 spikes (recorded by the body for verify), the others their membrane.
    """

    STATES: tuple[str, ...] = ("v",)
    spiking = True

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self._ops: dict[str, bool] = {}

    def _param(self, name: str, value: np.ndarray, skip_if: float | None = None) -> None:
        """A buffer `name`, or no buffer (and no op) where every element equals `skip_if`."""
        value = np.asarray(value, dtype=np.float64)
        skip = skip_if is not None and bool(np.all(value.astype(np.float32) == np.float32(skip_if)))
        self._ops[name] = not skip
        if not skip:
            self.register_buffer(name, torch.from_numpy(value.astype(np.float32)))

    def _uses(self, name: str) -> bool:
        return self._ops.get(name, False)

    def _integrate(self, v: Tensor, parts: list[Tensor], prefix: str = "") -> Tensor:
        """a v + g (sum of parts) + c with the ops that are not identities.

        With gain 1 the parts are added one by one after the decay, in edge order (forward edges,
        then recurrent ones), which is snnTorch's order: beta * mem + input + recurrent(spk).
        """
        if self._uses(prefix + "a"):
            v = getattr(self, prefix + "a") * v
        if self._uses(prefix + "g"):
            v = v + getattr(self, prefix + "g") * total(parts)
        else:
            for part in parts:
                v = v + part
        if self._uses(prefix + "c"):
            v = v + getattr(self, prefix + "c")
        return v

    def _fire(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(spikes z in v's dtype, v after the reset): z = [v - v_threshold > 0], v = v_reset where z."""
        fired = v - self.v_threshold > 0
        z = fired.to(v.dtype)
        if self._uses("v_reset"):
            v = torch.where(fired, self.v_reset.to(v.dtype).expand_as(v), v)
        else:
            v = v - z * v
        return z, v

    def step(self, parts: list[Tensor], states: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One timestep: the node's inputs (one per incoming edge, [B, ...]) and states -> (output, new states)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def extra_repr(self) -> str:
        return f"node={self.node!r}"


class LIF(NIRNeuron):
    def __init__(self, node: str, decay: Decay, v_threshold: np.ndarray, v_reset: np.ndarray) -> None:
        super().__init__(node)
        self._param("a", decay.a, skip_if=1.0)
        self._param("g", decay.g, skip_if=1.0)
        self._param("c", decay.c, skip_if=0.0)
        self._param("v_threshold", v_threshold)
        self._param("v_reset", v_reset, skip_if=0.0)

    def step(self, parts, states):
        z, v = self._fire(self._integrate(states[0], parts))
        return z, (v,)


class IF(LIF):
    """LIF without leak: a = 1, c = 0."""

    def __init__(self, node: str, gain: np.ndarray, v_threshold: np.ndarray, v_reset: np.ndarray) -> None:
        ones = np.ones_like(gain)
        super().__init__(node, Decay(ones, gain, 0 * ones), v_threshold, v_reset)


class LI(NIRNeuron):
    """Leaky integrator (and, with a = 1, c = 0, the integrator I): outputs its membrane."""

    spiking = False

    def __init__(self, node: str, decay: Decay) -> None:
        super().__init__(node)
        self._param("a", decay.a, skip_if=1.0)
        self._param("g", decay.g, skip_if=1.0)
        self._param("c", decay.c, skip_if=0.0)

    def step(self, parts, states):
        v = self._integrate(states[0], parts)
        return v, (v,)


class CubaLIF(NIRNeuron):
    """Current-based LIF: the synaptic current i integrates the input, the membrane integrates i (the new one)."""

    STATES = ("v", "i")

    def __init__(self, node: str, synapse: Decay, membrane: Decay, v_threshold: np.ndarray | None,
                 v_reset: np.ndarray | None) -> None:
        super().__init__(node)
        self.spiking = v_threshold is not None
        self._param("syn_a", synapse.a, skip_if=1.0)
        self._param("syn_g", synapse.g, skip_if=1.0)
        self._param("a", membrane.a, skip_if=1.0)
        self._param("g", membrane.g, skip_if=1.0)
        self._param("c", membrane.c, skip_if=0.0)
        if v_threshold is not None:
            self._param("v_threshold", v_threshold)
            self._param("v_reset", v_reset if v_reset is not None else 0 * v_threshold, skip_if=0.0)

    def step(self, parts, states):
        v, i = states
        i = self._integrate(i, parts, prefix="syn_")  # syn_c is never set: no leak on the current
        v = self._integrate(v, [i])
        if not self.spiking:
            return v, (v, i)
        z, v = self._fire(v)
        return z, (v, i)


class Threshold(NIRNeuron):
    """A spike where the input exceeds the threshold; no state (recorded as a spiking layer by verify)."""

    STATES = ()

    def __init__(self, node: str, threshold: np.ndarray) -> None:
        super().__init__(node)
        self._param("v_threshold", threshold)

    def step(self, parts, states):
        return heaviside(total(parts) - self.v_threshold, ">"), ()


def total(parts: list[Tensor]) -> Tensor:
    """The sum of a node's inputs, in edge order."""
    value = parts[0]
    for part in parts[1:]:
        value = value + part
    return value
