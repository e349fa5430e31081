"""Checkpoints: a directory with `weights.safetensors` and `config.json`.

config.json records everything later stages need to rebuild and feed the model the same way:
arch and its kwargs (neurons included), timesteps, input normalisation, class names, metrics, and
the validation slice training held out (so calibration chooses on rows the model never fit).
Pickle weights (`.pt` / `.pth`) load only when the caller allows it, with `weights_only=True`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seenn_deploy.data.validation import ValidationSlice
from seenn_deploy.errors import UserError
from seenn_deploy.files import file_sha256, read_json_object, write_atomic, write_json_atomic
from seenn_deploy.lazy import require

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
POLICY_WEIGHTS_FILE = "policy.safetensors"
FORMAT = "seenn-deploy.checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth")


@dataclass
class CheckpointConfig:
    """What config.json holds. `model` are the create_model kwargs (JSON values only)."""

    arch: str
    model: dict[str, Any]
    timesteps: int
    normalisation: dict[str, Any]
    classes: list[str]
    data: str = ""
    input_kind: str = "static"  # "static" images (direct encoding) or "event" frames, one per timestep
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # SEENN-II: {"arch": ..., "model": {...create_model kwargs}, "candidates": [T_1, ...]}; weights in policy.safetensors
    policy: dict[str, Any] | None = None
    # The slice of the train split held out by training (seenn_deploy.data.ValidationSlice.to_dict()); None: none
    validation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> "CheckpointConfig":
        if data.get("format") != FORMAT:
            raise UserError(f"{source} is not a seenn-deploy checkpoint config (format {data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{source} has checkpoint format version {data.get('version')}; this seenn-deploy reads "
                f"version {FORMAT_VERSION}: upgrade seenn-deploy"
            )
        required = ("arch", "model", "timesteps", "normalisation", "classes")
        missing = [k for k in required if k not in data]
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}: re-save the checkpoint with seenn-deploy")
        keys = {"arch", "model", "timesteps", "normalisation", "classes", "data", "input_kind", "metrics", "training",
                "policy", "validation"}
        config = cls(**{k: v for k, v in data.items() if k in keys})
        config.validation_slice(source)  # a broken record fails here, not in a later command
        return config

    def validation_slice(self, source: Path | str = "config.json") -> ValidationSlice | None:
        """The held-out slice training recorded, or None; `source` names the config in errors."""
        return None if self.validation is None else ValidationSlice.from_dict(self.validation, str(source))

    def build_model(self) -> nn.Module:
        from seenn_deploy.snn.zoo import create_model

        return create_model(self.arch, **self.model)


def _save_weights(path: Path, module: nn.Module) -> None:
    st = require("safetensors.torch", "checkpoints")
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    write_atomic(path, lambda tmp: st.save_file(tensors, str(tmp)))


def save_checkpoint(directory: Path, model: nn.Module, config: CheckpointConfig, policy: nn.Module | None = None) -> None:
    """Write weights (and the SEENN-II policy's) then config, each atomically, into an existing directory."""
    directory = Path(directory)
    if (policy is None) != (config.policy is None):
        raise UserError("a policy network and config.policy go together: give both or neither")
    _save_weights(directory / WEIGHTS_FILE, model)
    if policy is not None:
        config = save_policy_weights(directory, config, policy)
    write_json_atomic(directory / CONFIG_FILE, config.to_dict())


def save_policy_weights(directory: Path, config: CheckpointConfig, policy: nn.Module) -> CheckpointConfig:
    """Write the policy's weights atomically; the config to write next, its policy entry holding their sha256.

    config.json is written after the weights, so an install cut short between the two leaves a
    config whose sha256 the new weights do not match: load_policy refuses that pair (naming the
    fix) instead of running weights that config.json does not describe."""
    path = Path(directory) / POLICY_WEIGHTS_FILE
    _save_weights(path, policy)
    return replace(config, policy={**config.policy, "weights_sha256": file_sha256(path)})


def read_config(path: Path) -> CheckpointConfig:
    path = Path(path)
    config_path = path / CONFIG_FILE if path.is_dir() else path.with_name(CONFIG_FILE)
    if not config_path.is_file():
        raise UserError(
            f"no {CONFIG_FILE} beside {path}: a checkpoint is a directory made by `seenn-deploy train` "
            f"(or, for .pt/.pth weights, a {CONFIG_FILE} in the same folder)"
        )
    data = read_json_object(config_path, "the checkpoint is corrupt; retrain or restore it")
    return CheckpointConfig.from_dict(data, config_path)


def _weights_path(path: Path) -> Path:
    if path.is_dir():
        return path / WEIGHTS_FILE
    return path


def read_weights(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: the checkpoint is incomplete")
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(
                f"{path} is a pickle file, which can run code when loaded: pass --allow-pickle if you trust it "
                "(it is then read with torch.load(weights_only=True))"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
            raise UserError(f"cannot read {path} with weights_only=True: {exc}".splitlines()[0]) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
        return state
    st = require("safetensors.torch", "checkpoints")
    try:
        return st.load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise UserError(f"{path} is not a readable safetensors file ({exc}): the checkpoint is corrupt") from None


def _load_into(model: nn.Module, state: dict, path: Path, arch: str, kwargs: dict) -> nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"weights in {path} do not fit arch {arch!r} with {kwargs}: {first}; "
            "check that config.json belongs to these weights"
        ) from None
    return model.eval()


def load_checkpoint(path: Path, allow_pickle: bool = False) -> tuple[nn.Module, CheckpointConfig]:
    """Rebuild the model from config.json and load its weights; eval mode. Path: the directory or a weights file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    config = read_config(path)
    state = read_weights(_weights_path(path), allow_pickle)
    return _load_into(config.build_model(), state, path, config.arch, config.model), config


def load_policy(path: Path, config: CheckpointConfig) -> tuple[nn.Module, list[int]] | None:
    """The SEENN-II policy network of a checkpoint directory and its timestep candidates, or None."""
    if config.policy is None:
        return None
    from seenn_deploy.snn.zoo import create_model

    spec = config.policy
    candidates = [int(c) for c in spec.get("candidates", [])]
    if not candidates or any(c < 1 or c > config.timesteps for c in candidates):
        raise UserError(f"config.policy candidates {candidates} must be timesteps in 1..{config.timesteps}")
    weights = Path(path) / POLICY_WEIGHTS_FILE
    expected = spec.get("weights_sha256")  # absent in checkpoints written before it was recorded
    if expected is not None and weights.is_file() and file_sha256(weights) != expected:
        raise UserError(f"{weights} is not the policy {Path(path) / CONFIG_FILE} describes (an install was cut "
                        f"short): install it again with `seenn-deploy train-policy {path} --data ... --beta "
                        f"{spec.get('beta', 'B')} --resume` and that run's settings")
    policy = create_model(spec["arch"], **spec.get("model", {}))
    if getattr(policy, "num_classes", len(candidates)) != len(candidates):
        raise UserError(f"the policy scores {policy.num_classes} candidates but config.policy lists {len(candidates)}")
    return _load_into(policy, read_weights(weights, False), weights, spec["arch"], spec.get("model", {})), candidates

