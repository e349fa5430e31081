"""What every framework adapter shares: neurons bound to a frame, the body that runs a foreign module, the walk.

A foreign SNN (SpikingJelly, snnTorch) keeps its membranes in module attributes and calls its
neurons with one argument. To export it through the step contract, every foreign neuron is
replaced by a `ForeignNeuron`: a `SpikingNeuron` whose forward takes only the input, like the
one it replaces, and reads and writes its membrane through the frame of the current body call.

`ForeignBody` binds that frame to the neurons for the duration of one call (a `Binding`, made
per call) and unbinds them in a `finally`: between calls the neurons hold nothing, and no state
is global. Within a call, the binding carries each membrane from one neuron call to the next,
so a single-step module called once per timestep integrates over time as its framework does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.adapters.layers import prepare_batchnorms
from seenn_deploy.lazy import require
from seenn_deploy.snn.neurons import SpikingNeuron
from seenn_deploy.snn.state import Frame, Stateful
from seenn_deploy.snn.surrogate import FiringCondition, spike

READOUTS = ("spikes", "membrane")


class Binding:
    """The frame of one body call, and each neuron's membrane and spikes so far in that call."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.membranes: dict[ForeignNeuron, Tensor] = {}
        self.spikes: dict[ForeignNeuron, list[Tensor]] = {}

    def membrane(self, neuron: ForeignNeuron, like: Tensor) -> Tensor:
        """The neuron's membrane: from the frame on its first call in this body call, else carried over."""
        if neuron in self.membranes:
            return self.membranes[neuron]
        return self.frame.read(neuron, "v", like=like, init=neuron.v_init)

    def keep(self, neuron: ForeignNeuron, v: Tensor, spikes: Tensor) -> None:
        """After a neuron call: its membrane, and its spikes [steps*B, ...] of this call."""
        self.membranes[neuron] = v
        self.spikes.setdefault(neuron, []).append(spikes)

    def flush(self) -> None:
        """Write every final membrane and the time-major spikes [T*B, ...] to the frame."""
        for neuron, v in self.membranes.items():
            self.frame.write(neuron, "v", v)
            parts = self.spikes[neuron]
            self.frame.record_spikes(neuron, parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))


