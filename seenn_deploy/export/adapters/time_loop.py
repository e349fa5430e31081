"""Models that loop over time inside `forward`, found by how one call uses their neurons.

A bundle runs one timestep per step and accumulates the steps itself, so the module it exports
must compute one timestep (step mode 's') or one pass over a given sequence [T, B, ...] ('m').
The SpikingJelly tutorials write the loop into the model instead:

    def forward(self, x):                                   # x [B, C, H, W]
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)   # multi-step: repeat the input T times
        return self.net(x_seq).mean(0)                      # and return the mean over time [B, K]

    def forward(self, x):                                   # single-step: call the body T times
        return sum(self.net(x) for _ in range(self.T)) / self.T

`probe_steps` calls the model once on a batch [B, C, H, W] with hooks on its neurons. A neuron
called n > 1 times, or given a sequence [n, B, ...], means the model loops n timesteps itself.
The loop is exportable when one submodule holding every neuron does the per-step work, fed the
input itself (repeated n times in 'm'), and the model returns the mean (or the stack) of its
outputs: the bundle then exports that submodule. Anything else is refused with the change to
make. A step mode forced by the caller must agree with what the model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.adapters.base import read_output

if TYPE_CHECKING:
    from seenn_deploy.export.adapters.base import Adapter

REDUCTIONS = ("mean", "stack")  # how a looped model combines its steps: [B, K] mean over time, or [n, B, K]
PROBE_BATCH = 3  # odd, so that a batch axis is not mistaken for a time axis of 2 or 4
LOOP_ATOL = 1e-5
LOOP_RTOL = 1e-5


@dataclass(frozen=True)
class TimeLoop:
    """A model whose forward runs `timesteps` steps of the submodule `inner` and returns their `reduction`."""

    timesteps: int
    inner: str  # path of the submodule in the model (named_modules)
    multi_step: bool  # inner takes the repeated input [n, B, ...] once ('m'), else [B, ...] n times ('s')
    reduction: str  # "mean": the model returns [B, K]; "stack": [n, B, K]

    def combine(self, steps: Tensor) -> Tensor:
        """The model's output from the inner module's per-step outputs [n, B, K]."""
        return steps.mean(0) if self.reduction == "mean" else steps

    def to_dict(self) -> dict:
        return {"timesteps": self.timesteps, "inner": self.inner, "step_mode": "m" if self.multi_step else "s",
                "reduction": self.reduction}


@dataclass(frozen=True)
class StepPlan:
    """What to export: the submodule at `path` ('' = the model), in which step mode; `loop` if the model loops."""

    path: str
    multi_step: bool
    loop: TimeLoop | None = None

    def module(self, root: nn.Module) -> nn.Module:
        return root.get_submodule(self.path) if self.path else root


@dataclass
class _Calls:
    """Every call of one module during the probe: (first positional input, output)."""

    inputs: list
    outputs: list


def plan_steps(module: nn.Module, adapter: Adapter, shape: tuple[int, ...], step_mode: str | None,
               readout: str) -> StepPlan:
    """How `module` runs over time, from a probe call on [PROBE_BATCH, *shape]; UserError for a forced mode that
    contradicts it, or a loop that cannot be exported as it is."""
    declared_multi = adapter.is_multi_step(module)
    loop = probe_steps(module, adapter, shape, readout)
    if loop is not None:
        mode = "m" if loop.multi_step else "s"
        if step_mode is not None and step_mode != mode:
            raise UserError(
                f"step_mode {step_mode!r} contradicts the model: {type(module).__name__}.forward runs "
                f"{loop.timesteps} timesteps itself ({_how(loop)}), so each bundle step would be a whole "
                f"{loop.timesteps}-step call with the membranes carried on, not one timestep; the bundle runs its "
                f"per-step module {loop.inner!r}, step mode {mode!r}: pass step_mode={mode!r} or leave it to detection"
            )
        return StepPlan(loop.inner, loop.multi_step, loop)
    detected = "m" if declared_multi else "s"
    if step_mode is not None and step_mode != detected:
        what = ("has multi-step modules (step_mode 'm'): it takes a sequence [T, B, ...]" if declared_multi else
                "has no multi-step module: it takes one timestep [B, ...] per call")
        raise UserError(f"step_mode {step_mode!r} contradicts the model: it {what}; pass step_mode={detected!r} or "
                        "leave it to detection")
    return StepPlan("", declared_multi)


def probe_steps(module: nn.Module, adapter: Adapter, shape: tuple[int, ...], readout: str) -> TimeLoop | None:
    """The model's own time loop, found by calling a copy of it once on a random batch [B, *shape]; None if it has none.

    A model that does not run on one timestep [B, ...] (a multi-step model wants [T, B, ...]) has none.
    """
    import copy

    model = copy.deepcopy(module).eval().cpu()
    neurons = [m for m in model.modules() if type(m) in adapter.neurons]
    if not neurons:
        return None
    x = torch.rand(PROBE_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    ids = {id(n) for n in neurons}
    holders = [(name, m) for name, m in model.named_modules()
               if name and ids <= {id(d) for d in m.modules()}]
    calls: dict[nn.Module, _Calls] = {m: _Calls([], []) for m in [*neurons, *(m for _, m in holders)]}

    def record(m: nn.Module, args: tuple, out) -> None:
        calls[m].inputs.append(args[0] if args else None)
        calls[m].outputs.append(out)

    handles = [m.register_forward_hook(record) for m in calls]
    adapter.reset(model)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception:  # noqa: BLE001 - the model does not take one timestep; the ordinary path explains why
        return None
    finally:
        for handle in handles:
            handle.remove()
        adapter.reset(model)
    timesteps = _loop_length([calls[n] for n in neurons], [adapter.neuron_multi_step(n) for n in neurons])
    if timesteps is None:
        return None
    try:
        result = read_output(out, readout)
    except UserError:
        result = None
    for name, holder in holders:
        loop = _match(name, calls[holder], x, result, timesteps, readout)
        if loop is not None:
            return loop
    multi_step = any(adapter.neuron_multi_step(n) for n in neurons)
    if multi_step and (result is None or result.dim() != 2 or result.shape[0] != PROBE_BATCH):
        return None  # not one [B, K] per sample: no sign of an average over time; the ordinary path explains
    raise UserError(_refusal(type(module).__name__, timesteps, multi_step))


def _loop_length(neuron_calls: list[_Calls], multi_step: list[bool]) -> int | None:
    """n when the call shows a loop of n > 1 timesteps (each neuron called n times, or given [n, B, ...]); else None."""
    lengths = set()
    for calls, multi in zip(neuron_calls, multi_step):
        if multi:
            first = calls.inputs[0] if calls.inputs else None
            if len(calls.inputs) != 1 or not isinstance(first, Tensor) or first.dim() < 2 or \
                    first.shape[1] != PROBE_BATCH:
                return None
            lengths.add(int(first.shape[0]))
        else:
            lengths.add(len(calls.inputs))
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    return n if n > 1 else None


def _match(path: str, calls: _Calls, x: Tensor, result: Tensor | None, timesteps: int,
           readout: str) -> TimeLoop | None:
    """The loop, if the submodule at `path` does every step on the model's own input and the model returns the
    mean or the stack of its outputs."""
    try:
        outs = [read_output(o, readout) for o in calls.outputs]
    except UserError:
        return None
    if result is None or not all(isinstance(i, Tensor) for i in calls.inputs):
        return None
    if len(calls.inputs) == 1 and calls.inputs[0].shape == (timesteps, *x.shape):  # 'm': the input repeated
        if not all(torch.equal(step, x) for step in calls.inputs[0]):
            return None
        steps, multi_step = outs[0], True
    elif len(calls.inputs) == timesteps and all(i.shape == x.shape and torch.equal(i, x) for i in calls.inputs):
        steps, multi_step = torch.stack(outs), False
    else:
        return None
    if steps.dim() != 3 or steps.shape[:2] != (timesteps, x.shape[0]):
        return None
    for reduction in REDUCTIONS:
        loop = TimeLoop(timesteps, path, multi_step, reduction)
        expected = loop.combine(steps)
        if expected.shape == result.shape and bool(torch.allclose(result, expected, rtol=LOOP_RTOL, atol=LOOP_ATOL)):
            return loop
    return None


def _how(loop: TimeLoop) -> str:
    feeds = (f"it repeats the input into [{loop.timesteps}, B, ...] for {loop.inner!r}" if loop.multi_step
             else f"it calls {loop.inner!r} {loop.timesteps} times")
    return f"{feeds} and returns the {'mean over time' if loop.reduction == 'mean' else 'stacked steps'}"


def _refusal(name: str, timesteps: int, multi_step: bool) -> str:
    """The message for a loop that is not a plain repeat-and-average of one submodule: the change that fixes it."""
    if multi_step:
        before = "`x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)` and `return self.net(x_seq).mean(0)`"
        after = "`return self.net(x)` (x: [T, B, C, H, W] -> [T, B, K])"
    else:
        before = "`for t in range(self.T): out = out + self.net(x)` and `return out / self.T`"
        after = "`return self.net(x)` (one timestep: [B, C, H, W] -> [B, K])"
    return (
        f"{name}.forward loops over time itself ({timesteps} timesteps per call) in a way that cannot be exported: "
        "no single submodule holding every neuron is fed the model's own input at each step with the model "
        "returning the mean of its outputs, and a bundle runs one timestep per step and averages the steps itself. "
        f"Put the per-step layers in one submodule (self.net here) and drop the loop from forward: replace {before} "
        f"by {after}; then load the same weights and export that model"
    )
