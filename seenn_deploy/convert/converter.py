"""ANN checkpoint -> SNN checkpoint: BN folded, each activation an IF neuron with soft reset at its threshold.

The ANN is a zoo architecture trained by `train-ann` with QCFS activations (threshold: the learnt
lambda) or ReLU (threshold: a percentile of its outputs on training rows, the older practice).
Each neuron starts at half its threshold and emits the threshold per spike, so the mean output of
T steps approaches the activation (exactly, for QCFS with L levels, on a constant input at T = L).
The result is an ordinary checkpoint: same arch, with `fold_bn` and per-neuron `neurons` in its
model kwargs (snn/zoo/converted.py), the ANN's normalisation, classes and validation slice.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seenn_deploy.convert.thresholds import (
    activations,
    check_percentile,
    percentile_thresholds,
    qcfs_thresholds,
)
from seenn_deploy.data import Normalisation, parse_data_spec, split_validation
from seenn_deploy.data.validation import sample_rows
from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.files import file_sha256
from seenn_deploy.snn.checkpoint import (
    WEIGHTS_FILE,
    CheckpointConfig,
    load_checkpoint,
    save_checkpoint,
)
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.qcfs import QCFS
from seenn_deploy.snn.zoo import create_model
from seenn_deploy.snn.zoo.converted import fold_batch_norm
from seenn_deploy.train.batches import model_input

# Every converted neuron: IF, soft reset, fires at >= threshold (floor(x L / lambda + 1/2) counts the crossing).
CONVERTED_NEURON = NeuronConfig(kind="if", v_threshold=1.0, v_init=0.5, firing=">=", scale_spikes=True)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@dataclass
class ConvertOptions:
    """Settings of `seenn-deploy convert`; see its --help."""

    timesteps: int = 32
    relu: bool = False  # the ANN uses ReLU: thresholds from activation percentiles
    percentile: float = 99.9
    samples: int = 1024  # training rows the percentiles are taken on
    batch_size: int = 256
    seed: int = 0
    data: str | None = None  # the ANN's data set at another path

    def check(self) -> None:
        for name in ("timesteps", "samples", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        check_percentile(self.percentile)


def neuron_kind(config: CheckpointConfig) -> str:
    """The activation (or neuron) kind a checkpoint's model was built with."""
    return NeuronConfig.from_dict(config.model.get("neuron") or {}).kind


def check_convertible(model: nn.Module, kind: str, relu: bool, where: str) -> None:
    """Refuse SNNs, the wrong activation for the mode, and max pooling."""
    if kind in ("lif", "if"):
        raise UserError(f"{where} is already an SNN ({kind} neurons): convert takes an ANN made by `seenn-deploy train-ann`")
    if kind == "relu" and not relu:
        raise UserError(f"{where} is a ReLU network: pass --relu (thresholds from activation percentiles, "
                        "--percentile 99.9), or train a QCFS ANN with `train-ann --activation qcfs`")
    if kind == "qcfs" and relu:
        raise UserError(f"{where} has QCFS activations, whose learnt lambdas are the thresholds: leave out --relu")
    pools = [name for name, m in model.named_modules() if isinstance(m, MAX_POOLS)]
    if pools:
        raise UserError(f"{where} uses max pooling ({pools[0]}): an IF neuron's spikes carry no max, so spiking max "
                        "pooling needs lateral inhibition that the step graph does not have; use average pooling "
                        "(every zoo architecture does) and retrain")


def convert_model(arch: str, ann_kwargs: dict[str, Any], ann: nn.Module, thresholds: dict[str, float]
                  ) -> tuple[SpikingModel, dict[str, Any]]:
    """The SNN of `ann` (eval mode) and its create_model kwargs. thresholds: one per activation, by name."""
    names = list(activations(ann, QCFS)) + list(activations(ann, nn.ReLU))
    if sorted(names) != sorted(thresholds):
        raise InternalError(f"thresholds for {sorted(thresholds)} do not match the activations {sorted(names)}")
    folded = fold_batch_norm(copy.deepcopy(ann).eval())
    learnt = {f"{name}.threshold" for name in activations(ann, QCFS)}
    state = {k: v for k, v in folded.state_dict().items() if k not in learnt}
    kwargs = {**ann_kwargs, "neuron": CONVERTED_NEURON.to_dict(), "fold_bn": True,
              "neurons": {name: {"v_threshold": th, "v_init": th / 2} for name, th in thresholds.items()}}
    snn = create_model(arch, **kwargs)
    snn.load_state_dict(state, strict=True)
    return snn.eval(), kwargs


def _training_batches(config: CheckpointConfig, options: ConvertOptions, log: Callable[[str], None]
                      ) -> tuple[Iterator[torch.Tensor], int]:
    """Normalised batches of `samples` rows the ANN was fit on (its validation slice left out), and their count."""
    spec = options.data or config.data
    if not spec:
        raise UserError("the ANN checkpoint does not record its data set: give --data SPEC")
    train = parse_data_spec(spec).load("train")
    vs = config.validation_slice()
    fit = train
    if vs is not None:
        fit, _ = split_validation(train, vs)
    count = min(options.samples, len(fit))
    rows = sample_rows(len(fit), count, options.seed)
    norm = Normalisation.from_dict(config.normalisation)
    log(f"thresholds from the {options.percentile:g}th percentile of each ReLU on {count} training rows of {fit.name}")

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, count, options.batch_size):
            yield model_input(fit.x[rows[start : start + options.batch_size]], norm, 1)

    return batches(), count


def convert_checkpoint(ann_path: Path, out: Path, options: ConvertOptions | None = None,
                       log: Callable[[str], None] = print) -> CheckpointConfig:
    """Convert the ANN checkpoint at `ann_path` and write the SNN checkpoint directory `out` (all or nothing)."""
    options = options or ConvertOptions()
    options.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty: choose another --out (nothing was written)")
    ann, config = load_checkpoint(ann_path)
    kind = neuron_kind(config)
    check_convertible(ann, kind, options.relu, f"checkpoint {ann_path}")
    if options.relu:
        batches, count = _training_batches(config, options, log)
        thresholds = percentile_thresholds(ann, batches, count, options.percentile)
        method = {"method": "relu-percentile", "percentile": options.percentile, "samples": count,
                  "seed": options.seed}
    else:
        thresholds = qcfs_thresholds(ann)
        method = {"method": "qcfs", "levels": NeuronConfig.from_dict(config.model["neuron"]).levels}
    snn, kwargs = convert_model(config.arch, config.model, ann, thresholds)
    weights = Path(ann_path) / WEIGHTS_FILE if Path(ann_path).is_dir() else Path(ann_path)
    converted = CheckpointConfig(
        arch=config.arch, model=kwargs, timesteps=options.timesteps, normalisation=config.normalisation,
        classes=config.classes, data=config.data, input_kind=config.input_kind,
        metrics={"ann": config.metrics},
        training={"converted_from": str(Path(ann_path).resolve()), "ann_sha256": file_sha256(weights), **method,
                  "ann_training": config.training},
        validation=config.validation,
    )
    _write(out, snn, converted)
    log(f"converted {config.arch} ({kind}, {len(thresholds)} neurons, thresholds "
        f"{min(thresholds.values()):.3g}..{max(thresholds.values()):.3g}) to {out}, T = {options.timesteps}")
    return converted


def _write(out: Path, model: nn.Module, config: CheckpointConfig) -> None:
    """Save into a folder beside `out`, renamed to `out` once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_checkpoint(staging, model, config)
        if out.exists():
            out.rmdir()  # empty: checked before the work
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