class ForeignNeuron(SpikingNeuron):
    """Base of the replacement neurons: called like the foreign neuron, state through the bound frame.

    `multi_step`: the input carries time first, [T, B, ...] (SpikingJelly step_mode 'm'); else
    one timestep [B, ...] per call. Subclasses implement `charge` and `reset` (or `step`) with
    the foreign framework's exact arithmetic; `fire` gives the spike of a membrane (0 or 1).
    """

    def __init__(self, multi_step: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.multi_step = multi_step
        self._binding: Binding | None = None

    def fire(self, v: Tensor) -> Tensor:
        """1 where v reached the threshold (the framework's comparison), else 0; v's dtype."""
        return spike(v - self.v_threshold, self.firing, self.surrogate, self.training)

    def output(self, spikes: Tensor, v: Tensor):
        """What the foreign neuron returns for a call: its spikes (snnTorch's output=True adds the membrane)."""
        return spikes

    def forward(self, x: Tensor, frame: Frame | None = None):  # type: ignore[override]
        """x [T, B, ...] (multi_step) or [B, ...] -> spikes, same shape; the membrane goes through the bound frame."""
        if frame is not None:  # called as a Stateful with our [T*B, ...] convention
            return super().forward(x, frame)
        binding = self._binding
        if binding is None:
            raise InternalError(f"{type(self).__name__} was called outside a ForeignBody call: it has no frame")
        xs = x.unbind(0) if self.multi_step else (x,)
        v = binding.membrane(self, like=xs[0])
        out = []
        for x_t in xs:
            s, v = self.step(x_t, v)
            out.append(s)
        spikes = torch.stack(out) if self.multi_step else out[0]
        binding.keep(self, v, spikes.flatten(0, 1) if self.multi_step else spikes)
        return self.output(spikes, v)


class ForeignBody(Stateful):
    """Runs a converted foreign module as a model body: x [T*B, ...] (time-major) -> logits [T*B, K].

    `multi_step`: the module takes [T, B, ...] once (SpikingJelly 'm'); else it is called once per
    timestep with [B, ...]. A module that returns a tuple (snnTorch's `(spk, mem)`) is read by `readout`.
    """

    def __init__(self, module: nn.Module, multi_step: bool, readout: str = "spikes") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise UserError(f"readout {readout!r} is not one of {', '.join(READOUTS)}")
        self.module = module
        self.multi_step = multi_step
        self.readout = readout

    def neurons(self) -> Iterator[ForeignNeuron]:
        return (m for m in self.module.modules() if isinstance(m, ForeignNeuron))

    def forward(self, x: Tensor, frame: Frame) -> Tensor:
        steps = frame.timesteps
        binding = Binding(frame)
        neurons = list(self.neurons())
        for neuron in neurons:
            neuron._binding = binding
        try:
            if self.multi_step:
                out = self._read(self.module(x.unflatten(0, (steps, -1))))
                if out.dim() < 3:
                    raise UserError(f"the multi-step module returned shape {tuple(out.shape)}, not [T, B, K]")
                logits = out.flatten(0, 1)
            else:
                xs = x.chunk(steps, dim=0) if steps > 1 else (x,)
                outs = [self._read(self.module(x_t)) for x_t in xs]
                logits = outs[0] if steps == 1 else torch.cat(outs, dim=0)
        finally:
            for neuron in neurons:
                neuron._binding = None
        binding.flush()
        if logits.dim() != 2:
            raise UserError(
                f"the model returns {tuple(logits.shape[1:])} per sample and timestep, not class scores [K]: "
                "end it with a Linear layer (and a neuron) whose output is [B, K]"
            )
        return logits

    def _read(self, out) -> Tensor:
        return read_output(out, self.readout)


def read_output(out, readout: str) -> Tensor:
    """The class scores in a module's output: the tensor itself, or one of snnTorch's (spikes, membrane)."""
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise UserError(f"the model returns a tuple of {len(out)}; only snnTorch's (spikes, membrane) pair is read")
        out = out[0] if readout == "spikes" else out[1]
    if not isinstance(out, Tensor):
        raise UserError(f"the model returns a {type(out).__name__}, not a tensor of class scores")
    return out


def firing_condition(fn: Callable[[Tensor], Tensor], what: str) -> FiringCondition:
    """Which comparison a framework's spike function makes in eval, found by probing it around 0."""
    probe = torch.tensor([-1.0, -1e-6, 0.0, 1e-6, 1.0])
    with torch.no_grad():
        try:
            got = [float(v) for v in fn(probe)]
        except Exception as exc:  # a user's surrogate can raise anything
            raise UserError(f"{what}: its spike function fails on a probe ({exc}); use a built-in surrogate") from None
    if got == [0.0, 0.0, 1.0, 1.0, 1.0]:
        return ">="
    if got == [0.0, 0.0, 0.0, 1.0, 1.0]:
        return ">"
    raise UserError(
        f"{what}: its spike function gives {got} around the threshold, not a 0/1 step: "
        "export needs binary spikes (use a built-in surrogate in spiking mode)"
    )


def float_scalar(value, what: str) -> float:
    """A Python float from a number or a one-element tensor; UserError for anything else."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise UserError(f"{what} has shape {tuple(value.shape)}; only a scalar is supported")
        return float(value.detach().reshape(()))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} is {value!r}, not a number") from None


class Adapter:
    """One framework: which modules are neurons (and their replacements), which are stateless, which are refused.

    Subclasses fill the tables once the framework is imported (`load`), and implement
    `is_multi_step` and `reference` (the framework's own multi-step forward: the parity oracle).
    """

    name = ""  # as the framework spells itself
    package = ""  # its top-level import name
    namespace = ""  # where its users import the neurons from

    def __init__(self) -> None:
        self.neurons: dict[type, Callable[[Any, str], ForeignNeuron]] = {}
        self.stateless: tuple[type, ...] = ()
        self.identity_in_eval: tuple[type, ...] = ()
        self.stateful_bases: tuple[type, ...] = ()
        self.load()

    def load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def version(self) -> str:
        """The installed distribution's version (SpikingJelly has no __version__), else the module's, else "unknown"."""
        from importlib import metadata

        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return str(getattr(require(self.package, f"{self.name} models"), "__version__", "unknown"))

    def supported(self) -> str:
        return ", ".join(f"{self.namespace}.{cls.__name__}" for cls in self.neurons)

    def is_multi_step(self, module: nn.Module) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def reference(self, module: nn.Module, x: Tensor, timesteps: int, multi_step: bool, readout: str) -> Tensor:
        """The framework's own forward over `timesteps` of static x [B, ...] from rest -> [T, B, K]."""
        raise NotImplementedError  # pragma: no cover - abstract

    def reset(self, module: nn.Module) -> None:
        """Put every neuron of `module` back at rest, as the framework does between samples."""
        raise NotImplementedError  # pragma: no cover - abstract

    def neuron_multi_step(self, neuron: nn.Module) -> bool:
        """Whether one of the framework's neurons takes a sequence [T, B, ...] per call."""
        return False

    def is_foreign(self, module: nn.Module) -> bool:
        return type(module).__module__.split(".")[0] == self.package

    # -- the walk ---------------------------------------------------------------------------
    def convert(self, root: nn.Module) -> nn.Module:
        """Replace every foreign neuron of `root` (in place; eval only); UserError naming the first unsupported module.

        Then the stateless rewrites: the framework's own (`restructure`), and BatchNorms that
        the exporter cannot fold into a conv become ExportBatchNorm.
        """
        kind = self._classify(root, "")
        if kind == "neuron":
            return self.neurons[type(root)](root, "")
        if kind == "identity":
            return nn.Identity()
        self._convert_children(root, "")
        return prepare_batchnorms(self.restructure(root))

    def restructure(self, root: nn.Module) -> nn.Module:
        """Framework-specific stateless rewrites that keep outputs bit-identical (none by default)."""
        return root

    def _convert_children(self, module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            kind = self._classify(child, path)
            if kind == "neuron":
                module._modules[name] = self.neurons[type(child)](child, path)
            elif kind == "identity":
                module._modules[name] = nn.Identity()
            else:
                self._convert_children(child, path)

    def _classify(self, module: nn.Module, path: str) -> str:
        cls = type(module)
        if cls in self.neurons:
            return "neuron"
        if isinstance(module, self.identity_in_eval):
            return "identity"
        stateful = isinstance(module, self.stateful_bases)
        if stateful or (self.is_foreign(module) and not isinstance(module, self.stateless)):
            why = "keeps state between timesteps" if stateful else "is not a layer known to be stateless"
            raise UserError(
                f"{path or 'the model'} is {cls.__module__}.{cls.__qualname__}, which {why} and has no "
                f"state-explicit equivalent here; supported {self.name} neurons: {self.supported()} (plain torch "
                "layers and stateless layers pass): rebuild the model with those"
            )
        return "module"
