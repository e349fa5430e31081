"""Commands on SEENN-II policies: `train-policy`."""

from __future__ import annotations

from pathlib import Path

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import (
    COUNT, FiniteFloat, POSITIVE, data_option, echo, emit_json, json_option, writable_folder,
)


def _numbers(kind: type, what: str):
    """A click callback: 'a,b,c' -> [kind(a), ...], a usage error naming the option otherwise."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        try:
            return [kind(v) for v in value.split(",")]
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {what}") from None

    return callback


@cli.command("train-policy")
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=Path))
@data_option
@click.option("--beta", "betas", required=True, metavar="B[,B..]", callback=_numbers(float, "numbers"),
              help="Cost of a wrong answer (reward -beta; a right one after t steps earns 1/2^t): larger beta, "
                   "more steps and accuracy. Several values train one policy each and install none.")
@click.option("--candidates", default=None, metavar="T1,T2,..", callback=_numbers(int, "timesteps"),
              help="Timesteps the policy chooses from  [default: 1..T of the checkpoint]")
@click.option("--epochs", type=COUNT, default=20, show_default=True, help="Stage 1: the policy, SNN frozen.")
@click.option("--joint-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stage 2: fine-tune policy and SNN together (needs --out: the SNN changes).")
@click.option("--width", type=COUNT, default=16, show_default=True,
              help="Policy channels in its first stage (then 2x, 4x).")
@click.option("--downsample", type=COUNT, default=1, show_default=True,
              help="Average-pool the input by this factor before the policy: fewer MACs, a coarser look.")
@click.option("--batch-size", type=COUNT, default=128, show_default=True)
@click.option("--lr", type=POSITIVE, default=0.05, show_default=True, help="Stage 1 peak learning rate (SGD, cosine).")
@click.option("--joint-lr", type=POSITIVE, default=0.001, show_default=True, help="Stage 2 peak learning rate.")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=5e-4, show_default=True)
@click.option("--reward-shift", is_flag=True, help="Reward 1/2^(t-1) instead of 1/2^t (the reference code's).")
@click.option("--balance-first", is_flag=True,
              help="Weigh samples the SNN gets wrong at the first candidate so they count as much as the right "
                   "ones (the reference code's re-weighting).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, callback=writable_folder,
              help="Write a new checkpoint here instead of adding the policy to CHECKPOINT.")
@click.option("--resume", is_flag=True, help="Continue (or, when finished, install) the run for this beta.")
@click.option("--test/--no-test", "score_test", default=True, show_default=True,
              help="After training, score every beta's policy once on the test split, beside SEENN-I (the report "
                   "in CHECKPOINT/policies/: report.json, front.png). Choose beta on the validation figures.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def train_policy_cmd(checkpoint, data_spec, betas, candidates, epochs, joint_epochs, width, downsample, batch_size, lr,
                     joint_lr, weight_decay, reward_shift, balance_first, seed, out, resume, score_test, quiet,
                     json_path) -> None:
    """Train the SEENN-II policy network of a checkpoint: it picks each input's timesteps from the candidates."""
    from seenn_deploy.lazy import require

    require("torch", "policy training")
    from seenn_deploy.train.policy_trainer import PolicyConfig, report_policies, train_policies

    config = PolicyConfig(checkpoint=checkpoint, data=data_spec, beta=betas[0], candidates=candidates, epochs=epochs,
                          joint_epochs=joint_epochs, out=out, width=width, downsample=downsample,
                          batch_size=batch_size, lr=lr, joint_lr=joint_lr, weight_decay=weight_decay,
                          shift_reward=reward_shift, balance_first=balance_first, seed=seed, resume=resume)
    runs = train_policies(config, betas, log=echo, progress=not quiet)
    report = report_policies(config, runs, test=score_test, log=echo, progress=not quiet)
    for line in report.lines():
        echo(line)
    if runs and runs[0].snn_validation:
        echo("the SNN alone on the validation slice: " + "  ".join(
            f"T={t}: {100 * a:.2f}%" for t, a in zip(runs[0].candidates, runs[0].snn_validation)))
    echo("report: " + ", ".join(report.files))
    if len(runs) > 1:
        echo("pick beta on the validation figures; to install it, run this command again with that one --beta and "
             "--resume (it trains nothing)")
    emit_json(json_path, {"checkpoint": str(config.destination), "runs": [r.to_dict() for r in runs],
                          "report": report.to_dict()})
