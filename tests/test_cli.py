"""The command line: help, models, train + evaluate, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from seenn_deploy.snn.zoo import list_models


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "seenn_deploy.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_and_models():
    assert cli("--help").returncode == 0
    out = cli("models").stdout
    for entry in list_models():
        assert entry.name in out


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    result = cli("train", "--arch", "spiking_cnn", "--data", "digits", "-T", "2", "--epochs", "1", "--quiet",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stdout
    return out


def test_evaluate_prints_and_writes_per_timestep_accuracy(digits_checkpoint, tmp_path):
    report = tmp_path / "eval.json"
    result = cli("evaluate", digits_checkpoint, "--data", "digits", "-T", "3", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["samples"] == 360 and len(data["accuracy_per_timestep"]) == 3
    assert f"T=3: {100 * data['accuracy_per_timestep'][2]:.2f}%" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--arch", "resnet99", "--data", "digits"], ["unknown model 'resnet99'", "spiking_cnn"]),
        (["--arch", "spiking_cnn", "--data", "mnist:x"], ["mnist"]),
        (["--arch", "spiking_cnn", "--data", "npz:/no/such/file.npz"], ["/no/such/file.npz"]),
    ],
)
def test_train_bad_input(tmp_path, args, fragments):
    out = tmp_path / "run"
    result = cli("train", *args, "-T", "2", "--epochs", "1", "--out", out)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_evaluate_on_images_of_another_size(digits_checkpoint, tmp_path):
    import numpy as np

    np.savez(tmp_path / "big.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.uint8))
    result = cli("evaluate", digits_checkpoint, "--data", f"npz:{tmp_path / 'big.npz'}")
    assert_one_line_error(result, "28", "8x8")


def test_evaluate_corrupt_checkpoint(digits_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits_checkpoint, broken)
    (broken / "weights.safetensors").write_bytes(b"\x00" * 16)
    assert_one_line_error(cli("evaluate", broken, "--data", "digits"), "corrupt")
    assert_one_line_error(cli("evaluate", tmp_path / "missing", "--data", "digits"), "does not exist")
