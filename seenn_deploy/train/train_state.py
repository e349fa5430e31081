"""What `train --resume` needs beyond the checkpoint: momentum, RNG states, the step reached, the history.

train_state.safetensors holds the weights (model.*), SGD momentum (momentum.<i>) and the RNG
states (rng.*); train_state.json the step, the settings, the per-epoch history and the running
sums of an unfinished epoch (a --max-steps stop), so a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from seenn_deploy.errors import UserError
from seenn_deploy.files import read_json_object, write_atomic, write_json_atomic
from seenn_deploy.lazy import require

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@dataclass
class EpochRecord:
    """One epoch, or the part of one before a --max-steps stop (then `steps` is not a multiple of the epoch)."""

    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: list[float]  # per timestep, on the validation slice; [] without one
    lr: float
    seconds: float
    steps: int = 0  # optimizer steps done by the end of this record, counted from the start of the run


@dataclass
class RunningSums:
    """Loss and accuracy sums of the epoch in progress, so an epoch split by a stop reports as a whole one."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    step: int = 0
    planned_steps: int = 0  # the plan the run was saved under (epochs x steps per epoch, or --max-steps)
    history: list[EpochRecord] = field(default_factory=list)
    running: RunningSums = field(default_factory=RunningSums)


def save_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
               settings: dict[str, Any], rng: dict[str, torch.Tensor]) -> None:
    st = require("safetensors.torch", "checkpoints")
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for i, p in enumerate(_params(optimizer)):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().contiguous().cpu()
    tensors.update({f"rng.{k}": v.contiguous() for k, v in rng.items()})
    write_atomic(out / STATE_WEIGHTS, lambda tmp: st.save_file(tensors, str(tmp)))
    write_json_atomic(out / STATE_JSON, {
        "step": state.step,
        "planned_steps": state.planned_steps,
        "epoch": state.history[-1].epoch if state.history else 0,
        "settings": settings,
        "history": [asdict(r) for r in state.history],
        "running": asdict(state.running),
    })


def load_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: dict[str, Any],
               steps_per_epoch: int) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Restore model and momentum in place; the state and the saved RNG states. Refuses other settings."""
    fix = "the training state is corrupt; start a new run"
    saved = read_json_object(out / STATE_JSON, fix)
    theirs = saved.get("settings", {})
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} now" for k, v in settings.items() if theirs.get(k) != v]
    if diff:
        raise UserError(f"--resume: settings differ from the run in {out} ({'; '.join(diff)}); "
                        "use the same settings or a new --out")
    st = require("safetensors.torch", "checkpoints")
    try:
        tensors = st.load_file(str(out / STATE_WEIGHTS))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        history = [EpochRecord(**r) for r in saved["history"]]
        step = int(saved.get("step", int(saved["epoch"]) * steps_per_epoch))  # runs saved before steps counted
        running = RunningSums(**saved.get("running", {}))
        planned = int(saved.get("planned_steps", 0))
    except Exception as exc:  # safetensors, state-dict and record errors alike mean a broken state
        raise UserError(f"{out / STATE_WEIGHTS} or {STATE_JSON} is unreadable ({exc})".splitlines()[0]
                        + f": {fix}") from None
    for i, p in enumerate(_params(optimizer)):
        if f"momentum.{i}" in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device, copy=True)
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return TrainState(step, planned, history, running), rng


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]
