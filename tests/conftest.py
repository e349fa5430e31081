"""Shared fixtures: a spiking CNN trained briefly on the bundled digits, its exported bundle, and the CLI in-process."""

import sys
from dataclasses import dataclass
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
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "digits.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(encoder_split="on"))  # the layout with every graph
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def error(self) -> str:
        """The CLI's one-line user error (exit code 2), checked."""
        lines = self.err.strip().splitlines()
        assert self.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (self.code, self.err)
        return lines[0]


@pytest.fixture(scope="module")
def policy_bundle(digits_checkpoint, tmp_path_factory):
    """(checkpoint, bundle): a copy of the digits checkpoint with a SEENN-II policy over candidates [1, 2, 4] that
    `train-policy`'s trainer fit to answer candidate (label mod 3), so it sends samples to every candidate, and its
    export. Module scope: a test module may rewrite the bundle (calibrate does) without touching another's."""
    import shutil

    import numpy as np

    from seenn_deploy.export.exporter import export_checkpoint
    from seenn_deploy.snn.checkpoint import read_config
    from seenn_deploy.train.policy_trainer import PolicyConfig, PolicyData, PolicyTrainer, training_rows

    candidates = [1, 2, 4]
    checkpoint = shutil.copytree(digits_checkpoint, tmp_path_factory.mktemp("policy") / "ckpt")
    fit, val = training_rows(read_config(checkpoint), checkpoint, "digits")

    def answers(labels: np.ndarray) -> np.ndarray:
        return np.arange(len(candidates))[None, :] >= (labels % 3)[:, None]

    config = PolicyConfig(checkpoint, "digits", beta=1.0, candidates=candidates, epochs=3, width=8)
    PolicyTrainer(config, log=lambda s: None, progress=False,
                  data=PolicyData(fit, val, answers(fit.y), answers(val.y))).run()
    bundle = checkpoint.parent / "policy.seenn"
    export_checkpoint(checkpoint, bundle)
    return checkpoint, bundle


@pytest.fixture
def run_cli(capsys):
    """`seenn-deploy ARGS` in this process, through `seenn_deploy.cli.main`, as a CliResult."""
    from seenn_deploy.cli import main

    def run(*args) -> CliResult:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def no_tensorrt(monkeypatch):
    """As if tensorrt and cuda-python were not installed, also where they are."""
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
