"""Commands on checkpoints: `models`, `train`, `evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import allow_pickle_option, data_option, emit_json, json_option
from seenn_deploy.errors import UserError


@cli.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from seenn_deploy.snn.zoo import list_models

    for entry in list_models():
        kind = "snn" if entry.spiking else "ann"
        click.echo(f"{entry.name:<16} {kind}  {entry.summary}")


@cli.command("train")
@click.option("--arch", required=True, help="Model name (see `seenn-deploy models`).")
@data_option
@click.option("--timesteps", "-T", type=int, required=True, help="Timesteps per sample in training.")
@click.option("--epochs", type=int, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Checkpoint directory to create.")
@click.option("--batch-size", type=int, default=128, show_default=True)
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
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def train_cmd(arch, data_spec, timesteps, epochs, out, batch_size, lr, weight_decay, lambda_mse, neuron, tau,
              threshold, firing, surrogate, surrogate_param, width, augment, seed, resume, quiet, json_path) -> None:
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
    )
    history = train(config, log=click.echo, progress=not quiet)
    click.echo(f"checkpoint written to {out}")
    emit_json(json_path, {"checkpoint": str(out), "history": [vars(r) for r in history]})


@cli.command("evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@data_option
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test", show_default=True)
@click.option("--timesteps", "-T", type=int, default=None, help="Timesteps to run (default: the checkpoint's).")
@click.option("--samples", type=int, default=None, help="Evaluate the first N samples only.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@allow_pickle_option
@json_option
def evaluate_cmd(checkpoint, data_spec, split, timesteps, samples, batch_size, allow_pickle, json_path) -> None:
    """Per-timestep accuracy of a checkpoint (mean of the first t outputs, t = 1..T)."""
    from seenn_deploy.lazy import require

    require("torch", "evaluation")
    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.snn.checkpoint import load_checkpoint
    from seenn_deploy.train.evaluate import timestep_accuracy

    source = parse_data_spec(data_spec)
    model, config = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    data = source.load(split)
    if samples is not None:
        if samples < 1:
            raise UserError(f"--samples must be >= 1, got {samples}")
        data = data.subset(samples)
    steps = timesteps or config.timesteps
    if steps < 1:
        raise UserError(f"--timesteps must be >= 1, got {steps}")
    result = timestep_accuracy(model, data, Normalisation.from_dict(config.normalisation), steps, batch_size)
    click.echo(f"{config.arch} on {data.name}, {result.samples} samples")
    for t, acc in enumerate(result.accuracy, start=1):
        click.echo(f"  T={t}: {100 * acc:.2f}%")
    emit_json(json_path, {"checkpoint": str(checkpoint), "data": data.name, **result.to_dict()})
