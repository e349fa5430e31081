"""SEENN-II training: the policy network learns, per input, the candidate T that maximises the expected reward.

Stage 1 (--epochs): the SNN is frozen. One pass of it over the fit rows, t_K steps each, records
whether it is right at every candidate (bool [N, K]); the policy then trains on those answers
with the exact-expectation gradient (train/policy_objective.py), cheaply, for many epochs.
Stage 2 (--joint-epochs, our reading of the paper's eq. 12): both train. The policy keeps its
objective on the SNN's live answers; the SNN minimises the policy-weighted cross-entropy
sum_k v_k CE(mean of its first t_k outputs, y), so it improves where the policy sends samples.

Rows: the checkpoint's training split less the validation slice its training held out; the policy
is validated on that slice after every epoch and the test split is never read. Each run (one beta)
keeps a resumable state in CHECKPOINT/policies/beta-B (snn/policy_store.py), saved atomically at
every epoch's end; a finished single-beta run installs its policy into the checkpoint.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from seenn_deploy.data import ArrayDataset, Normalisation, check_labels, parse_data_spec, split_validation
from seenn_deploy.data.progress import progress_bar, progress_enabled
from seenn_deploy.errors import UserError
from seenn_deploy.files import file_sha256
from seenn_deploy.snn.checkpoint import WEIGHTS_FILE, CheckpointConfig, load_checkpoint
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.policy_store import (
    RUNS_DIR, cached_logits, install_policy, load_run_policy, read_run_record, run_folder, trained_runs,
    write_run_record,
)
from seenn_deploy.snn.zoo import create_model
from seenn_deploy.train.batches import iterate_batches, model_input
from seenn_deploy.train.evaluate import timestep_accuracy
from seenn_deploy.train.trainer import cosine_lr
from seenn_deploy.train.policy_objective import (
    PolicyScore, Reward, accumulated_means, correct_at, expected_reward, score_choices,
)
from seenn_deploy.train.train_state import STATE_JSON, EpochRecord, TrainState, load_state, save_state

if TYPE_CHECKING:
    from seenn_deploy.calib.policy_report import PolicyReport

ARCH = "policy_resnet8"
MOMENTUM = 0.9
RESUME_KEYS = ("data", "beta", "candidates", "epochs", "joint_epochs", "width", "downsample", "batch_size", "lr",
               "joint_lr", "weight_decay", "shift_reward", "balance_first", "seed")

__all__ = ["PolicyConfig", "PolicyData", "PolicyRun", "PolicyTrainer", "policy_choices", "report_policies",
           "train_policies"]


@dataclass
class PolicyConfig:
    """Settings of `seenn-deploy train-policy`; see its --help. out None: the checkpoint itself."""

    checkpoint: Path
    data: str
    beta: float
    candidates: list[int] | None = None  # None: 1..T of the checkpoint
    epochs: int = 20
    joint_epochs: int = 0
    out: Path | None = None
    width: int = 16
    downsample: int = 1
    batch_size: int = 128
    lr: float = 0.05
    joint_lr: float = 0.001
    weight_decay: float = 5e-4
    shift_reward: bool = False
    balance_first: bool = False
    seed: int = 0
    resume: bool = False

    @property
    def destination(self) -> Path:
        return Path(self.out if self.out is not None else self.checkpoint)

    @property
    def in_place(self) -> bool:
        """Whether the policy goes into the checkpoint trained from (else into a new checkpoint at --out)."""
        return self.destination.resolve() == Path(self.checkpoint).resolve()

    def check(self, timesteps: int) -> None:
        """UserError for settings no run can use; `timesteps` is the checkpoint's T."""
        for name in ("epochs", "batch_size", "width", "downsample"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.joint_epochs < 0:
            raise UserError(f"--joint-epochs must be >= 0, got {self.joint_epochs}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise UserError(f"--beta must be a finite number >= 0 (the cost of a wrong answer), got {self.beta}")
        for name in ("lr", "joint_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        c = self.candidates
        if c is not None and (len(c) < 2 or sorted(set(c)) != list(c) or c[0] < 1 or c[-1] > timesteps):
            raise UserError(f"--candidates {','.join(map(str, c))}: give two or more increasing timesteps in "
                            f"1..{timesteps} (the checkpoint's T), e.g. 1,2,3,4")
        if self.joint_epochs and self.in_place:
            raise UserError("--joint-epochs fine-tunes the SNN too: give --out DIR for the new checkpoint "
                            "(the one you train from stays as it is)")

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in RESUME_KEYS}


@dataclass
class PolicyData:
    """The rows a policy trains and validates on, and the frozen SNN's answers on them.

    fit_correct / val_correct: bool [N, K], the SNN right after t_k steps (mean of its outputs).
    val_logits: the SNN's per-step logits on the validation rows [t_K, N, C] (for the report's
    SEENN-I front), or None where they were not kept.
    rate: the share of fit rows right at the first candidate (the balance_first weights).
    """

    fit: ArrayDataset
    val: ArrayDataset | None
    fit_correct: np.ndarray
    val_correct: np.ndarray | None
    val_logits: np.ndarray | None = None

    @property
    def rate(self) -> float:
        return float(self.fit_correct[:, 0].mean())


@dataclass
class PolicyRun:
    """The outcome of one beta: its folder, per-epoch validation, and whether it is now the checkpoint's policy."""

    beta: float
    folder: Path
    candidates: list[int]
    validation: list[dict[str, Any]] = field(default_factory=list)  # per epoch: {"epoch", "stage", **PolicyScore}
    snn_validation: list[float] = field(default_factory=list)  # the SNN alone at each candidate, same rows
    installed: bool = False
    policy: nn.Module | None = field(default=None, repr=False)  # the trained network (for the report)

    @property
    def final(self) -> dict[str, Any] | None:
        return self.validation[-1] if self.validation else None

    def to_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "folder": str(self.folder), "installed": self.installed,
                "candidates": self.candidates, "validation": self.final, "snn_validation": self.snn_validation,
                "history": self.validation}


@torch.no_grad()
def snn_logits(snn: SpikingModel, data: ArrayDataset, normalisation: Normalisation, timesteps: int,
               batch_size: int = 256, desc: str = "scoring the SNN") -> np.ndarray:
    """float32 [timesteps, N, C]: the SNN's (eval mode, restored after) output at every step on each row of `data`."""
    was_training = snn.training
    snn.eval()
    parts = []
    bar = progress_bar(len(data), desc)
    try:
        for xb, _ in iterate_batches(data, batch_size):
            parts.append(snn(model_input(xb, normalisation, timesteps), timesteps=timesteps).numpy())
            bar.update(len(xb))
    finally:
        bar.close()
        snn.train(was_training)
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def policy_choices(policy: nn.Module, data: ArrayDataset, normalisation: Normalisation,
                   batch_size: int = 256) -> np.ndarray:
    """int [N]: the candidate index argmax v picks for each row (eval mode, restored after): the offline decisions."""
    was_training = policy.training
    policy.eval()
    try:
        picks = [policy(model_input(xb, normalisation, 1)).argmax(1).numpy()
                 for xb, _ in iterate_batches(data, batch_size)]
    finally:
        policy.train(was_training)
    return np.concatenate(picks)


def training_rows(config: CheckpointConfig, checkpoint: Path, spec: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(fit, validation) rows of data `spec`: its train split less the slice the checkpoint's training held out."""
    train = parse_data_spec(spec).load("train")
    check_labels(train, len(config.classes), config.classes, f"checkpoint {checkpoint}")
    vs = config.validation_slice(checkpoint)
    if vs is None:
        return train, None
    if spec.partition(":")[0] != vs.data.partition(":")[0]:
        raise UserError(f"checkpoint {checkpoint} was trained on {vs.data}, and --data {spec} is another data set: "
                        "give the data the SNN was trained on")
    return split_validation(train, replace(vs, data=spec))


class PolicyTrainer:
    """One policy run (one beta): SNN, policy, optimiser, data, and the run folder."""

    def __init__(self, config: PolicyConfig, log: Callable[[str], None] = print, progress: bool = True,
                 data: PolicyData | None = None, install: bool = True) -> None:
        self.config, self.log, self.progress, self.install = config, log, progress, install
        checkpoint = Path(config.checkpoint)
        if not checkpoint.is_dir():
            raise UserError(f"{checkpoint} is not a checkpoint directory: train-policy writes the policy into one "
                            "(made by `seenn-deploy train` or `convert`)")
        snn, self.ckpt = load_checkpoint(checkpoint)
        if not isinstance(snn, SpikingModel) or self.ckpt.input_kind != "static":
            raise UserError(f"{checkpoint} holds {self.ckpt.arch} on {self.ckpt.input_kind} inputs; the policy "
                            "looks at one static image, so train-policy takes spiking models of static images")
        self.snn: SpikingModel = snn
        config.check(self.ckpt.timesteps)
        self.candidates = list(config.candidates or range(1, self.ckpt.timesteps + 1))
        self.reward = Reward(config.beta, config.shift_reward, config.balance_first)
        self.normalisation = Normalisation.from_dict(self.ckpt.normalisation)
        self._data = data
        c, h, w = snn.input_spec.shape
        self.policy_kwargs = {"num_classes": len(self.candidates), "in_channels": c, "image_size": [h, w],
                              "width": config.width, "downsample": config.downsample}
        torch.manual_seed(config.seed)  # the initial weights
        self.policy = create_model(ARCH, **self.policy_kwargs)
        self.module = nn.ModuleDict({"policy": self.policy, "snn": self.snn})  # what the run state saves
        self.snn.requires_grad_(False)
        # one optimiser for both stages: the SNN's group has no gradients (so no step) until stage 2
        self.optimizer = torch.optim.SGD([{"params": self.policy.parameters()}, {"params": self.snn.parameters()}],
                                         lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay)
        self.folder = run_folder(config.destination, config.beta)
        self.snn_sha256 = file_sha256(checkpoint / WEIGHTS_FILE)
        self.state = TrainState()
        self.validation: list[dict[str, Any]] = []
        self.snn_validation: list[float] = []
        self._open_folder()

    # -- data ------------------------------------------------------------------------------
    @property
    def data(self) -> PolicyData:
        """The rows and the frozen SNN's answers, computed on first use (a finished run needs neither)."""
        if self._data is None:
            self._data = prepare_data(self.snn, self.ckpt, self.config, self.candidates)
        return self._data

    @property
    def prepared(self) -> PolicyData | None:
        """The data if this run computed (or was given) it: what the next run of a sweep can reuse."""
        return self._data

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.fit) / self.config.batch_size)

    # -- run folder and resume -------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {**self.config.settings(), "candidates": self.candidates, "snn_sha256": self.snn_sha256}

    def _open_folder(self) -> None:
        cfg, dest = self.config, self.config.destination
        if (self.folder / STATE_JSON).is_file():
            if not cfg.resume:
                raise UserError(f"{self.folder} holds a policy run for beta {cfg.beta:g}: pass --resume to continue "
                                "or install it, or delete that folder to train anew")
            # steps per epoch (1 here) only matter for states saved before steps were counted; ours count them
            self.state, _ = load_state(self.folder, self.module, self.optimizer, self._settings(), 1)
            record = read_run_record(self.folder)
            self.validation = list(record.get("validation", []))
            self.snn_validation = list(record.get("snn_validation", []))
            return
        if cfg.resume:
            raise UserError(f"--resume: {self.folder} holds no policy run for beta {cfg.beta:g}; leave out --resume")
        if not cfg.in_place and dest.exists() and any(dest.iterdir()) and not (dest / RUNS_DIR).is_dir():
            raise UserError(f"--out {dest} exists and is not empty: choose another --out")

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # no RNG state to keep: each epoch's shuffle is seeded by its number, and nothing else draws
        save_state(self.folder, self.module, self.optimizer, self.state, self._settings(), {})
        write_run_record(self.folder, {"policy": self.policy_spec(), "validation": self.validation,
                                       "snn_validation": self.snn_validation})

    def policy_spec(self) -> dict[str, Any]:
        """config.policy of the checkpoint: what load_policy rebuilds, and what the policy was trained for."""
        return {"arch": ARCH, "model": self.policy_kwargs, "candidates": self.candidates, "beta": self.config.beta,
                "reward": self.reward.to_dict(), "training": self._settings(),
                "metrics": {"validation": self.validation[-1] if self.validation else None}}

    # -- the loop --------------------------------------------------------------------------
    @property
    def planned_epochs(self) -> int:
        return self.config.epochs + self.config.joint_epochs

    def _lr(self, step: int) -> float:
        spe, cfg = self.steps_per_epoch, self.config
        first = cfg.epochs * spe
        if step < first:
            return cosine_lr(cfg.lr, step, first)
        return cosine_lr(cfg.joint_lr, step - first, cfg.joint_epochs * spe)

    def _epoch(self, epoch: int, joint: bool) -> tuple[float, PolicyScore]:
        """One pass over the fit rows in shuffled order; (mean loss, the score of the choices made on the way)."""
        cfg, data = self.config, self.data
        self.policy.train()
        self.snn.train(joint)
        self.snn.requires_grad_(joint)
        # batches of row indices (as labels), so each batch finds its rows' SNN answers
        rows = ArrayDataset(data.fit.x, np.arange(len(data.fit)), data.fit.classes, data.fit.name)
        bar = progress_bar(len(rows), f"policy epoch {epoch + 1}/{self.planned_epochs}" + (" (joint)" if joint else ""))
        total, choices, correct = 0.0, [], []
        for xb, idx in iterate_batches(rows, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(self.state.step)
            x = model_input(xb, self.normalisation, 1)
            y = torch.from_numpy(data.fit.y[idx])
            scores = self.policy(x)
            if joint:
                means = accumulated_means(self.snn(x, timesteps=self.candidates[-1]), self.candidates)  # [K, B, C]
                right = (means.detach().argmax(-1) == y).T
                ce = torch.stack([nn.functional.cross_entropy(m, y, reduction="none") for m in means], dim=1)
                loss = (torch.softmax(scores, 1).detach() * ce).sum(1).mean()
            else:
                right, loss = torch.from_numpy(data.fit_correct[idx]), torch.zeros(())
            loss = loss - expected_reward(scores, self.reward.table(right, self.candidates),
                                          self.reward.weights(right, data.rate))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.step += 1
            total += float(loss.detach()) * len(idx)
            choices.append(scores.detach().argmax(1).numpy())
            correct.append(right.numpy())
            bar.update(len(idx))
        bar.close()
        self.snn.requires_grad_(False)
        score = score_choices(np.concatenate(choices), np.concatenate(correct), self.candidates, self.reward)
        return total / len(rows), score

    def _validate(self, joint: bool) -> PolicyScore | None:
        data = self.data
        if data.val is None:
            return None
        if joint:  # the SNN changed: its answers on the slice too
            data.val_logits = snn_logits(self.snn, data.val, self.normalisation, self.ckpt.timesteps,
                                         desc="scoring the SNN (validation)")
            data.val_correct = correct_at(torch.from_numpy(data.val_logits), torch.from_numpy(data.val.y),
                                          self.candidates).numpy()
        self.snn_validation = data.val_correct.mean(0).tolist()
        choice = policy_choices(self.policy, data.val, self.normalisation)
        return score_choices(choice, data.val_correct, self.candidates, self.reward)

    def run(self) -> PolicyRun:
        """Train to the end of the plan (or find it done), save each epoch, install when finished and asked to."""
        cfg = self.config
        done = len(self.state.history)  # a state is saved at epoch ends only
        with progress_enabled(self.progress):
            if done >= self.planned_epochs:
                self.log(f"{self.folder} already finished its {self.planned_epochs} epochs")
            else:
                self.log(self._describe(done))
            for epoch in range(done, self.planned_epochs):
                joint = epoch >= cfg.epochs
                started = time.perf_counter()
                loss, train_score = self._epoch(epoch, joint)
                val = self._validate(joint)
                seconds = time.perf_counter() - started
                self.state.history.append(EpochRecord(epoch + 1, loss, train_score.accuracy, [],
                                                      self._lr(epoch * self.steps_per_epoch), seconds, self.state.step))
                if val is not None:
                    self.validation.append({"epoch": epoch + 1, "stage": 2 if joint else 1, **val.to_dict()})
                self._save()
                shown = f"val {val.line()}" if val is not None else "no validation slice"
                self.log(f"beta {cfg.beta:g} epoch {epoch + 1}/{self.planned_epochs}{' joint' if joint else ''}  "
                         f"loss {loss:.4f}  train {train_score.line()}  {shown}  ({seconds:.1f} s)")
        run = PolicyRun(cfg.beta, self.folder, self.candidates, self.validation, self.snn_validation,
                        policy=self.policy)
        if self.install:
            self._install()
            run.installed = True
        return run

    def _describe(self, done: int) -> str:
        cfg, data = self.config, self.data
        held = (f"validating on {data.val.name} ({len(data.val)} samples)" if data.val is not None
                else "no validation slice in the checkpoint: nothing held out to check on")
        fixed = "  ".join(f"T={t}: {100 * a:.2f}%" for t, a in zip(self.candidates, data.fit_correct.mean(0)))
        start = f", resuming at epoch {done + 1}" if done else ""
        return (f"training {ARCH} (width {cfg.width}, downsample {cfg.downsample}, "
                f"{sum(p.numel() for p in self.policy.parameters()):,} parameters) for beta {cfg.beta:g} over "
                f"candidates {self.candidates} on {data.fit.name} ({len(data.fit)} samples), {cfg.epochs} epochs"
                f"{f' + {cfg.joint_epochs} joint' if cfg.joint_epochs else ''}{start}; {held}; "
                f"the SNN on the fit rows: {fixed}")

    def _install(self) -> None:
        """The finished run becomes the checkpoint's policy (and, after stage 2, the SNN is the fine-tuned one)."""
        ckpt = replace(self.ckpt, policy=self.policy_spec())
        joint = self.config.joint_epochs > 0
        if joint and self.data.val is not None:
            acc = timestep_accuracy(self.snn, self.data.val, self.normalisation, self.ckpt.timesteps,
                                    desc="validating the fine-tuned SNN")
            validation = {"split": "validation", "data": self.data.val.name, "samples": acc.samples,
                          "accuracy_per_timestep": acc.accuracy}
            ckpt.metrics = {**ckpt.metrics, "validation": validation}
        if joint:
            ckpt.training = {**ckpt.training, "policy_joint_fine_tuning": self._settings()}
        install_policy(self.config.destination, ckpt, self.policy, None if self.config.in_place else self.snn)
        self.log(f"policy for beta {self.config.beta:g} installed in {self.config.destination}")


def prepare_data(snn: SpikingModel, ckpt: CheckpointConfig, config: PolicyConfig, candidates: list[int]) -> PolicyData:
    """The fit and validation rows and the frozen SNN's answers on both (one pass of the checkpoint's T steps
    each, cached in the destination's policies/ folder); the validation logits are kept for the report."""
    fit, val = training_rows(ckpt, Path(config.checkpoint), config.data)
    fit.check_sample_shape(snn.input_spec.shape)
    sha = file_sha256(Path(config.checkpoint) / WEIGHTS_FILE)
    fit_logits = split_logits(snn, ckpt, config.destination, sha, "fit", fit)
    fit_correct = correct_at(torch.from_numpy(fit_logits), torch.from_numpy(fit.y), candidates).numpy()
    if val is None:
        return PolicyData(fit, None, fit_correct, None)
    val_logits = split_logits(snn, ckpt, config.destination, sha, "validation", val)
    val_correct = correct_at(torch.from_numpy(val_logits), torch.from_numpy(val.y), candidates).numpy()
    return PolicyData(fit, val, fit_correct, val_correct, val_logits)


def split_logits(snn: SpikingModel, ckpt: CheckpointConfig, folder: Path, snn_sha256: str, split: str,
                 rows: ArrayDataset) -> np.ndarray:
    """The SNN's logits on `rows` for all its T steps, from the cache in `folder` or computed (and cached)."""
    key = {"split": split, "snn_sha256": snn_sha256, "data": rows.name, "samples": len(rows),
           "rows_sha256": rows_sha256(rows), "timesteps": ckpt.timesteps}
    norm = Normalisation.from_dict(ckpt.normalisation)
    return cached_logits(folder, key, lambda: snn_logits(snn, rows, norm, ckpt.timesteps,
                                                         desc=f"scoring the SNN ({split} rows)"))


def rows_sha256(rows: ArrayDataset) -> str:
    """sha256 of the rows' samples and labels (shapes and dtypes included): an npz:FILE or a data folder whose
    contents changed under the same name and row count is other rows, and must not get the old rows' logits.
    About 1 GB/s: half a second on CIFAR-10's fit rows, against the minutes of the SNN pass it saves."""
    digest = hashlib.sha256()
    for array in (rows.x, rows.y):
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def train_policies(config: PolicyConfig, betas: list[float], log: Callable[[str], None] = print,
                   progress: bool = True) -> list[PolicyRun]:
    """One run per beta on one pass of the frozen SNN; a single beta is installed, a sweep installs none."""
    from seenn_deploy.train.distributed import World

    if World.from_env().distributed:  # every rank would train the same policies and write the same files
        raise UserError("train-policy runs in one process: start it without torchrun (its epochs are cheap: the "
                        "frozen SNN runs once, and its outputs are cached)")
    if not betas or len(set(betas)) != len(betas):
        raise UserError(f"--beta {','.join(f'{b:g}' for b in betas)}: give one or more distinct values")
    if len(betas) > 1 and config.joint_epochs:
        raise UserError("--joint-epochs fine-tunes the SNN for one beta: sweep beta without it, then fine-tune "
                        "the beta you pick")
    runs, data = [], None
    with progress_enabled(progress):
        for beta in betas:
            trainer = PolicyTrainer(replace(config, beta=beta), log, progress, data, install=len(betas) == 1)
            runs.append(trainer.run())
            data = trainer.prepared
    return runs


def report_policies(config: PolicyConfig, runs: list[PolicyRun], test: bool = True, log: Callable[[str], None] = print,
                    progress: bool = True) -> PolicyReport:
    """Every run's policy on the validation slice and (test=True) once on the test split, beside the SEENN-I
    front of the same SNN, with the policy's cost; report.json and front.png go to CHECKPOINT/policies/.

    The finished runs of other betas in the same folder (same SNN weights and candidates, no joint
    fine-tuning) join the report, so sweeps made in several commands read as one."""
    from seenn_deploy.calib.policy_report import write_policy_report
    from seenn_deploy.calib.policy_front import policy_figures
    from seenn_deploy.profile.energy import estimate_energy
    from seenn_deploy.profile.policy_cost import policy_cost, snn_step_macs

    source = config.destination if (config.destination / WEIGHTS_FILE).is_file() else Path(config.checkpoint)
    snn, ckpt = load_checkpoint(source)  # after joint fine-tuning, the fine-tuned SNN
    norm = Normalisation.from_dict(ckpt.normalisation)
    candidates = runs[0].candidates
    policies = {run.beta: run.policy for run in runs}
    snn_sha256 = file_sha256(source / WEIGHTS_FILE)
    for folder in trained_runs(config.destination):  # the betas trained before, on this SNN and candidates
        policy, spec = load_run_policy(folder)
        same = spec.get("candidates") == candidates and spec["training"].get("snn_sha256") == snn_sha256
        if same and not spec["training"].get("joint_epochs") and float(spec["beta"]) not in policies:
            policies[float(spec["beta"])] = policy
    splits: list[tuple[str, ArrayDataset]] = []
    _, val = training_rows(ckpt, Path(config.checkpoint), config.data)
    if val is not None:
        splits.append(("validation", val))
    if test:
        rows = parse_data_spec(config.data).load("test")
        check_labels(rows, len(ckpt.classes), ckpt.classes, f"checkpoint {source}")
        splits.append(("test", rows))
    step_macs = snn_step_macs(snn)
    costs = {beta: policy_cost(policy, snn.input_spec.shape, step_macs) for beta, policy in policies.items()}
    cost = costs[runs[0].beta]
    log(f"scoring {len(policies)} policies (beta {', '.join(f'{b:g}' for b in sorted(policies))}) on "
        f"{' and '.join(name for name, _ in splits)}")
    energy = None
    figures = []
    with progress_enabled(progress):
        for name, rows in splits:
            logits = split_logits(snn, ckpt, config.destination, snn_sha256, name, rows)
            if energy is None:  # input rates measured once, on the first split's first rows
                energy = estimate_energy(snn, torch.from_numpy(norm.apply(rows.x[:512])), ckpt.timesteps, 1.0)
            picks = {beta: np.asarray(candidates)[policy_choices(policy, rows, norm)] for beta, policy in policies.items()}
            shares = {beta: c.share_of_step for beta, c in costs.items()}
            split = policy_figures(name, rows.name, logits, rows.y, picks, candidates, shares)
            for point in split.policies:
                own = costs[point["beta"]]
                snn_pj = 1e6 * energy.at(point["avg_timesteps"]).total_uj
                point["policy_macs"] = own.macs
                point["energy_uj"] = (snn_pj + own.energy_pj) * 1e-6
                point["policy_share_of_energy"] = own.energy_pj / (snn_pj + own.energy_pj)
            figures.append(split)
    title = f"SEENN-II on {source.name}: policies over candidates {candidates} beside SEENN-I"
    report = write_policy_report(config.destination / RUNS_DIR, candidates, figures,
                                 cost.to_dict() | {"snn_energy_uj_per_step": energy.at(1.0).total_uj if energy else None},
                                 title)
    return report
