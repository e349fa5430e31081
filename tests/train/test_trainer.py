"""Training on the bundled digits: learns, checkpoints, resumes exactly, refuses bad settings."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seenn_deploy.data import Normalisation, load_validation, parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.snn.checkpoint import load_checkpoint
from seenn_deploy.train.evaluate import timestep_accuracy
from seenn_deploy.train.tet import tet_loss
from seenn_deploy.train.trainer import TrainConfig, Trainer, train

SMALL = {"channels": [8, 16], "hidden": 32}


def config(out, **over):
    base = dict(arch="spiking_cnn", data="digits", timesteps=2, epochs=2, out=out, batch_size=64,
                model_kwargs=SMALL)
    return TrainConfig(**{**base, **over})


def test_tet_loss_is_the_mean_of_per_timestep_cross_entropies():
    out = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # T=2, B=1, K=2
    y = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out[0], y) + ce(out[1], y)) / 2
    assert torch.allclose(tet_loss(out, y), expected)
    mse = ((out - 1.0) ** 2).mean()
    assert torch.allclose(tet_loss(out, y, lambda_mse=0.25), 0.75 * expected + 0.25 * mse)


def test_training_learns_and_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    history = train(config(out, epochs=10, timesteps=2), log=lambda s: None, progress=False)
    acc = history[-1].val_accuracy
    assert len(acc) == 2 and acc[-1] > 0.8, acc  # 10 classes: chance is 0.1
    model, cfg = load_checkpoint(out)
    validation = cfg.metrics["validation"]
    assert validation["split"] == "validation" and validation["accuracy_per_timestep"] == acc
    assert validation["samples"] == 144 and cfg.training["fit_rows"] == 1437 - 144  # 10 % of digits' train split
    assert cfg.validation == {"data": "digits", "fraction": 0.1, "seed": 0, "method": "splitmix64-rank",
                              "train_rows": 1437}
    assert cfg.timesteps == 2 and cfg.classes == [str(i) for i in range(10)]
    assert cfg.model["image_size"] == [8, 8] and cfg.model["in_channels"] == 1
    # What the epoch reported is what `evaluate --split val` finds again on the recorded rows.
    again = timestep_accuracy(model, load_validation(cfg.validation_slice()),
                              Normalisation.from_dict(cfg.normalisation), 2)
    assert again.accuracy == acc


def write_fashion_dir(root: Path, test_bytes: bytes | None = None) -> str:
    """A fashion-mnist:DIR with a small real-looking train file and, if given, raw bytes as its test file."""
    rng = np.random.default_rng(0)
    root.mkdir()
    y = np.arange(200) % 10
    x = (rng.random((200, 6, 6)) * 60 + y[:, None, None] * 19).astype(np.uint8)  # learnable: brightness = class
    np.savez(root / "fashion_mnist_train.npz", x=x, y=y)
    if test_bytes is not None:
        (root / "fashion_mnist_test.npz").write_bytes(test_bytes)
    return f"fashion-mnist:{root}"


def test_training_never_reads_the_test_split(tmp_path):
    spec = write_fashion_dir(tmp_path / "fm", test_bytes=b"this test file must never be read")
    with pytest.raises(UserError, match="cannot read"):
        parse_data_spec(spec).load("test")  # the trap is armed
    train(config(tmp_path / "run", data=spec, epochs=1), log=lambda s: None, progress=False)
    _, cfg = load_checkpoint(tmp_path / "run")
    assert cfg.metrics["validation"]["samples"] == 20 and "(test)" not in json.dumps(cfg.metrics)


def test_val_fraction_zero_holds_out_nothing(tmp_path):
    lines = []
    history = train(config(tmp_path / "run", epochs=1, val_fraction=0.0), log=lines.append, progress=False)
    _, cfg = load_checkpoint(tmp_path / "run")
    assert history[-1].val_accuracy == [] and cfg.validation is None and cfg.metrics["validation"] is None
    assert cfg.training["fit_rows"] == 1437 and "nothing held out" in lines[0]


def test_train_samples_fit_a_seeded_subset_of_the_fit_rows(tmp_path):
    trainer = Trainer(config(tmp_path / "a", train_samples=100), log=lambda s: None, progress=False)
    again = Trainer(config(tmp_path / "b", train_samples=100), log=lambda s: None, progress=False)
    fit_rows = {row.tobytes() for row in trainer.data.val.x} | {row.tobytes() for row in trainer.train_data.x}
    assert len(trainer.train_data) == 100 and trainer.steps_per_epoch == 2
    np.testing.assert_array_equal(trainer.train_data.x, again.train_data.x)  # the same rows each time
    assert not {row.tobytes() for row in trainer.train_data.x} & {row.tobytes() for row in trainer.data.val.x}
    assert len(fit_rows) > 100
    other = Trainer(config(tmp_path / "c", train_samples=100, seed=1), log=lambda s: None, progress=False)
    assert not np.array_equal(other.train_data.x, trainer.train_data.x)


def test_max_steps_stops_with_a_resumable_checkpoint_on_a_schedule_that_ends_there(tmp_path):
    out = tmp_path / "run"
    lines = []
    history = train(config(out, epochs=3, max_steps=5), log=lines.append, progress=False)
    assert [r.steps for r in history] == [5] and "stopped at step 5" in lines[-1]
    _, cfg = load_checkpoint(out)
    assert cfg.training["steps_done"] == 5 and cfg.training["planned_steps"] == 5
    assert len(cfg.metrics["validation"]["accuracy_per_timestep"]) == 2
    trainer = Trainer(config(out, epochs=3, max_steps=5, resume=True), log=lambda s: None, progress=False)
    assert trainer._lr_at(0) == 0.1 and trainer._lr_at(5) == 0.0  # the cosine spans the 5 planned steps
    assert trainer.run() == history  # finished: nothing to do
    longer = train(config(out, epochs=3, max_steps=30, resume=True), log=lines.append, progress=False)
    assert "plan changed from 5 to 30 steps" in "\n".join(lines)
    steps_per_epoch = trainer.steps_per_epoch  # 21 batches of 64 in 1293 fit rows
    assert [(r.epoch, r.steps) for r in longer] == [(1, steps_per_epoch), (2, 30)]  # the stopped epoch, completed
    _, cfg = load_checkpoint(out)
    assert cfg.training["steps_done"] == 30


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    log = lambda s: None  # noqa: E731
    train(config(tmp_path / "full"), log=log, progress=False)

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "cut"), log=stop_after_first_epoch, progress=False)
    assert json.loads((tmp_path / "cut" / "train_state.json").read_text())["epoch"] == 1
    train(config(tmp_path / "cut", resume=True), log=log, progress=False)
    full, _ = load_checkpoint(tmp_path / "full")
    cut, _ = load_checkpoint(tmp_path / "cut")
    for (name, a), b in zip(full.state_dict().items(), cut.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_refused(tmp_path):
    train(config(tmp_path / "run", epochs=1), log=lambda s: None, progress=False)
    with pytest.raises(UserError, match="settings differ.*lr"):
        Trainer(config(tmp_path / "run", epochs=1, lr=0.5, resume=True), log=lambda s: None)


def test_existing_output_needs_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(UserError, match="--resume"):
        Trainer(config(tmp_path / "run"))
    with pytest.raises(UserError, match="no train_state.json"):
        Trainer(config(tmp_path / "other", resume=True))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "over, match",
    [
        ({"arch": "nope"}, "unknown model 'nope'"),
        ({"arch": "policy_resnet8"}, "not a spiking model"),
        ({"timesteps": 0}, "--timesteps"),
        ({"data": "mnist:/x"}, "mnist"),
        ({"arch": "vgg16", "model_kwargs": {}}, "at least 32x32"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"max_steps": 0}, "--max-steps"),
        ({"train_samples": 0}, "--train-samples"),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, over, match):
    out = tmp_path / "run"
    with pytest.raises(UserError, match=match):
        Trainer(config(out, **over))
    assert not out.exists()


def test_skipped_batches_are_the_head_of_the_same_shuffle():
    # A run resumed inside an epoch skips the batches it already took, in the epoch's own order.
    from seenn_deploy.train.batches import iterate_batches

    data = parse_data_spec("digits").load("test")
    full = list(iterate_batches(data, 64, shuffle=True, seed=5))
    tail = list(iterate_batches(data, 64, shuffle=True, seed=5, skip=3))
    assert len(tail) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_a_run_stopped_inside_an_epoch_resumes_bit_for_bit(tmp_path):
    # Augmentation draws from an RNG and the stop falls mid-epoch: data order, RNG states, momentum and the
    # epoch's running sums must all continue exactly.
    log = lambda s: None  # noqa: E731
    over = dict(epochs=3, max_steps=10, augment=True, train_samples=256)  # 4 steps an epoch
    whole = train(config(tmp_path / "whole", **over), log=log, progress=False)
    Trainer(config(tmp_path / "cut", **over), log=log, progress=False).run(until=6)
    assert json.loads((tmp_path / "cut" / "train_state.json").read_text())["step"] == 6
    resumed = train(config(tmp_path / "cut", resume=True, **over), log=log, progress=False)
    full, _ = load_checkpoint(tmp_path / "whole")
    cut, _ = load_checkpoint(tmp_path / "cut")
    for (name, a), b in zip(full.state_dict().items(), cut.state_dict().values()):
        assert torch.equal(a, b), name
    def figures(records):
        return [(r.epoch, r.loss, r.train_accuracy, r.val_accuracy, r.steps) for r in records]

    assert figures(resumed) == figures(whole)
