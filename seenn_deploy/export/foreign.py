"""Foreign SNNs (SpikingJelly, snnTorch) export through the same path as the zoo's models.

`ForeignModel` wraps a foreign module as a `SpikingModel`: the encoder is the identity, and the
body runs a copy of the module in which every foreign neuron is replaced by a state-explicit
equivalent (see `seenn_deploy.export.adapters`). `export_model` checks that the wrapped model
gives the framework's own outputs, then hands it to `export_bundle`.

    module = load_factory_model("mypkg.models:make_net", Path("net.safetensors"), allow_pickle=False)
    export_model(module, torch.rand(2, 3, 32, 32), Path("net.seenn"), timesteps=4)

A model that loops over time inside its forward (the SpikingJelly tutorials' repeat-T-times-and-
average) is exported as the submodule that does one step, when the loop is that plain; else it is
refused with the change to make (see `seenn_deploy.export.adapters.time_loop`).

The bundle carries what `verify` needs without this process: the framework's own per-step outputs
on the sample input (`reference.npz`, see `seenn_deploy.export.verify.ReferenceSet`), and, when
the model came from `--factory`, the factory and the weights' path and hash in the provenance.

The encoder is not split off for foreign models (`encoder_split` is forced off): their first
conv lives inside the foreign module, so encoder.onnx would be an identity graph that costs a
copy and a second session for nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from seenn_deploy.data import Normalisation
from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.export.adapters import (
    FRAMEWORKS, READOUTS, Adapter, ForeignBody, detect_framework, get_adapter, read_output,
)
from seenn_deploy.export.adapters.time_loop import StepPlan, plan_steps
from seenn_deploy.export.exporter import ExportOptions, ExportSource, export_bundle
from seenn_deploy.export.verify import REFERENCE_FILE, ReferenceSet
from seenn_deploy.runtime.manifest import Manifest
from seenn_deploy.snn.model import InputSpec, SpikingModel
from seenn_deploy.snn.state import Frame

STEP_MODES = ("s", "m")
PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-5
_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ParityError(InternalError):
    """The wrapped model does not give the foreign framework's outputs: an adapter bug, or hidden state."""


class ForeignModel(SpikingModel):
    """A foreign SNN as a SpikingModel. Eval only: dropout is the identity and neurons are replaced for export.

    `module`: the foreign model (it is copied, never changed); `input_spec`: one sample's C, H, W.
    `step_mode`: 'm' if the module takes [T, B, ...] (SpikingJelly multi-step), 's' if it takes one
    timestep [B, ...] per call; None detects it, and a mode that contradicts the model is refused.
    A model that loops over time itself is run as its per-step submodule (`plan.loop`).
    `readout`: which of snnTorch's (spikes, membrane) outputs are the class scores.
    """

    body: ForeignBody

    def __init__(self, module: nn.Module, input_spec: InputSpec, *, framework: str = "auto",
                 step_mode: str | None = None, readout: str = "spikes") -> None:
        super().__init__(input_spec, num_classes=0)
        if not isinstance(module, nn.Module):
            raise UserError(f"export_model takes a torch.nn.Module, got {type(module).__name__}")
        if step_mode is not None and step_mode not in STEP_MODES:
            raise UserError(f"step_mode {step_mode!r} is not one of {', '.join(STEP_MODES)} (or None to detect it)")
        if readout not in READOUTS:
            raise UserError(f"readout {readout!r} is not one of {', '.join(READOUTS)}")
        if framework != "auto" and framework not in FRAMEWORKS:
            raise UserError(f"framework {framework!r} is not one of auto, {', '.join(FRAMEWORKS)}")
        found = detect_framework(module)
        if framework not in ("auto", found):
            raise UserError(
                f"the model is built from {found} modules, not {framework}: pass framework='{found}' or 'auto'"
            )
        self.framework = found
        adapter = get_adapter(found)
        try:
            self.plan: StepPlan = plan_steps(module, adapter, input_spec.shape, step_mode, readout)
        except UserError:
            adapter.convert(copy.deepcopy(module))  # a module it cannot export at all is the first thing to fix
            raise
        self.encoder = nn.Identity()
        self.body = ForeignBody(adapter.convert(copy.deepcopy(self.plan.module(module))), self.plan.multi_step, readout)
        self.eval()
        self.num_classes = self._count_classes()

    @property
    def step_mode(self) -> str:
        return "m" if self.body.multi_step else "s"

    def _count_classes(self) -> int:
        probe = torch.zeros(1, *self.input_spec.shape, device=self._device())
        try:
            with torch.no_grad():
                logits = self.body(probe, Frame(self._owners()))
        except UserError:
            raise
        except Exception as exc:  # shape errors and the like, from the user's model
            raise UserError(
                f"the model fails on one [1, {', '.join(map(str, self.input_spec.shape))}] timestep as a "
                f"{'multi' if self.body.multi_step else 'single'}-step module ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): check the sample input's shape and step_mode"
            ) from None
        return int(logits.shape[1])

    def _device(self) -> torch.device:
        for tensor in [*self.parameters(), *self.buffers()]:
            return tensor.device
        return torch.device("cpu")


