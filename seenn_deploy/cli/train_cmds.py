"""Commands on checkpoints: `models`, `train`, `evaluate`.

`train` (and `train-ann`) also run under `torchrun --nproc-per-node N`: the training module reads
torchrun's environment; only rank 0 prints and writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import allow_pickle_option, data_option, echo, emit_json, json_option, writable_folder
from seenn_deploy.errors import UserError

if TYPE_CHECKING:
    from seenn_deploy.data import ArrayDataset
    from seenn_deploy.snn.checkpoint import CheckpointConfig


train_device_option = click.option(
    "--device", default="cpu", show_default=True, metavar="cpu|cuda[:N]",
    help="Where training runs. Under torchrun: cpu joins the processes with gloo; cuda gives each process the GPU "
         "of its LOCAL_RANK and joins them with NCCL.",
)
batch_size_help = ("The global batch: under torchrun each of the N processes takes batch-size / N rows of every "
                   "batch (a multiple of N), so the steps and the results are one process's.")


def rank0_output() -> tuple[Callable[[str], None], bool]:
    """(log, is rank 0): under torchrun only rank 0 prints and writes --json; the others stay silent."""
    from seenn_deploy.train.distributed import World

    main = World.from_env().is_main
    return (echo if main else (lambda line: None)), main


@cli.command("models")
def models_cmd() -> None:
    """List the model architectures: kind, accepted input sizes, parameter counts (needs no torch)."""
    from seenn_deploy.snn.zoo.catalog import CATALOG

    for info in CATALOG:
        echo(info.line())


@cli.command("train")
@click.option("--arch", required=True, help="Model name (see `seenn-deploy models`).")
@data_option
@click.option("--timesteps", "-T", type=int, required=True, help="Timesteps per sample in training.")
@click.option("--epochs", type=int, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_folder,
              help="Checkpoint directory to create.")
@click.option("--batch-size", type=int, default=128, show_default=True, help=batch_size_help)
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate (SGD, cosine schedule).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--lambda-mse", type=float, default=0.0, show_default=True, help="TET's lambda: weight of the MSE regulariser.")
@click.option("--neuron", type=click.Choice(["lif", "if"]), default="lif", show_default=True)
@click.option("--tau", type=float, default=0.5, show_default=True, help="LIF decay factor.")
@click.option("--threshold", type=float, default=1.0, show_default=True)
@click.option("--firing", type=click.Choice([">=", ">"]), default=">=", show_default=True)
@click.option("--surrogate", type=click.Choice(["triangle", "tanh"]), default="triangle", show_default=True)
@click.option("--surrogate-param", type=float, default=1.0, show_default=True, help="Triangle gamma, or tanh b.")
@click.option("--width", type=int, default=None, help="Width multiplier for archs that take one (resnet20).")
@click.option("--augment", is_flag=True, help="Random crop (pad 4) and horizontal flip, for natural images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of the train split held out to validate on each epoch (and to calibrate on later); "
                   "0: none. The test split is never read.")
@click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the held-out rows.")
@click.option("--max-steps", type=int, default=None,
              help="Stop after N optimizer steps (the cosine schedule ends there); a quick run.")
@click.option("--train-samples", type=int, default=None,
              help="Fit on N rows drawn (with --seed) from the training rows; a quick run.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last saved step (under any process "
              "count: the global batch and the data order do not depend on it).")
@train_device_option
@click.option("--quiet", is_flag=True, help="No progress bars (decode, train, validation).")
@json_option
def train_cmd(arch, data_spec, timesteps, epochs, out, batch_size, lr, weight_decay, lambda_mse, neuron, tau,
              threshold, firing, surrogate, surrogate_param, width, augment, seed, val_fraction, val_seed, max_steps,
              train_samples, resume, device, quiet, json_path) -> None:
    """Train an SNN with the TET loss and write a checkpoint directory."""
    from seenn_deploy.lazy import require

    require("torch", "training")
    from seenn_deploy.snn.neuron_config import NeuronConfig
    from seenn_deploy.train.trainer import TrainConfig, train

    config = TrainConfig(
        arch=arch, data=data_spec, timesteps=timesteps, epochs=epochs, out=out, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, lambda_mse=lambda_mse,
        neuron=NeuronConfig(kind=neuron, tau=tau, v_threshold=threshold, firing=firing, surrogate=surrogate,
                            surrogate_param=surrogate_param),
        model_kwargs={} if width is None else {"width": width}, augment=augment, seed=seed, resume=resume,
        val_fraction=val_fraction, val_seed=val_seed, max_steps=max_steps, train_samples=train_samples, device=device,
    )
    log, main = rank0_output()
    history = train(config, log=log, progress=not quiet)
    log(f"checkpoint written to {out}")
    if main:
        emit_json(json_path, {"checkpoint": str(out), "history": [vars(r) for r in history]})


@cli.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Dataset (default: the one the checkpoint was trained on).")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="val: the slice the checkpoint's training held out.")
@click.option("--timesteps", "-T", type=int, default=None, help="Timesteps to run (default: the checkpoint's).")
@click.option("--samples", type=int, default=None, help="Evaluate the first N samples only.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@allow_pickle_option
@json_option
def evaluate_cmd(checkpoint, data_spec, split, timesteps, samples, batch_size, quiet, allow_pickle, json_path) -> None:
    """Per-timestep accuracy of a checkpoint (mean of the first t outputs, t = 1..T)."""
    from seenn_deploy.lazy import require

    require("torch", "evaluation")
    from seenn_deploy.data import Normalisation, check_labels
    from seenn_deploy.data.progress import progress_enabled
    from seenn_deploy.snn.checkpoint import load_checkpoint
    from seenn_deploy.train.evaluate import timestep_accuracy

    for name, value in (("--samples", samples), ("--timesteps", timesteps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    model, config = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    with progress_enabled(not quiet):
        data = _evaluation_data(config, checkpoint, data_spec, split)
        check_labels(data, len(config.classes), config.classes, f"checkpoint {checkpoint}")
        if samples is not None:
            data = data.subset(samples)
        result = timestep_accuracy(model, data, Normalisation.from_dict(config.normalisation),
                                   timesteps or config.timesteps, batch_size)
    echo(f"{config.arch} on {data.name}, {result.samples} samples")
    for t, acc in enumerate(result.accuracy, start=1):
        echo(f"  T={t}: {100 * acc:.2f}%")
    emit_json(json_path, {"checkpoint": str(checkpoint), "data": data.name, "split": split, **result.to_dict()})


def _evaluation_data(config: CheckpointConfig, checkpoint: Path, data_spec: str | None, split: str) -> ArrayDataset:
    """A split of --data (default: the checkpoint's data); for split val, the slice the checkpoint's training held out."""
    from seenn_deploy.data import load_validation, parse_data_spec

    if split != "val":
        if not (data_spec or config.data):
            raise UserError(f"checkpoint {checkpoint} does not record its data set: give --data SPEC")
        return parse_data_spec(data_spec or config.data).load(split)
    vs = config.validation_slice(checkpoint)
    if vs is None:
        raise UserError(f"checkpoint {checkpoint} held out no validation slice (trained with --val-fraction 0, or "
                        "elsewhere): evaluate --split test, or retrain with --val-fraction")
    if data_spec is not None and data_spec != vs.data:
        if data_spec.partition(":")[0] != vs.data.partition(":")[0]:
            raise UserError(f"--split val is a slice of {vs.data}, and --data {data_spec} is another data set: "
                            "leave out --data, or give the same data set")
        vs = replace(vs, data=data_spec)  # the same data set at another path; its size is checked on load
    return load_validation(vs)
