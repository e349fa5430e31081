"""Where SEENN-II policies live in a checkpoint directory.

    CHECKPOINT/
      config.json             `policy`: the installed policy (arch, model, candidates, reward, metrics)
      policy.safetensors      its weights: what export puts in policy.onnx
      policies/beta-B/        one training run per beta: train_state.* (to resume) and run.json
      policies/snn_logits_*.npz   the frozen SNN's outputs on the fit, validation and test rows (cached_logits)
      policies/report.json, front.png   every beta beside SEENN-I (train-policy's report)

A run trains a policy; installing it makes it the checkpoint's policy. A beta sweep keeps every
run and installs none, so the user picks beta from the table, as they pick alpha.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.files import read_json_object, write_atomic, write_json_atomic
from seenn_deploy.lazy import require
from seenn_deploy.snn.checkpoint import CONFIG_FILE, CheckpointConfig, save_checkpoint, save_policy_weights

RUNS_DIR = "policies"
RUN_RECORD = "run.json"
LOGITS_FILE = "snn_logits"


def run_folder(checkpoint: Path, beta: float) -> Path:
    """The folder of the policy run for `beta` inside a checkpoint directory."""
    return Path(checkpoint) / RUNS_DIR / f"beta-{beta:g}"


def read_run_record(folder: Path) -> dict[str, Any]:
    return read_json_object(Path(folder) / RUN_RECORD, "the policy run is corrupt; delete its folder and train anew")


def write_run_record(folder: Path, record: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / RUN_RECORD, record)


def install_policy(directory: Path, config: CheckpointConfig, policy: nn.Module, snn: nn.Module | None = None) -> None:
    """Make `policy` (described by config.policy) the checkpoint's policy: weights first, then config.json, which
    records their sha256 (a pair cut apart by a crash is refused when loaded, see save_policy_weights).

    snn None: the directory already holds the SNN weights config describes, and they are left as
    they are (rewriting them would change nothing but could break a running `train --resume`);
    otherwise the whole checkpoint is written (a fine-tuned SNN goes to a new directory).
    """
    if snn is not None:
        save_checkpoint(Path(directory), snn, config, policy)
        return
    write_json_atomic(Path(directory) / CONFIG_FILE, save_policy_weights(Path(directory), config, policy).to_dict())


def trained_runs(checkpoint: Path) -> list[Path]:
    """The run folders in a checkpoint directory that finished every planned epoch, by ascending beta."""
    found = []
    for folder in sorted((Path(checkpoint) / RUNS_DIR).glob("beta-*")):
        if not (folder / RUN_RECORD).is_file():
            continue
        record = read_run_record(folder)
        spec = record.get("policy") or {}
        training = spec.get("training", {})
        planned = int(training.get("epochs", 0)) + int(training.get("joint_epochs", 0))
        if planned and len(record.get("validation", [])) >= planned:
            found.append((float(spec.get("beta", 0.0)), folder))
    return [folder for _, folder in sorted(found)]


def load_run_policy(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The policy network a run folder holds (its last saved epoch) and its config.policy entry."""
    from seenn_deploy.snn.zoo import create_model
    from seenn_deploy.train.train_state import STATE_WEIGHTS

    spec = read_run_record(folder).get("policy")
    if not isinstance(spec, dict) or "arch" not in spec:
        raise UserError(f"{Path(folder) / RUN_RECORD} names no policy: the run is corrupt; delete its folder")
    policy = create_model(spec["arch"], **spec.get("model", {}))
    st = require("safetensors.torch", "checkpoints")
    prefix = "model.policy."
    try:
        tensors = st.load_file(str(Path(folder) / STATE_WEIGHTS))
        policy.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except Exception as exc:  # safetensors and state-dict errors alike mean a broken run
        raise UserError(f"{Path(folder) / STATE_WEIGHTS} is unreadable ({exc})".splitlines()[0]
                        + ": delete the run's folder and train it again") from None
    return policy.eval(), spec


def cached_logits(checkpoint: Path, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The frozen SNN's per-step logits on one set of rows, from CHECKPOINT/policies/snn_logits_<split>.npz when
    it was made for the same `key` (split, SNN weights' sha256, rows' name, count and content sha256, timesteps),
    else `compute()`, stored.

    The SNN is frozen while policies train, so one pass over the rows serves every beta, a later
    --resume and the report; the key keeps a fine-tuned SNN or other rows (a data file rewritten under
    the same name included) from reading stale answers."""
    path = Path(checkpoint) / RUNS_DIR / f"{LOGITS_FILE}_{key['split']}.npz"
    stamp = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == stamp:
                    return z["logits"]
        except Exception:  # a cache that does not read is made again
            pass
    logits = compute()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(stamp), logits=logits)

    write_atomic(path, write)
    return logits