def _check_sample(sample_input: Tensor) -> Tensor:
    if not isinstance(sample_input, Tensor):
        raise UserError(f"sample_input must be a torch.Tensor [B, C, H, W], got {type(sample_input).__name__}")
    if sample_input.dim() != 4:
        raise UserError(
            f"sample_input has shape {tuple(sample_input.shape)}; give one timestep [B, C, H, W] "
            "(an event model gets the same frame shape)"
        )
    if not sample_input.is_floating_point():
        raise UserError(f"sample_input is {sample_input.dtype}; give a float tensor, normalised as the model expects")
    return sample_input.detach().float().cpu()


def check_parity(module: nn.Module, model: ForeignModel, sample: Tensor, timesteps: int,
                 adapter: Adapter | None = None) -> ReferenceSet:
    """Raise ParityError unless the wrapped model equals the framework's own forward on `sample`; returns that forward's
    outputs (what `verify` compares the bundle with).

    Also checks the step form (explicit states, one call per timestep) against the multi-step form:
    that is what step.onnx computes. For a model that loops over time itself, the model's own
    call (its loop, not the way the export runs it) must equal the mean of the wrapped model's steps.
    """
    adapter = adapter or get_adapter(model.framework)
    plan, readout = model.plan, model.body.readout
    loop = plan.loop
    original = copy.deepcopy(module).eval().cpu()
    expected = adapter.reference(plan.module(original), sample, timesteps, plan.multi_step, readout)
    steps = max(timesteps, loop.timesteps) if loop else timesteps
    with torch.no_grad():
        wrapped = model(sample, timesteps=steps)
        states = model.init_states(sample.shape[0])
        stepped = []
        for _ in range(timesteps):
            logits, states = model.step(sample, states)
            stepped.append(logits)
    _compare(wrapped[:timesteps], expected, f"the wrapped model differs from {adapter.name}'s own forward",
             adapter.name)
    _compare(torch.stack(stepped), wrapped[:timesteps], "the step loop differs from the multi-step forward",
             adapter.name)
    model_output = None
    if loop is not None:
        model_output = own_output(original, sample, adapter, readout)
        _compare(loop.combine(wrapped[: loop.timesteps]), model_output,
                 f"the model's own {loop.timesteps}-step call differs from the {loop.reduction} of its steps",
                 adapter.name)
    return ReferenceSet(x=sample.numpy(), logits=expected.float().numpy(),
                        model_output=None if model_output is None else model_output.float().numpy(),
                        model_timesteps=loop.timesteps if loop else None)


def own_output(module: nn.Module, x: Tensor, adapter: Adapter, readout: str) -> Tensor:
    """One call of the model itself from rest, its loop over time included: what a time-looped model returns."""
    adapter.reset(module)
    try:
        with torch.no_grad():
            return read_output(module(x), readout)
    finally:
        adapter.reset(module)


def _compare(got: Tensor, expected: Tensor, what: str, framework: str) -> None:
    if got.shape != expected.shape:
        raise ParityError(f"parity check failed: {what}: shape {tuple(got.shape)} vs {tuple(expected.shape)}")
    close = torch.isclose(got, expected.to(got.dtype), rtol=PARITY_RTOL, atol=PARITY_ATOL)
    if bool(close.all()):
        return
    where = ""
    if got.dim() == 3:  # [T, B, K]
        where = f", first at timestep {int((~close).flatten(1).any(dim=1).nonzero()[0])}"
    diff = float((got - expected).abs().max())
    raise ParityError(
        f"parity check failed: {what} (max |difference| {diff:.3g}{where}): a bug in the {framework} "
        "adapter, or a custom module in the model that keeps state between timesteps; please report it"
    )


