"""`train-ann`: a zoo architecture as an ANN to convert, trained by the same Trainer as the SNNs.

The ANN is the architecture with an activation (QCFS or ReLU, NeuronConfig kind 'qcfs' / 'relu')
wherever it has a neuron, run for one timestep: the TET loss at T = 1 is the cross-entropy, and
the rest (validation slice, resume, --max-steps, atomic checkpoints, progress) is trainer.py's.
`seenn-deploy convert` turns the checkpoint into an SNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neuron_config import ACTIVATION_KINDS, NeuronConfig
from seenn_deploy.train.trainer import TrainConfig

ACTIVATIONS = tuple(ACTIVATION_KINDS)
LEVELS = 4  # QCFS's L for CIFAR in Bu et al. (ICLR 2022)
LAMBDA_INIT = 8.0  # the reference code's starting lambda (it learns its own)


def ann_train_config(arch: str, data: str, epochs: int, out: Path, activation: str = "qcfs", levels: int = LEVELS,
                     lambda_init: float = LAMBDA_INIT, **train: Any) -> TrainConfig:
    """The TrainConfig of an ANN of `arch` with `activation`; `train` are TrainConfig's other fields."""
    if activation not in ACTIVATIONS:
        raise UserError(f"--activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if "timesteps" in train or "neuron" in train:
        raise UserError("an ANN runs one timestep and has activations, not neurons: leave out timesteps and neuron")
    neuron = NeuronConfig(kind=activation, levels=levels, v_threshold=lambda_init)
    neuron.build()  # a bad level count or lambda fails here, before any data is read
    return TrainConfig(arch=arch, data=data, timesteps=1, epochs=epochs, out=out, neuron=neuron, **train)
