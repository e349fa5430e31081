"""Per-timestep accuracy: the accuracy of the mean of the first t outputs, for t = 1..T."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seenn_deploy.data import ArrayDataset, Normalisation
from seenn_deploy.data.progress import progress_bar
from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.train.batches import iterate_batches, model_input


@dataclass
class TimestepAccuracy:
    """accuracy[t-1]: accuracy when predicting from the mean logits of timesteps 1..t."""

    accuracy: list[float]
    samples: int

    def to_dict(self) -> dict:
        return {"accuracy_per_timestep": self.accuracy, "samples": self.samples}

    def table(self) -> str:
        return "  ".join(f"T={t + 1}: {a * 100:.2f}%" for t, a in enumerate(self.accuracy))


@torch.no_grad()
def timestep_accuracy(
    model: SpikingModel,
    data: ArrayDataset,
    normalisation: Normalisation,
    timesteps: int,
    batch_size: int = 256,
    desc: str = "evaluating",
) -> TimestepAccuracy:
    """Evaluate in eval mode, restoring the model's mode afterwards; a progress bar `desc` once inputs check out."""
    if data.y is None:
        raise UserError(f"data {data.name} has no labels: accuracy needs labelled data")
    data.check_sample_shape(_expected_shape(model, data, timesteps))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = np.zeros(timesteps, dtype=np.int64)
    bar = progress_bar(len(data), desc)
    try:
        for x, y in iterate_batches(data, batch_size):
            out = model(model_input(x, normalisation, timesteps).to(device), timesteps=timesteps).cpu()
            mean = out.cumsum(0) / torch.arange(1, out.shape[0] + 1, dtype=out.dtype).view(-1, 1, 1)
            labels = torch.from_numpy(y).long()
            correct += (mean.argmax(-1) == labels).sum(1).numpy()
            bar.update(len(y))
    finally:
        bar.close()
        model.train(was_training)
    return TimestepAccuracy([float(c) / len(data) for c in correct], len(data))


def _expected_shape(model: SpikingModel, data: ArrayDataset, timesteps: int) -> tuple[int, ...]:
    if data.event:
        if data.x.shape[1] < timesteps:
            raise UserError(f"event data {data.name} has {data.x.shape[1]} frames per sample; {timesteps} timesteps need as many")
        return (data.x.shape[1], *model.input_spec.shape)
    return model.input_spec.shape