def export_model(module: nn.Module, sample_input: Tensor, out_dir: Path, *, timesteps: int,
                 classes: Sequence[str] | None = None, normalisation: Normalisation | None = None,
                 framework: str = "auto", step_mode: str | None = None, options: ExportOptions | None = None,
                 readout: str = "spikes", event: bool = False, origin: Mapping[str, str] | None = None) -> Manifest:
    """Export a foreign SNN in memory to a bundle at `out_dir`; returns its manifest.

    `sample_input`: one timestep [B, C, H, W] (static image, normalised as the model expects);
    it fixes the input size, feeds the parity check and is the reference set `verify` checks the
    bundle on (stored in the bundle with the framework's outputs). `timesteps`: T_max of the bundle.
    `classes`: names (default "0".."K-1"). `normalisation`: what the bundle applies to raw inputs.
    `framework`: auto, spikingjelly or snntorch. `step_mode`: see ForeignModel. `readout`: snnTorch
    (spk, mem) outputs: "spikes" (snnTorch's rate-coded convention) or "membrane" (often the better
    calibrated confidence). `event`: the bundle takes a new frame per timestep (DVS) instead of
    repeating a static image. `origin`: how to rebuild the model (`--factory`: factory, weights,
    weights_sha256, cwd), recorded so that `verify` can rerun the framework on real data.
    A model in train mode is exported in eval mode, with a warning.
    """
    if not isinstance(timesteps, int) or timesteps < 1:
        raise UserError(f"timesteps must be an int >= 1, got {timesteps!r}")
    sample = _check_sample(sample_input)
    model = ForeignModel(module, InputSpec(*sample.shape[1:]), framework=framework, step_mode=step_mode,
                         readout=readout).cpu()
    if any(m.training for m in module.modules()):
        warnings.warn(
            f"{type(module).__name__} is in train mode; it is exported in eval mode (dropout off, BatchNorm with its "
            "running statistics), as a deployed model runs: call model.eval() first to silence this",
            UserWarning, stacklevel=2,
        )
    adapter = get_adapter(model.framework)
    reference = check_parity(module, model, sample, timesteps, adapter)
    options = dataclasses.replace(options or ExportOptions(), encoder_split="off")
    names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(model.num_classes)]
    cls = type(module)
    foreign = {"framework": model.framework, "framework_version": adapter.version(),
               "class": f"{cls.__module__}.{cls.__qualname__}", "step_mode": model.step_mode, "readout": readout,
               "reference": REFERENCE_FILE, "reference_samples": int(sample.shape[0])}
    if model.plan.loop is not None:
        foreign["time_loop"] = model.plan.loop.to_dict()
    if origin:
        foreign["origin"] = dict(origin)
    source = ExportSource(model=model, timesteps=timesteps, classes=names, normalisation=normalisation,
                          event=event, arch=f"{model.framework}:{cls.__qualname__}", provenance={"foreign": foreign},
                          files={REFERENCE_FILE: reference.to_bytes()})
    return export_bundle(source, Path(out_dir), options)


# -- --factory package.module:function --------------------------------------------------------
def load_factory_model(factory: str, weights: Path, allow_pickle: bool, search_path: str | None = None) -> nn.Module:
    """Build a model with `factory` ("package.module:function", called with no arguments) and load `weights`; eval mode.

    Weights: safetensors, or .pt/.pth only with `allow_pickle` (read with torch.load(weights_only=True)).
    The module is imported as Python would, with the working directory (and `search_path`, such as
    the directory the bundle was exported from) also on the path.
    """
    from seenn_deploy.snn.checkpoint import read_weights  # one reader for every weights file

    if not isinstance(factory, str) or not _FACTORY.match(factory.strip()):
        raise UserError(
            f"--factory {factory!r} is not package.module:function (for example mypkg.models:make_net, a "
            "function that builds the model with no arguments)"
        )
    module_name, attr = factory.strip().split(":")
    target = _import(module_name, search_path)
    obj = target
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(target).items() if callable(v) and not n.startswith("_"))
            listing = f"; it has {', '.join(found[:20])}" if found else ""
            raise UserError(f"module {module_name} has no {attr!r}{listing}: fix the name after ':' in --factory")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{factory} is a {type(obj).__name__}, not a function that builds the model")
    try:
        model = obj()
    except TypeError as exc:
        raise UserError(
            f"{factory}() failed ({exc}): the factory is called with no arguments; wrap your constructor in a "
            "function that passes them"
        ) from None
    except Exception as exc:  # the user's code can raise anything
        raise UserError(f"{factory}() raised {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"weights file {weights} does not exist")
    state = read_weights(weights, allow_pickle)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise UserError(
            f"weights in {weights} do not fit the model built by {factory}: {first} {detail}".strip()
            + "; check that the factory builds the architecture these weights were trained with"
        ) from None
    return model.eval()


def _import(module_name: str, search_path: str | None = None):
    """Import `module_name`, with the working directory (and `search_path`) appended to sys.path for the duration."""
    cwd = os.getcwd()
    added = [p for p in dict.fromkeys([cwd, search_path])
             if p and p not in sys.path and not (p == cwd and "" in sys.path)]
    sys.path.extend(added)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.split(".")[: len(exc.name.split("."))] == exc.name.split("."):
            raise UserError(
                f"cannot import {module_name} (no module {exc.name!r}): run from the directory that holds it, add "
                "that directory to PYTHONPATH, or pip install its package"
            ) from None
        raise UserError(f"importing {module_name} failed: it needs {exc.name!r}, which is not installed") from None
    except Exception as exc:  # a syntax error or any exception at import time of the user's module
        raise UserError(f"importing {module_name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    finally:
        for path in added:
            sys.path.remove(path)
