"""Commands for converted SNNs: `train-ann` (a zoo ANN with QCFS or ReLU activations) and `convert` (ANN -> SNN)."""

from __future__ import annotations

from pathlib import Path

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import (
    COUNT, FiniteFloat, POSITIVE, data_option, echo, emit_json, json_option, writable_folder,
)
from seenn_deploy.cli.train_cmds import batch_size_help, rank0_output, train_device_option


@cli.command("train-ann")
@click.option("--arch", required=True, help="Model name (see `seenn-deploy models`), built as an ANN.")
@data_option
@click.option("--epochs", type=COUNT, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_folder,
              help="Checkpoint directory to create.")
@click.option("--activation", type=click.Choice(["qcfs", "relu"]), default="qcfs", show_default=True,
              help="qcfs: clip-floor-shift with a learnt lambda per layer, converted without calibration; relu: a "
                   "plain network, converted with --relu (percentile thresholds).")
@click.option("--levels", "-L", type=COUNT, default=4, show_default=True,
              help="QCFS quantisation steps L (4 in the paper for CIFAR).")
@click.option("--lambda-init", type=POSITIVE, default=8.0, show_default=True,
              help="QCFS lambda (threshold) at the start of training; each layer learns its own.")
@click.option("--batch-size", type=COUNT, default=128, show_default=True, help=batch_size_help)
@click.option("--lr", type=POSITIVE, default=0.1, show_default=True,
              help="Peak learning rate (SGD, cosine schedule).")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=5e-4, show_default=True)
@click.option("--width", type=int, default=None, help="Width multiplier for archs that take one (resnet20).")
@click.option("--augment", is_flag=True, help="Random crop (pad 4) and horizontal flip, for natural images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of the train split held out to validate on (and, after convert, to calibrate on); 0: none.")
@click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the held-out rows.")
@click.option("--max-steps", type=COUNT, default=None, help="Stop after N optimizer steps; a quick run.")
@click.option("--train-samples", type=COUNT, default=None, help="Fit on N rows drawn (with --seed); a quick run.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last saved step.")
@train_device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def train_ann_cmd(arch, data_spec, epochs, out, activation, levels, lambda_init, batch_size, lr, weight_decay, width,
                  augment, seed, val_fraction, val_seed, max_steps, train_samples, resume, device, quiet,
                  json_path) -> None:
    """Train a zoo architecture as an ANN (QCFS or ReLU) to convert into an SNN with `convert`."""
    from seenn_deploy.lazy import require

    require("torch", "training")
    from seenn_deploy.train.ann_trainer import ann_train_config
    from seenn_deploy.train.trainer import train

    config = ann_train_config(
        arch, data_spec, epochs, out, activation=activation, levels=levels, lambda_init=lambda_init,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, model_kwargs={} if width is None else {"width": width},
        augment=augment, seed=seed, resume=resume, val_fraction=val_fraction, val_seed=val_seed, max_steps=max_steps,
        train_samples=train_samples, device=device,
    )
    log, main = rank0_output()
    history = train(config, log=log, progress=not quiet)
    log(f"ANN checkpoint written to {out}; `seenn-deploy convert {out} --out SNN` makes the SNN")
    if main:
        emit_json(json_path, {"checkpoint": str(out), "history": [vars(r) for r in history]})


@cli.command("convert")
@click.argument("ann_checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_folder,
              help="SNN checkpoint directory to create.")
@click.option("--timesteps", "-T", type=COUNT, default=32, show_default=True,
              help="T_max of the SNN: what export, evaluate and calibrate run.")
@click.option("--relu", is_flag=True, help="The ANN uses ReLU: each threshold is a percentile of its activations.")
@click.option("--percentile", type=FiniteFloat(min=0, max=100, min_open=True), default=99.9, show_default=True,
              help="With --relu: the percentile of each layer's activations on training rows.")
@click.option("--samples", type=COUNT, default=1024, show_default=True,
              help="With --relu: training rows (the validation slice left out) the percentiles are taken on.")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="With --relu: the ANN's data set at another path (default: the one it was trained on).")
@click.option("--seed", type=int, default=0, show_default=True, help="With --relu: seed of the training rows drawn.")
@json_option
def convert_cmd(ann_checkpoint, out, timesteps, relu, percentile, samples, data_spec, seed, json_path) -> None:
    """Convert an ANN checkpoint of `train-ann` into an SNN checkpoint (IF neurons, soft reset, BN folded)."""
    from seenn_deploy.lazy import require

    require("torch", "conversion")
    from seenn_deploy.convert.converter import ConvertOptions, convert_checkpoint

    options = ConvertOptions(timesteps=timesteps, relu=relu, percentile=percentile, samples=samples, seed=seed,
                             data=data_spec)
    config = convert_checkpoint(ann_checkpoint, out, options, log=echo)
    emit_json(json_path, {"checkpoint": str(out), "timesteps": config.timesteps, **config.training,
                          "thresholds": {k: v["v_threshold"] for k, v in config.model["neurons"].items()}})
