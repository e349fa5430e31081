"""SpikingJelly (`spikingjelly.activation_based`, 2.x): LIFNode, IFNode and ParametricLIFNode as state-explicit neurons.

The equations are those of SpikingJelly's CPU kernels (`spikingjelly/_ops/{lif,if_,plif}/cpu.py`),
term for term, so that eval-mode spikes are bit-identical on CPU. With r = 0 for a soft reset
(v_reset None) and r = v_reset for a hard one, one timestep is

    LIFNode  decay_input:  h = v + (x - (v - r)) / tau
             otherwise:    h = v - (v - r) / tau + x
    PLIFNode decay_input:  h = v + (x - (v - r)) * k,   k = sigmoid(w) = 1 / (1 + exp(-w))
             otherwise:    h = v - (v - r) * k + x
    IFNode                 h = v + x
    fire                   s = (h >= v_threshold)        (heaviside(h - v_threshold), 1 at 0)
    reset    hard:         v = s * v_reset + (1 - s) * h
             soft:         v = h - s * v_threshold

and the membrane starts at v_reset (hard) or 0 (soft). detach_reset and the surrogate only
change gradients; the surrogate is probed to confirm it spikes with `>=` in eval.

Stateless `layer.*` wrappers (Conv2d, BatchNorm2d, Linear, Flatten, pooling, ...) and the
SeqToANNContainer / MultiStepContainer / StepModeContainer containers keep working: in step mode
'm' they fold [T, B] into the batch themselves. Where several follow each other in an
nn.Sequential, they are merged into one `FoldTime` (fold once, run them, unfold: the same
numbers, and a conv stays next to its BatchNorm for the exporter to fold). `layer.Dropout` is
the identity in eval. Anything else that keeps state (a `base.MemoryModule`) or is an unknown
SpikingJelly module is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.adapters.base import Adapter, ForeignNeuron, firing_condition, read_output
from seenn_deploy.export.adapters.layers import FoldTime
from seenn_deploy.lazy import require

PACKAGE = "spikingjelly"
STATELESS_LAYERS = (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "ThresholdDependentBatchNorm1d", "ThresholdDependentBatchNorm2d", "ThresholdDependentBatchNorm3d",
    "VotingLayer", "PrintShapeModule", "SeqToANNContainer", "MultiStepContainer", "StepModeContainer",
)


class JellyNeuron(ForeignNeuron):
    """SpikingJelly's reset. `v_reset=None`: soft reset (subtract the threshold); a float: hard reset to it."""

    def __init__(self, v_reset: float | None = 0.0, **kwargs) -> None:
        super().__init__(v_init=0.0 if v_reset is None else float(v_reset), **kwargs)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.rest = 0.0 if v_reset is None else float(v_reset)  # the potential the leak decays towards

    def reset(self, v: Tensor, s: Tensor) -> Tensor:
        if self.v_reset is None:
            return v - s * self.v_threshold
        return s * self.v_reset + (1.0 - s) * v

    def extra_repr(self) -> str:
        return f"v_reset={self.v_reset}, multi_step={self.multi_step}, " + super().extra_repr()


class JellyIF(JellyNeuron):
    """IFNode: h = v + x."""

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        return v + x


