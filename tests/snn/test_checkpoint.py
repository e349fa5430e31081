"""Checkpoint round trip and every way a checkpoint can be wrong."""

import json
import pickle

import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.checkpoint import CheckpointConfig, load_checkpoint, save_checkpoint
from seenn_deploy.snn.zoo import create_model

KWARGS = {"num_classes": 3, "in_channels": 1, "image_size": [8, 8], "channels": [4, 8], "hidden": 16}


def make_config(**over):
    base = dict(arch="spiking_cnn", model=KWARGS, timesteps=2, classes=["a", "b", "c"],
                normalisation={"mean": [0.5], "std": [0.25]})
    return CheckpointConfig(**{**base, **over})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("spiking_cnn", **KWARGS)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    save_checkpoint(tmp_path, model, make_config(metrics={"acc": 0.5}))
    return tmp_path, model


def test_round_trip_gives_the_same_model_and_config(saved):
    path, model = saved
    loaded, config = load_checkpoint(path)
    x = torch.randn(5, 1, 8, 8) * 3
    assert torch.equal(loaded(x, timesteps=3), model(x, timesteps=3))
    assert config == make_config(metrics={"acc": 0.5})
    assert not loaded.training


def test_missing_config_is_refused(tmp_path, saved):
    path, _ = saved
    (path / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        load_checkpoint(path)


def test_corrupt_config_is_refused(saved):
    path, _ = saved
    (path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_checkpoint(path)


def test_config_of_another_tool_is_refused(saved):
    path, _ = saved
    (path / "config.json").write_text(json.dumps({"arch": "x"}))
    with pytest.raises(UserError, match="not a seenn-deploy checkpoint"):
        load_checkpoint(path)


def test_truncated_weights_are_refused(saved):
    path, _ = saved
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_weights_of_another_arch_are_refused(saved):
    path, _ = saved
    data = json.loads((path / "config.json").read_text())
    data["model"]["hidden"] = 32
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="do not fit arch 'spiking_cnn'"):
        load_checkpoint(path)


def test_pickle_weights_need_the_flag_and_load_weights_only(saved):
    path, model = saved
    pt = path / "weights.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(UserError, match="--allow-pickle"):
        load_checkpoint(pt)
    loaded, _ = load_checkpoint(pt, allow_pickle=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x, timesteps=2), model(x, timesteps=2))


class RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused_even_with_the_flag(tmp_path, saved, capsys):
    path, _ = saved
    pt = path / "evil.pth"
    pt.write_bytes(pickle.dumps({"w": RunsCode()}))
    with pytest.raises(UserError, match="weights_only=True"):
        load_checkpoint(pt, allow_pickle=True)
    assert "must never run" not in capsys.readouterr().out


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_validation_record_round_trips_and_a_broken_one_is_refused(tmp_path):
    torch.manual_seed(0)
    model = create_model("spiking_cnn", **KWARGS)
    record = {"data": "digits", "fraction": 0.1, "seed": 0, "method": "splitmix64-rank", "train_rows": 1437}
    save_checkpoint(tmp_path, model, make_config(validation=record))
    _, config = load_checkpoint(tmp_path)
    assert config.validation == record and config.validation_slice().train_rows == 1437
    data = json.loads((tmp_path / "config.json").read_text())
    data["validation"]["fraction"] = 2
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"config.json: validation fraction 2 is not in \(0, 1\)"):
        load_checkpoint(tmp_path)
