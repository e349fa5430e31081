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
