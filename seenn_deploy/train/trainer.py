"""Direct SNN training with the TET loss: SGD momentum 0.9, cosine schedule over the planned steps, resumable.

The run fits on the train split less a seeded validation slice (`--val-fraction`, recorded in the
checkpoint so every later command finds the same rows) and validates on that slice after each
epoch; it never reads the test split. The output directory is a checkpoint (weights.safetensors +
config.json) from the first finished epoch (or --max-steps stop) on, plus train_state.* to resume.
Every input is checked before the directory is created, and every file is replaced atomically,
so an interrupted run leaves the last saved point.

Under torchrun the same run spreads over the processes (distributed.py): `batch_size` is the global
batch, each rank trains on its share of every batch through DDP with batch norm synchronised, and
rank 0 alone logs, shows progress, validates and writes. The plan and the results are a single
process's, up to float rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from seenn_deploy.data import ArrayDataset
from seenn_deploy.data.progress import progress_bar, progress_enabled
from seenn_deploy.errors import UserError
from seenn_deploy.snn.checkpoint import CheckpointConfig, save_checkpoint
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.zoo import create_model, get_entry
from seenn_deploy.train.batches import iterate_batches, model_input
from seenn_deploy.train.distributed import (
    World, all_reduce_sums, barrier, check_global_batch, process_group, shard, share_weight, synchronise_batchnorm,
    training_device, wrap_model,
)
from seenn_deploy.train.evaluate import TimestepAccuracy, timestep_accuracy
from seenn_deploy.train.tet import tet_loss
from seenn_deploy.train.train_data import load_training_data
from seenn_deploy.train.train_state import STATE_JSON, EpochRecord, RunningSums, TrainState, load_state, save_state

MOMENTUM = 0.9
# Settings a resumed run must share with the run it continues (--max-steps may change: a new plan).
RESUME_KEYS = ("arch", "data", "timesteps", "epochs", "batch_size", "lr", "weight_decay", "lambda_mse", "neuron",
               "model_kwargs", "augment", "seed", "val_fraction", "val_seed", "train_samples")

__all__ = ["EpochRecord", "TrainConfig", "Trainer", "train"]


@dataclass
class TrainConfig:
    arch: str
    data: str
    timesteps: int
    epochs: int
    out: Path
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    lambda_mse: float = 0.0
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    augment: bool = False
    seed: int = 0
    resume: bool = False
    val_fraction: float = 0.1  # of the train split, held out to validate on; 0: none
    val_seed: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps (the cosine schedule ends there)
    train_samples: int | None = None  # fit on a seeded subset of this many rows
    device: str = "cpu"  # cpu, cuda[:N]; under torchrun cuda means each process's cuda:LOCAL_RANK

    def check(self) -> None:
        for name in ("timesteps", "epochs", "batch_size", "max_steps", "train_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lambda_mse <= 1.0:
            raise UserError(f"--lambda-mse must be in [0, 1], got {self.lambda_mse}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}: e.g. 0.1 holds out 10 %")
        if not get_entry(self.arch).spiking:
            raise UserError(f"{self.arch} is not a spiking model; `train` trains SNNs with the TET loss")

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d["neuron"] = self.neuron.to_dict()
        return {k: d[k] for k in RESUME_KEYS}


def _augment_draws(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A global batch's random flips and crop offsets, drawn in one order whatever the process count: [rows] each."""
    flip = torch.rand(rows, generator=generator) < 0.5
    dy = torch.randint(0, 9, (rows,), generator=generator)
    dx = torch.randint(0, 9, (rows,), generator=generator)
    return flip, dy, dx


