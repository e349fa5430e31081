"""Where SEENN-II policies live in a checkpoint directory.

    CHECKPOINT/
      config.json             `policy`: the installed policy (arch, model, candidates, reward, metrics)
      policy.safetensors      its weights: what export puts in policy.onnx
      policies/beta-B/        one training run per beta: train_state.* (to resume) and run.json

A run trains a policy; installing it makes it the checkpoint's policy. A beta sweep keeps every
run and installs none, so the user picks beta from the table, as they pick alpha.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from seenn_deploy.files import read_json_object, write_atomic, write_json_atomic
from seenn_deploy.lazy import require
from seenn_deploy.snn.checkpoint import CONFIG_FILE, POLICY_WEIGHTS_FILE, CheckpointConfig, save_checkpoint

RUNS_DIR = "policies"
RUN_RECORD = "run.json"


def run_folder(checkpoint: Path, beta: float) -> Path:
    """The folder of the policy run for `beta` inside a checkpoint directory."""
    return Path(checkpoint) / RUNS_DIR / f"beta-{beta:g}"


def read_run_record(folder: Path) -> dict[str, Any]:
    return read_json_object(Path(folder) / RUN_RECORD, "the policy run is corrupt; delete its folder and train anew")


def write_run_record(folder: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / RUN_RECORD, record)


def install_policy(directory: Path, config: CheckpointConfig, policy: nn.Module, snn: nn.Module | None = None) -> None:
    """Make `policy` (described by config.policy) the checkpoint's policy: weights first, then config.json.

    snn None: the directory already holds the SNN weights config describes, and they are left as
    they are (rewriting them would change nothing but could break a running `train --resume`);
    otherwise the whole checkpoint is written (a fine-tuned SNN goes to a new directory).
    """
    if snn is not None:
        save_checkpoint(Path(directory), snn, config, policy)
        return
    st = require("safetensors.torch", "checkpoints")
    tensors = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    write_atomic(Path(directory) / POLICY_WEIGHTS_FILE, lambda tmp: st.save_file(tensors, str(tmp)))
    write_json_atomic(Path(directory) / CONFIG_FILE, config.to_dict())
