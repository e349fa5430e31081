"""`train` under torchrun: two gloo processes on the CPU give a single process's run, rank 0 alone writes and
logs, a run resumes under torchrun, and settings that cannot split over the processes are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.checkpoint import load_checkpoint
from seenn_deploy.train.distributed import World, shard
from seenn_deploy.train.trainer import TrainConfig, Trainer, train

REPO = Path(__file__).resolve().parents[2]
# 99 fit rows in batches of 32: 4 steps an epoch, the last of 3 rows (shares of 2 and 1 over two processes).
RUN = dict(arch="spiking_cnn", data="digits", timesteps=2, epochs=2, batch_size=32, train_samples=99, augment=True)


def cli_args(out: Path, max_steps: int, *more: str) -> list[str]:
    return ["train", "--arch", "spiking_cnn", "--data", "digits", "-T", "2", "--epochs", "2", "--batch-size", "32",
            "--train-samples", "99", "--augment", "--max-steps", str(max_steps), "--out", str(out),
            "--quiet", *more]


def torchrun(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "seenn_deploy.cli", *args]
    return subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal within float rounding (the all-reduces sum in another order; measured 1.2e-7 after 3 steps).

    Two processes with per-rank batch-norm statistics differ from one by 4e-3 (measured), far outside.
    """
    first, _ = load_checkpoint(a)
    second, _ = load_checkpoint(b)
    for (name, x), y in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4, msg=name)


def history(out: Path) -> list[dict]:
    return json.loads((out / "train_state.json").read_text())["history"]


def assert_same_history(a: Path, b: Path) -> None:
    for mine, theirs in zip(history(a), history(b), strict=True):
        assert (mine["epoch"], mine["steps"], mine["val_accuracy"]) == (theirs["epoch"], theirs["steps"],
                                                                        theirs["val_accuracy"])
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["train_accuracy"] == pytest.approx(theirs["train_accuracy"], abs=1.5 / 99)  # one argmax may tip


@pytest.mark.slow
def test_two_gloo_processes_train_and_resume_as_one_process_does(tmp_path):
    # The reference: one process, no torchrun, 3 steps then resumed to 6 (the plan grows: the cosine follows it).
    config = TrainConfig(out=tmp_path / "one", max_steps=3, **RUN)
    initial = Trainer(TrainConfig(out=tmp_path / "initial", **RUN), progress=False).model.state_dict()
    train(config, log=lambda line: None, progress=False)
    shutil.copytree(tmp_path / "one", tmp_path / "one_at_3")
    config.max_steps, config.resume = 6, True
    train(config, log=lambda line: None, progress=False)

    two = tmp_path / "two"
    first = torchrun(2, cli_args(two, 3))
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch 1/2 (stopped at step 3)") == 1  # rank 0 alone logs
    assert first.stdout.count("checkpoint written to") == 1
    assert "16 per process, 2 processes (gloo on cpu)" in first.stdout
    assert sorted(p.name for p in two.iterdir()) == ["config.json", "train_state.json", "train_state.safetensors",
                                                     "weights.safetensors"]  # nothing half-written
    assert json.loads((two / "config.json").read_text())["training"]["processes"] == 2
    assert_same_weights(tmp_path / "one_at_3", two)
    assert_same_history(tmp_path / "one_at_3", two)

    trained, _ = load_checkpoint(two)
    moved = max(float((trained.state_dict()[k] - v).abs().max()) for k, v in initial.items() if v.is_floating_point())
    assert moved > 1e-3  # the tolerance is far below what 3 steps change (and than the 4e-3 of per-rank batch norm)

    resumed = torchrun(2, cli_args(two, 6, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming") == 1 and "at step 3 of 6" in resumed.stdout
    assert_same_weights(tmp_path / "one", two)  # steps 4 (the 3-row batch, shares of 2 and 1) to 6, in epoch 2
    assert_same_history(tmp_path / "one", two)


def test_shares_of_a_batch_are_contiguous_in_rank_order_and_cover_it():
    for rows, size in ((32, 2), (3, 2), (10, 4), (7, 7)):
        parts = [shard(rows, World(rank, size, rank)) for rank in range(size)]
        covered = np.concatenate([np.arange(rows)[p] for p in parts])
        np.testing.assert_array_equal(covered, np.arange(rows))
        lengths = [p.stop - p.start for p in parts]
        assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_world_comes_from_torchruns_environment():
    assert World.from_env({}) == World()
    assert World.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
    with pytest.raises(UserError, match="WORLD_SIZE='' .*torchrun"):
        World.from_env({"RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="RANK=4 and WORLD_SIZE=4"):
        World.from_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


@pytest.fixture
def as_rank0_of_two(monkeypatch):
    """This process as torchrun's rank 0 of 2 (the checks below fail before any process group is joined)."""
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(run_cli, as_rank0_of_two, tmp_path):
    out = tmp_path / "run"
    error = run_cli(*cli_args(out, 2), "--batch-size", "33").error()
    assert "--batch-size 33" in error and "2 processes" in error and "multiple of 2" in error
    ann = run_cli("train-ann", "--arch", "spiking_cnn", "--data", "digits", "--epochs", "1", "--batch-size", "9",
                  "--out", out).error()
    assert "--batch-size 9" in ann
    assert not out.exists()


def test_a_gpu_index_other_than_local_rank_is_refused_under_torchrun(run_cli, as_rank0_of_two, tmp_path):
    error = run_cli(*cli_args(tmp_path / "run", 2), "--device", "cuda:1").error()
    assert "LOCAL_RANK" in error and "--device cuda" in error


def test_a_last_batch_with_fewer_rows_than_processes_is_refused(tmp_path):
    config = TrainConfig(out=tmp_path / "run", **{**RUN, "train_samples": 97})  # a last batch of 1 row
    with pytest.raises(UserError, match="last batch of 1 row.*2 processes"):
        Trainer(config, log=lambda line: None, progress=False, world=World(0, 2, 0))
    assert not (tmp_path / "run").exists()


def test_gloo_batch_norm_computes_what_batch_norm_does_on_the_whole_batch():
    # In a one-process gloo group the global batch is this one: outputs, gradients and running statistics must be
    # BatchNorm2d's. (Two processes against one: the torchrun test above.)
    import torch.distributed as dist

    from seenn_deploy.train.distributed import GlooSyncBatchNorm, synchronise_batchnorm

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.3))
    reference[0].weight.data.uniform_(0.5, 1.5)
    reference[0].bias.data.uniform_(-1, 1)
    synced = synchronise_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.3)), torch.device("cpu"))
    synced.load_state_dict(reference.state_dict())
    assert isinstance(synced[0], GlooSyncBatchNorm)
    x = torch.randn(5, 3, 4, 4) * 3 + 2
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        outputs, grads = [], []
        for model in (reference, synced):
            xi = x.clone().requires_grad_()
            out = model(xi)
            (out * torch.arange(out.numel()).view_as(out)).sum().backward()
            outputs.append(out)
            grads.append([xi.grad, model[0].weight.grad, model[0].bias.grad])
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(outputs[1], outputs[0])
    for mine, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(mine, theirs)
    for (name, a), b in zip(reference.state_dict().items(), synced.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)
    synced.eval()
    torch.testing.assert_close(synced(x), reference.eval()(x))