def _augment(x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Horizontal flip and crop with 4-pixel zero padding, per sample, as drawn. x [B, C, H, W], draws [B]."""
    b, _, h, w = x.shape
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def cosine_lr(peak: float, step: int, planned: int) -> float:
    """The cosine schedule: `peak` at step 0, 0 at step `planned`."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / planned))


ONE_PROCESS = World()


def _silent(line: str) -> None:
    pass


class Trainer:
    """Holds one training run: data, model, optimiser, output directory; one rank's part of it under torchrun.

    A `world` of several processes needs their process group joined (distributed.process_group), as
    `train` does.
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True,
                 world: World = ONE_PROCESS) -> None:
        config.check()
        self.world = world
        self.device = training_device(config.device, world)
        self.config = config
        self.log = log if world.is_main else _silent
        self.progress = progress and world.is_main
        with progress_enabled(self.progress):
            self.data = load_training_data(config.data, config.val_fraction, config.val_seed, config.train_samples,
                                           config.seed)
        self.train_data: ArrayDataset = self.data.fit
        self.val_data: ArrayDataset | None = self.data.val
        self.normalisation = self.data.normalisation
        if self.train_data.event and config.augment:
            raise UserError("--augment works on static images only, and this data is event data")
        shape = self.train_data.sample_shape[-3:]
        self.model_kwargs = {
            "num_classes": len(self.train_data.classes),
            "in_channels": shape[0],
            "image_size": [shape[1], shape[2]],
            "neuron": config.neuron.to_dict(),
            **config.model_kwargs,
        }
        torch.manual_seed(config.seed)  # the initial weights, so a seed reproduces a run
        model = create_model(config.arch, **self.model_kwargs)
        if not isinstance(model, SpikingModel):
            raise UserError(f"{config.arch} is not a spiking model")
        if world.distributed:
            model = synchronise_batchnorm(model, self.device)
        self.model: SpikingModel = model.to(self.device)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay
        )
        check_global_batch(config.batch_size, world, len(self.train_data))
        self.steps_per_epoch = math.ceil(len(self.train_data) / config.batch_size)
        self.planned_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.planned_steps = min(self.planned_steps, config.max_steps)
        self.state = TrainState(planned_steps=self.planned_steps)
        self.rng: dict[str, torch.Tensor] = {}
        self.generator = torch.Generator()
        self._prepare_out_dir()
        self.trained = wrap_model(self.model, world, self.device)  # DDP under torchrun: what the steps run

    @property
    def history(self) -> list[EpochRecord]:
        return self.state.history

    # -- output directory and resume -------------------------------------------------------
    def _prepare_out_dir(self) -> None:
        out = Path(self.config.out)
        if self.config.resume:
            if not (out / STATE_JSON).is_file():
                raise UserError(f"--resume: {out} holds no {STATE_JSON}; start a new run without --resume")
            self.state, self.rng = load_state(out, self.model, self.optimizer, self.config.settings(),
                                              self.steps_per_epoch)
            self.log(f"resuming {out} at step {self.state.step} of {self.planned_steps} "
                     f"(epoch {self.state.step // self.steps_per_epoch + 1}/{self.config.epochs})")
            if self.state.planned_steps and self.state.planned_steps != self.planned_steps:
                self.log(f"the plan changed from {self.state.planned_steps} to {self.planned_steps} steps: the cosine "
                         f"schedule continues on the new plan (learning rate {self._lr_at(self.state.step):.4g} now)")
            self.state.planned_steps = self.planned_steps
            return
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not empty: pass --resume to continue its training, or choose another --out")
        if self.world.is_main:
            out.mkdir(parents=True, exist_ok=True)

    def _save(self, metrics: dict[str, Any]) -> None:
        out = Path(self.config.out)
        save_state(out, self.model, self.optimizer, self.state, self.config.settings(),
                   {"torch": torch.get_rng_state(), "augment": self.generator.get_state()})
        config = CheckpointConfig(
            arch=self.config.arch,
            model=self.model_kwargs,
            timesteps=self.config.timesteps,
            normalisation=self.normalisation.to_dict(),
            classes=list(self.train_data.classes),
            data=self.config.data,
            input_kind="event" if self.train_data.event else "static",
            metrics=metrics,
            training={**self.config.settings(), "momentum": MOMENTUM,
                      "epochs_done": self.state.step // self.steps_per_epoch, "steps_done": self.state.step,
                      "planned_steps": self.planned_steps, "max_steps": self.config.max_steps,
                      "train_rows": self.data.train_rows, "fit_rows": len(self.train_data),
                      "processes": self.world.size, "device": self.device.type},
            validation=None if self.data.validation is None else self.data.validation.to_dict(),
        )
        save_checkpoint(out, self.model, config)

    # -- the loop --------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        return cosine_lr(self.config.lr, step, self.planned_steps)

    def _seed_epoch(self, epoch: int, offset: int) -> None:
        """Fresh RNGs at an epoch's start; the saved ones when resuming inside it."""
        seed = self.config.seed * 1000 + epoch
        if offset == 0 or not self.rng:
            self.generator.manual_seed(seed)
            torch.manual_seed(seed)
        else:
            self.generator.set_state(self.rng["augment"])
            torch.set_rng_state(self.rng["torch"])

    def _train_until(self, end: int) -> None:
        """Optimizer steps from state.step up to `end` (at most the end of the current epoch)."""
        cfg, run = self.config, self.state.running
        epoch, offset = divmod(self.state.step, self.steps_per_epoch)
        self._seed_epoch(epoch, offset)
        self.model.train()
        bar = progress_bar(len(self.train_data), f"epoch {epoch + 1}/{cfg.epochs}")
        bar.update(min(offset * cfg.batch_size, len(self.train_data)))
        batches = iterate_batches(self.train_data, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch,
                                  skip=offset)
        for xb, yb in batches:
            if self.state.step >= end:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr_at(self.state.step)
            loss_sum, correct, seen = self._step(xb, yb)
            self.state.step += 1
            run.loss += loss_sum
            run.correct += int(correct)
            run.seen += int(seen)
            bar.update(len(yb))
            bar.set_postfix(loss=f"{run.loss / run.seen:.3f}", acc=f"{100 * run.correct / run.seen:.1f}%")
        bar.close()

    def _step(self, xb: np.ndarray, yb: np.ndarray) -> list[float]:
        """One optimizer step on a global batch, this rank's share of it; (loss sum, correct, rows) of the batch."""
        cfg, part = self.config, shard(len(yb), self.world)
        x = model_input(xb[part], self.normalisation, cfg.timesteps)
        if cfg.augment:  # drawn for the whole batch, so every process count sees the same draws
            x = _augment(x, *(draw[part] for draw in _augment_draws(len(yb), self.generator)))
        x, y = x.to(self.device), torch.from_numpy(yb[part]).long().to(self.device)
        out = self.trained(x, timesteps=cfg.timesteps)
        loss = tet_loss(out, y, cfg.lambda_mse)
        objective = loss * share_weight(len(y), len(yb), self.world) if self.world.distributed else loss
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        sums = [float(loss.detach()) * len(y), float((out.mean(0).argmax(-1) == y).sum()), float(len(y))]
        return all_reduce_sums(sums, self.world)

    def _validate(self) -> TimestepAccuracy | None:
        """On rank 0 (the others go on to the next step and wait for it there)."""
        if self.val_data is None or not self.world.is_main:
            return None
        return timestep_accuracy(self.model, self.val_data, self.normalisation, self.config.timesteps,
                                 desc="validating")

    def _metrics(self, val: TimestepAccuracy | None, record: EpochRecord) -> dict[str, Any]:
        """What config.json records; each figure says which rows it comes from."""
        validation = None if val is None else {
            "split": "validation", "data": self.val_data.name if self.val_data else "", "samples": val.samples,
            "accuracy_per_timestep": val.accuracy,
        }
        return {"validation": validation,
                "train": {"split": "train (fit rows, running mean while training)", "samples": len(self.train_data),
                          "accuracy": record.train_accuracy, "loss": record.loss},
                "train_seconds": sum(r.seconds for r in self.history), "steps": self.state.step}

    def _describe(self) -> str:
        cfg, fit = self.config, self.train_data
        held = (f"validating on {self.val_data.name} ({len(self.val_data)} samples)" if self.val_data is not None
                else "no validation slice (--val-fraction 0): nothing held out to choose on")
        kind = f"T={cfg.timesteps}" if cfg.neuron.spiking else f"an ANN with {cfg.neuron.kind} activations"
        return (f"training {cfg.arch} on {fit.name} ({len(fit)} samples, {len(fit.classes)} classes, input "
                f"{'x'.join(map(str, fit.sample_shape))}), {kind}, "
                f"{sum(p.numel() for p in self.model.parameters()):,} parameters, {self.planned_steps} steps of "
                f"{cfg.batch_size}{self._spread()}; {held}")

    def _spread(self) -> str:
        if not self.world.distributed:
            return "" if self.device.type == "cpu" else f" on {self.device}"
        return f" ({self.config.batch_size // self.world.size} per process, {self.world.describe(self.device)})"

    def run(self, until: int | None = None) -> list[EpochRecord]:
        """Train to the end of the plan, or only to step `until`, saving a resumable checkpoint there."""
        cfg = self.config
        end = self.planned_steps if until is None else min(until, self.planned_steps)
        if self.state.step >= end:
            self.log(f"{cfg.out} already finished its {self.state.step} of {self.planned_steps} steps; nothing to do")
            return self.history
        self.log(self._describe())
        with progress_enabled(self.progress):
            while self.state.step < end:
                epoch = self.state.step // self.steps_per_epoch
                started = time.perf_counter()
                self._train_until(min((epoch + 1) * self.steps_per_epoch, end))
                val = self._validate()
                run = self.state.running
                run.seconds += time.perf_counter() - started
                record = EpochRecord(epoch + 1, run.loss / run.seen, run.correct / run.seen,
                                     [] if val is None else val.accuracy, self._lr_at(epoch * self.steps_per_epoch),
                                     run.seconds, self.state.step)
                if self.history and self.history[-1].epoch == record.epoch:
                    self.history.pop()  # the part before a --max-steps stop, now continued
                self.history.append(record)
                if self.state.step % self.steps_per_epoch == 0:
                    self.state.running = RunningSums()
                if self.world.is_main:
                    self._save(self._metrics(val, record))
                shown = f"val {val.table()}" if val is not None else "no validation"
                stop = "" if self.state.step % self.steps_per_epoch == 0 else f" (stopped at step {self.state.step})"
                self.log(f"epoch {epoch + 1}/{cfg.epochs}{stop}  loss {record.loss:.4f}  "
                         f"train acc {100 * record.train_accuracy:.2f}%  {shown}  ({record.seconds:.0f} s)")
        barrier(self.world)  # every process ends once rank 0 has written the checkpoint
        return self.history


def train(config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> list[EpochRecord]:
    """Train (or resume) and return the per-epoch history; the checkpoint is in config.out.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) this process joins the group and trains its share;
    only rank 0 logs and writes, and its history is the one with the validation figures.
    """
    world = World.from_env()
    config.check()
    check_global_batch(config.batch_size, world)  # before the processes wait for each other
    device = training_device(config.device, world)
    with process_group(world, device):
        return Trainer(config, log=log, progress=progress, world=world).run()