class JellyLIF(JellyNeuron):
    """LIFNode: `tau` is the time constant (> 1), as in SpikingJelly; `decay_input` scales the input by 1/tau too."""

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        if self.decay_input:
            return v + (x - (v - self.rest)) / self.tau
        return v - (v - self.rest) / self.tau + x

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class JellyPLIF(JellyNeuron):
    """ParametricLIFNode: the leak k = sigmoid(w) is computed once, by torch, from the trained w (a buffer here)."""

    k: Tensor

    def __init__(self, w: Tensor, decay_input: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("k", w.detach().float().sigmoid().clone())
        self.decay_input = bool(decay_input)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        if self.decay_input:
            return v + (x - (v - self.rest)) * self.k
        return v - (v - self.rest) * self.k + x

    def extra_repr(self) -> str:
        return f"k={self.k.tolist()}, decay_input={self.decay_input}, " + super().extra_repr()


def _common(node: Any, path: str) -> dict:
    what = f"{path or 'the model'} ({type(node).__name__})"
    if getattr(node, "_neuron_precision", None) is not None:
        raise UserError(f"{what} uses a reduced neuron precision; export it with the default fp32 neuron precision")
    if not isinstance(node.v_threshold, (int, float)):
        raise UserError(f"{what} has v_threshold {node.v_threshold!r}; only a float threshold is supported")
    return {
        "v_reset": node.v_reset,
        "v_threshold": float(node.v_threshold),
        "firing": firing_condition(node.surrogate_function, what),
        "multi_step": _step_mode(node) == "m",
    }


def _step_mode(module: Any) -> str | None:
    try:
        return module.step_mode
    except AttributeError:
        return None


class SpikingJellyAdapter(Adapter):
    name = "SpikingJelly"
    package = PACKAGE
    namespace = "spikingjelly.activation_based.neuron"

    def load(self) -> None:
        neuron = require("spikingjelly.activation_based.neuron", "SpikingJelly models")
        layer = require("spikingjelly.activation_based.layer", "SpikingJelly models")
        base = require("spikingjelly.activation_based.base", "SpikingJelly models")
        wrappers = require("spikingjelly.activation_based.layer.stateless_wrapper", "SpikingJelly models")
        self.base = base
        self.neurons = {
            neuron.LIFNode: lambda m, path: JellyLIF(tau=m.tau, decay_input=m.decay_input, **_common(m, path)),
            neuron.IFNode: lambda m, path: JellyIF(**_common(m, path)),
            neuron.ParametricLIFNode: lambda m, path: JellyPLIF(w=m.w, decay_input=m.decay_input, **_common(m, path)),
        }
        names = [*wrappers.__all__, *STATELESS_LAYERS]
        self.stateless = tuple(c for c in (getattr(layer, n, None) for n in names) if isinstance(c, type))
        self.identity_in_eval = tuple(c for c in (getattr(layer, n, None) for n in ("Dropout", "Dropout2d")) if c)
        self.stateful_bases = (base.MemoryModule,)
        # stateless layers whose step mode 'm' is exactly their 's' forward on [T*B, ...]
        folding = [*wrappers.__all__, "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "VotingLayer"]
        self.wrappers = tuple(c for c in (getattr(layer, n, None) for n in folding) if isinstance(c, type))
        self.seq_to_ann = (layer.SeqToANNContainer,)

    def restructure(self, root: nn.Module) -> nn.Module:
        """Merge runs of multi-step stateless layers in every nn.Sequential into one FoldTime (in place).

        The merged block keeps the name of its first layer, so the neurons keep their names.
        """
        for module in list(root.modules()):
            if type(module).forward is nn.Sequential.forward:
                self._merge_runs(module)
        return root

    def _merge_runs(self, sequential: nn.Module) -> None:
        merged: OrderedDict[str, nn.Module] = OrderedDict()
        run: list[nn.Module] = []
        run_name = ""
        for name, child in list(sequential.named_children()):
            layers = self._time_folded(child)
            if layers is None:
                if run:
                    merged[run_name] = FoldTime(nn.Sequential(*run))
                    run = []
                merged[name] = child
            else:
                run_name = run_name if run else name
                run.extend(layers)
        if run:
            merged[run_name] = FoldTime(nn.Sequential(*run))
        sequential._modules.clear()
        sequential._modules.update(merged)

    def _time_folded(self, module: nn.Module) -> list[nn.Module] | None:
        """The single-step layers that compute `module` on [T*B, ...], if it is a multi-step stateless layer."""
        if isinstance(module, self.seq_to_ann):
            return list(module.children())
        if isinstance(module, self.wrappers) and _step_mode(module) == "m":
            setattr(module, "step_mode", "s")  # noqa: B010 - SpikingJelly's validated property
            return [module]
        return None

    def is_multi_step(self, module: nn.Module) -> bool:
        """A module is multi-step ([T, B, ...] in) when any part of it is: a single-step model has no 'm' module."""
        return any(isinstance(m, self.base.MultiStepModule) or _step_mode(m) == "m" for m in module.modules())

    def neuron_multi_step(self, neuron: nn.Module) -> bool:
        return _step_mode(neuron) == "m"

    def reset(self, module: nn.Module) -> None:
        require("spikingjelly.activation_based.functional", "SpikingJelly models").reset_net(module)

    def reference(self, module: nn.Module, x: Tensor, timesteps: int, multi_step: bool, readout: str) -> Tensor:
        self.reset(module)
        try:
            with torch.no_grad():
                if multi_step:
                    return read_output(module(x.unsqueeze(0).repeat(timesteps, *([1] * x.dim()))), readout)
                return torch.stack([read_output(module(x), readout) for _ in range(timesteps)])
        finally:
            self.reset(module)
