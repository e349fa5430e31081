"""Training on the bundled digits: learns, checkpoints, resumes exactly, refuses bad settings."""

import json

import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.checkpoint import load_checkpoint
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
    assert cfg.metrics["val_accuracy_per_timestep"] == acc
    assert cfg.timesteps == 2 and cfg.classes == [str(i) for i in range(10)]
    assert cfg.model["image_size"] == [8, 8] and cfg.model["in_channels"] == 1


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
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, over, match):
    out = tmp_path / "run"
    with pytest.raises(UserError, match=match):
        Trainer(config(out, **over))
    assert not out.exists()
