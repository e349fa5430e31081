"""snnTorch: `snn.Leaky(init_hidden=True)` as a state-explicit neuron.

The equations are those of `snntorch/_neurons/leaky.py` (Leaky.forward), term for term. With
b = clamp(beta, 0, 1), theta the threshold and H the spike function (`x > 0` for every snnTorch
surrogate in eval; probed), one timestep from the previous membrane m is

    r = H(m - theta)                                 the reset is delayed: it comes from the PREVIOUS step
    subtract:  m' = b * m + x - r * theta
    zero:      m' = b * ((1 - r) * m) + x
    none:      m' = b * m + x
    spk = H(m' - theta) * graded_spikes_factor
    reset_delay=False only: d = spk / graded_spikes_factor - r;  subtract: m' = m' - d * theta;  zero: m' = m' - d * m'

and the membrane starts at 0. The neuron returns spk, or (spk, m') with `output=True` (the last
layer of an nn.Sequential, by snnTorch's convention); the body reads spikes or membrane from
that pair as asked. `init_hidden=False` neurons keep the membrane in the user's forward loop,
which cannot become one step: they are refused. Every other snnTorch neuron is refused too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.adapters.base import Adapter, ForeignNeuron, firing_condition, float_scalar, read_output
from seenn_deploy.lazy import require

PACKAGE = "snntorch"
MECHANISMS = {"_base_sub": "subtract", "_base_zero": "zero", "_base_int": "none"}
MECHANISM_VALUES = ("subtract", "zero", "none")  # snnTorch's reset_mechanism_val 0, 1, 2


class TorchLeaky(ForeignNeuron):
    """snnTorch's Leaky: decay `beta` (a buffer, clamped to [0, 1] as snnTorch does), delayed reset by `mechanism`.

    `late_mechanism` is the reset of reset_delay=False (snnTorch reads it from its reset_mechanism_val);
    `graded` scales the spikes (graded_spikes_factor) when it is not 1; `emit_membrane` returns (spk, mem).
    """

    beta: Tensor
    graded: Tensor | None

    def __init__(self, beta: Tensor, mechanism: str = "subtract", reset_delay: bool = True,
                 late_mechanism: str | None = None, graded: Tensor | None = None, emit_membrane: bool = False,
                 **kwargs) -> None:
        super().__init__(multi_step=False, v_init=0.0, **kwargs)
        if mechanism not in MECHANISM_VALUES:
            raise UserError(f"reset mechanism {mechanism!r} is not one of {', '.join(MECHANISM_VALUES)}")
        self.register_buffer("beta", beta.detach().float().clamp(0, 1).clone())
        self.mechanism = mechanism
        self.reset_delay = bool(reset_delay)
        self.late_mechanism = late_mechanism or mechanism
        if graded is not None:
            self.register_buffer("graded", graded.detach().float().clone())
        else:
            self.graded = None
        self.emit_membrane = bool(emit_membrane)

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        r = self.fire(v)
        if self.mechanism == "subtract":
            h = self.beta * v + x - r * self.v_threshold
        elif self.mechanism == "zero":
            h = self.beta * ((1 - r) * v) + x
        else:
            h = self.beta * v + x
        spk = self.fire(h)
        if self.graded is not None:
            spk = spk * self.graded
        if not self.reset_delay:
            d = (spk if self.graded is None else spk / self.graded) - r
            if self.late_mechanism == "subtract":
                h = h - d * self.v_threshold
            elif self.late_mechanism == "zero":
                h = h - d * h
        return spk, h

    def output(self, spikes: Tensor, v: Tensor):
        return (spikes, v) if self.emit_membrane else spikes

    def extra_repr(self) -> str:
        return (f"beta={self.beta.tolist()}, mechanism={self.mechanism}, reset_delay={self.reset_delay}, "
                f"output={self.emit_membrane}, " + super().extra_repr())


def _leaky(m: Any, path: str) -> TorchLeaky:
    what = f"{path or 'the model'} (snntorch Leaky)"
    if not m.init_hidden:
        raise UserError(
            f"{what} has init_hidden=False: its membrane lives in your forward loop, which cannot be exported as "
            "one step; build the model as an nn.Sequential of snn.Leaky(..., init_hidden=True) (output=True on the "
            "last one), load the same weights and export that"
        )
    if m.inhibition:
        raise UserError(f"{what} uses inhibition, which cannot be exported; build it with inhibition=False")
    if m.state_quant:
        raise UserError(f"{what} quantises its state (state_quant), which cannot be exported; build it without")
    function = getattr(getattr(m, "state_function", None), "__name__", "")
    if function not in MECHANISMS:
        raise UserError(
            f"{what} has an unknown state function {function!r}; use reset_mechanism subtract, zero or none"
        )
    late = MECHANISM_VALUES[int(m.reset_mechanism_val)]
    graded = m.graded_spikes_factor.detach()
    return TorchLeaky(
        beta=torch.as_tensor(m.beta), mechanism=MECHANISMS[function], reset_delay=getattr(m, "reset_delay", True),
        late_mechanism=late, graded=None if bool((graded == 1).all()) else graded, emit_membrane=m.output,
        v_threshold=float_scalar(m.threshold, f"{what} threshold"), firing=firing_condition(m.spike_grad, what),
    )


class SnnTorchAdapter(Adapter):
    name = "snnTorch"
    package = PACKAGE
    namespace = "snntorch"

    def load(self) -> None:
        snn = require("snntorch", "snnTorch models")
        self.neurons = {snn.Leaky: _leaky}
        self.stateful_bases = (snn.SpikingNeuron,)

    def is_multi_step(self, module: nn.Module) -> bool:
        return False  # snnTorch modules take one timestep per call

    def reset(self, module: nn.Module) -> None:
        """Each Leaky's own `reset_mem()`: `snntorch.utils.reset` resets the instances snnTorch registered at
        construction, and `module` may be a copy it never registered."""
        snn = require("snntorch", "snnTorch models")
        for m in module.modules():
            if isinstance(m, snn.Leaky):
                m.reset_mem()

    def reference(self, module: nn.Module, x: Tensor, timesteps: int, multi_step: bool, readout: str) -> Tensor:
        """snnTorch's loop: reset, then one call per timestep."""
        self.reset(module)
        try:
            with torch.no_grad():
                return torch.stack([read_output(module(x), readout) for _ in range(timesteps)])
        finally:
            self.reset(module)
