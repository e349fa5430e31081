"""The rows a training run fits on and validates on: the train split less a held-out slice, never test."""

from __future__ import annotations

from dataclasses import dataclass

from seenn_deploy.data import ArrayDataset, Normalisation, ValidationSlice, parse_data_spec, split_validation
from seenn_deploy.data.validation import sample_rows
from seenn_deploy.errors import UserError


@dataclass
class TrainingData:
    """fit: the rows trained on; val: the held-out slice (None with --val-fraction 0); normalisation fit on `fit`."""

    fit: ArrayDataset
    val: ArrayDataset | None
    validation: ValidationSlice | None
    normalisation: Normalisation
    train_rows: int  # the whole train split, before the slice and any --train-samples subset


def load_training_data(spec: str, val_fraction: float, val_seed: int, train_samples: int | None,
                       seed: int) -> TrainingData:
    """Split the train split of `spec` into fit and validation rows; `train_samples` keeps a seeded subset of fit."""
    train = parse_data_spec(spec).load("train")
    if train.y is None:
        raise UserError(f"data {spec} has no labels: training needs labelled data")
    validation = val = None
    fit = train
    if val_fraction > 0:
        validation = ValidationSlice(spec, val_fraction, val_seed, train_rows=len(train))
        fit, val = split_validation(train, validation)
    if train_samples is not None and train_samples < len(fit):
        fit = fit.take(sample_rows(len(fit), train_samples, seed),
                       f"{fit.name}, {train_samples} samples drawn with seed {seed}")
    return TrainingData(fit, val, validation, Normalisation.fit(fit.x), len(train))
