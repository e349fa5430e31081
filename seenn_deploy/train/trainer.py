"""Direct SNN training with the TET loss: SGD momentum 0.9, cosine schedule, resumable per epoch.

The output directory is a checkpoint (weights.safetensors + config.json) from the first finished
epoch on, plus train_state.* to resume. Every input is checked before the directory is created,
and every file is replaced atomically, so an interrupted run leaves the last finished epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from seenn_deploy.data import ArrayDataset, Normalisation, parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.files import read_json_object, write_atomic, write_json_atomic
from seenn_deploy.lazy import require
from seenn_deploy.snn.checkpoint import CheckpointConfig, save_checkpoint
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.zoo import create_model, get_entry
from seenn_deploy.train.batches import iterate_batches, model_input
from seenn_deploy.train.evaluate import timestep_accuracy
from seenn_deploy.train.tet import tet_loss

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"
MOMENTUM = 0.9
# Settings a resumed run must share with the run it continues.
RESUME_KEYS = ("arch", "data", "timesteps", "epochs", "batch_size", "lr", "weight_decay", "lambda_mse", "neuron", "model_kwargs", "augment", "seed")


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

    def check(self) -> None:
        for name in ("timesteps", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.lambda_mse <= 1.0:
            raise UserError(f"--lambda-mse must be in [0, 1], got {self.lambda_mse}")
        if not get_entry(self.arch).spiking:
            raise UserError(f"{self.arch} is not a spiking model; `train` trains SNNs with the TET loss")

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d["neuron"] = self.neuron.to_dict()
        d["out"] = str(self.out)
        return {k: d[k] for k in RESUME_KEYS}


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: list[float]
    lr: float
    seconds: float


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop with 4-pixel zero padding, per sample. x [B, C, H, W]."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator)
    dx = torch.randint(0, 9, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


class Trainer:
    """Holds one training run: data, model, optimiser, output directory."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
        config.check()
        self.config = config
        self.log = log
        self.progress = progress
        source = parse_data_spec(config.data)
        self.train_data: ArrayDataset = source.load("train")
        self.val_data: ArrayDataset = source.load("test")
        if self.train_data.y is None:
            raise UserError(f"data {config.data} has no labels: training needs labelled data")
        if self.train_data.event and config.augment:
            raise UserError("--augment works on static images only, and this data is event data")
        self.normalisation = Normalisation.fit(self.train_data.x)
        shape = self.train_data.sample_shape[-3:]
        torch.manual_seed(config.seed)  # the initial weights, so a seed reproduces a run
        model = create_model(
            config.arch,
            num_classes=len(self.train_data.classes),
            in_channels=shape[0],
            image_size=[shape[1], shape[2]],
            neuron=config.neuron.to_dict(),
            **config.model_kwargs,
        )
        if not isinstance(model, SpikingModel):
            raise UserError(f"{config.arch} is not a spiking model")
        self.model: SpikingModel = model
        self.model_kwargs = {
            "num_classes": len(self.train_data.classes),
            "in_channels": shape[0],
            "image_size": [shape[1], shape[2]],
            "neuron": config.neuron.to_dict(),
            **config.model_kwargs,
        }
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay
        )
        self.steps_per_epoch = math.ceil(len(self.train_data) / config.batch_size)
        self.history: list[EpochRecord] = []
        self.start_epoch = self._prepare_out_dir()

    # -- output directory and resume -------------------------------------------------------
    def _prepare_out_dir(self) -> int:
        out = Path(self.config.out)
        state_json = out / STATE_JSON
        if self.config.resume:
            if not state_json.is_file():
                raise UserError(f"--resume: {out} holds no {STATE_JSON}; start a new run without --resume")
            return self._load_state(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not empty: pass --resume to continue its training, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        return 0

    def _load_state(self, out: Path) -> int:
        state = read_json_object(out / STATE_JSON, "the training state is corrupt; start a new run")
        saved = state.get("settings", {})
        ours = self.config.settings()
        diff = [f"{k}: {saved.get(k)!r} there, {ours[k]!r} now" for k in RESUME_KEYS if saved.get(k) != ours[k]]
        if diff:
            raise UserError(f"--resume: settings differ from the run in {out} ({'; '.join(diff)}); use the same settings or a new --out")
        st = require("safetensors.torch", "checkpoints")
        try:
            tensors = st.load_file(str(out / STATE_WEIGHTS))
        except Exception as exc:
            raise UserError(f"{out / STATE_WEIGHTS} is unreadable ({exc}); start a new run") from None
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            if f"momentum.{i}" in tensors:
                self.optimizer.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].clone()
        self.history = [EpochRecord(**r) for r in state["history"]]
        epoch = int(state["epoch"])
        self.log(f"resuming {out} after epoch {epoch}/{self.config.epochs}")
        return epoch

    def _save(self, epoch: int, metrics: dict[str, Any]) -> None:
        out = Path(self.config.out)
        st = require("safetensors.torch", "checkpoints")
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.model.state_dict().items()}
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{i}"] = buf.detach().contiguous()
        write_atomic(out / STATE_WEIGHTS, lambda tmp: st.save_file(tensors, str(tmp)))
        history = [asdict(r) for r in self.history]
        config = CheckpointConfig(
            arch=self.config.arch,
            model=self.model_kwargs,
            timesteps=self.config.timesteps,
            normalisation=self.normalisation.to_dict(),
            classes=list(self.train_data.classes),
            data=self.config.data,
            input_kind="event" if self.train_data.event else "static",
            metrics=metrics,
            training={**self.config.settings(), "momentum": MOMENTUM, "epochs_done": epoch},
        )
        save_checkpoint(out, self.model, config)
        write_json_atomic(out / STATE_JSON, {"epoch": epoch, "settings": self.config.settings(), "history": history})

    # -- the loop --------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        total = self.config.epochs * self.steps_per_epoch
        return 0.5 * self.config.lr * (1.0 + math.cos(math.pi * step / total))

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        cfg = self.config
        tqdm = require("tqdm", "progress bars").tqdm
        self.model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            total=len(self.train_data), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img",
            disable=not self.progress, leave=False, dynamic_ncols=True,
        )
        batches = iterate_batches(self.train_data, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)
        for i, (xb, yb) in enumerate(batches):
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr_at(epoch * self.steps_per_epoch + i)
            x = model_input(xb, self.normalisation, cfg.timesteps)
            if cfg.augment:
                x = _augment(x, generator)
            y = torch.from_numpy(yb).long()
            out = self.model(x, timesteps=cfg.timesteps)
            loss = tet_loss(out, y, cfg.lambda_mse)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((out.mean(0).argmax(-1) == y).sum())
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
        bar.close()
        return total_loss / seen, correct / seen

    def run(self) -> list[EpochRecord]:
        cfg = self.config
        if self.start_epoch >= cfg.epochs:
            self.log(f"{cfg.out} already finished {cfg.epochs} epochs; nothing to do")
            return self.history
        self.log(
            f"training {cfg.arch} on {self.train_data.name} ({len(self.train_data)} samples, "
            f"{len(self.train_data.classes)} classes, input {'x'.join(map(str, self.train_data.sample_shape))}), "
            f"T={cfg.timesteps}, {sum(p.numel() for p in self.model.parameters()):,} parameters; "
            f"validating on {self.val_data.name} ({len(self.val_data)} samples)"
        )
        for epoch in range(self.start_epoch, cfg.epochs):
            started = time.perf_counter()
            loss, train_acc = self._train_epoch(epoch)
            val = timestep_accuracy(self.model, self.val_data, self.normalisation, cfg.timesteps)
            record = EpochRecord(epoch + 1, loss, train_acc, val.accuracy, self._lr_at(epoch * self.steps_per_epoch), time.perf_counter() - started)
            self.history.append(record)
            metrics = {
                "val_data": self.val_data.name,
                "val_samples": val.samples,
                "val_accuracy_per_timestep": val.accuracy,
                "train_seconds": sum(r.seconds for r in self.history),
            }
            self._save(epoch + 1, metrics)
            self.log(
                f"epoch {epoch + 1}/{cfg.epochs}  loss {loss:.4f}  train acc {100 * train_acc:.2f}%  "
                f"val {val.table()}  ({record.seconds:.0f} s)"
            )
        return self.history


def train(config: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> list[EpochRecord]:
    """Train (or resume) and return the per-epoch history; the checkpoint is in config.out."""
    return Trainer(config, log=log, progress=progress).run()
