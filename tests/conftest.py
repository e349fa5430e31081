"""Shared fixtures: a spiking CNN trained briefly on the bundled digits, and its exported bundle."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    from seenn_deploy.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("digits") / "ckpt"
    train(TrainConfig(arch="spiking_cnn", data="digits", timesteps=4, epochs=10, out=out, batch_size=64),
          log=lambda s: None, progress=False)
    return out


@pytest.fixture(scope="session")
def digits_bundle(digits_checkpoint, tmp_path_factory):
    from seenn_deploy.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "digits.seenn"
    export_checkpoint(digits_checkpoint, out)
    return out
