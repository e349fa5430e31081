"""`train`, `evaluate` and `models` as a new user drives them: quick runs, quiet runs, the held-out slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seenn_deploy.data.cache import cache_dir

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def images(tmp_path) -> Path:
    """imgs/train/{dark,light}/*.png: 12 learnable 8x8 RGB images per class."""
    root = tmp_path / "imgs"
    for cls, base in (("dark", 20), ("light", 200)):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (base + i, base, base - i)).save(root / "train" / cls / f"{i}.png")
    return root


def train_args(data: str, out: Path, *more) -> list:
    return ["train", "--arch", "spiking_cnn", "--data", data, "-T", "2", "--epochs", "2", "--batch-size", "4",
            "--out", out, *more]


def test_quiet_silences_every_bar_and_cache_dir_moves_the_cache(run_cli, images, tmp_path, monkeypatch):
    monkeypatch.setenv("SEENN_DEPLOY_CACHE", str(tmp_path / "env-cache"))
    result = run_cli("--cache-dir", tmp_path / "mine", *train_args(f"imagefolder:{images}", tmp_path / "run",
                                                                   "--quiet", "--max-steps", "3"))
    assert result.code == 0, result.err
    assert result.err == ""  # no decode, train or validation bar, no cache note
    assert "stopped at step 3" in result.out
    assert len(list((tmp_path / "mine").rglob("*.npy"))) == 1 and not (tmp_path / "env-cache").exists()
    assert cache_dir() == tmp_path / "env-cache"  # the option lasts for its command only

    loud = run_cli(*train_args(f"imagefolder:{images}", tmp_path / "loud", "--max-steps", "3"))
    assert loud.code == 0, loud.err
    for phase in ("decoding", "epoch 1/2", "validating", "caching 24 decoded images"):
        assert phase in loud.err, phase
    assert str(tmp_path / "env-cache") in loud.err  # the note says where the cache is


def test_evaluate_split_val_finds_the_rows_training_held_out(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*train_args("digits", out, "--quiet", "--max-steps", "4", "--val-fraction", "0.2")).code == 0
    config = json.loads((out / "config.json").read_text())
    report = tmp_path / "val.json"
    result = run_cli("evaluate", out, "--split", "val", "--quiet", "--json", report)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["split"] == "val" and data["samples"] == 287 == config["metrics"]["validation"]["samples"]
    assert data["accuracy_per_timestep"] == config["metrics"]["validation"]["accuracy_per_timestep"]
    assert "digits (validation slice, 20% of train, seed 0)" in result.out
    assert run_cli("evaluate", out, "--quiet").out.startswith("spiking_cnn on digits (test), 360 samples")


def test_evaluate_split_val_without_a_slice_says_what_to_do(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*train_args("digits", out, "--quiet", "--max-steps", "1", "--val-fraction", "0")).code == 0
    assert "--val-fraction" in run_cli("evaluate", out, "--split", "val").error()


def test_evaluate_refuses_labels_the_model_does_not_have(run_cli, tmp_path):
    import numpy as np

    out = tmp_path / "run"
    assert run_cli(*train_args("digits", out, "--quiet", "--max-steps", "1")).code == 0
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 10, 11]))
    assert "label 11" in run_cli("evaluate", out, "--data", f"npz:{tmp_path / 'd.npz'}", "--split", "all").error()


def test_models_lists_sizes_and_parameters_without_torch():
    blocker = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'tqdm', 'PIL', 'safetensors'):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from seenn_deploy.cli import main\n"
        "main(['models'])\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("spiking_cnn"))
    assert "C any, H,W >= 4" in line and "1x28x28: 0.21 M" in line and "3x32x32: 0.27 M" in line
    assert "vgg16" in result.stdout and "H,W >= 32" in result.stdout
