"""Timestep profiles: per sample and timestep, the exit scores, the prediction and the label.

Made once by running every sample for T_max steps through the runtime, stored in the bundle's
calib/ folder, and tied to the bundle by a fingerprint of its step graph and exit settings so a
profile from another bundle is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.calib.metrics import METRICS, accumulate, exit_scores, softmax
from seenn_deploy.errors import UserError
from seenn_deploy.files import write_atomic
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.loop import run_timesteps
from seenn_deploy.runtime.manifest import Manifest

PROFILE_FILE = "profile.npz"


def bundle_fingerprint(bundle: Path, manifest: Manifest) -> str:
    """sha256 of the step graph's bytes and the exit head settings: what a profile depends on."""
    digest = hashlib.sha256()
    digest.update((Path(bundle) / manifest.graphs["step"]).read_bytes())
    digest.update(json.dumps([manifest.exit.accumulate, manifest.exit.temperature, manifest.timesteps]).encode())
    return digest.hexdigest()


@dataclass
class TimestepProfile:
    """scores[metric]: [T, N]; prediction [T, N]; labels [N] or None; data: where the samples came from."""

    scores: dict[str, np.ndarray]
    prediction: np.ndarray
    labels: np.ndarray | None
    fingerprint: str
    data: str

    @property
    def timesteps(self) -> int:
        return self.prediction.shape[0]

    @property
    def samples(self) -> int:
        return self.prediction.shape[1]

    def correct(self) -> np.ndarray:
        if self.labels is None:
            raise UserError(f"the profile of {self.data} has no labels: accuracy targets need labelled data")
        return self.prediction == self.labels[None, :]

    def save(self, path: Path) -> None:
        arrays = {f"score_{k}": v for k, v in self.scores.items()}
        arrays["prediction"] = self.prediction
        if self.labels is not None:
            arrays["labels"] = self.labels
        meta = json.dumps({"fingerprint": self.fingerprint, "data": self.data})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, meta=np.array(meta), **arrays)

        write_atomic(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> "TimestepProfile":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                scores = {m: z[f"score_{m}"] for m in METRICS if f"score_{m}" in z}
                return cls(scores, z["prediction"], z["labels"] if "labels" in z else None,
                           meta["fingerprint"], meta["data"])
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path} is not a readable timestep profile ({exc}): delete it and calibrate again") from None

    def check_bundle(self, fingerprint: str, where: Path) -> None:
        if fingerprint != self.fingerprint:
            raise UserError(f"profile {where} was made for another bundle (or before a re-export): "
                            "run calibrate with --data to profile this bundle")


def profile_bundle(bundle: Path, manifest: Manifest, step: Executor, encoder: Executor | None, x: np.ndarray,
                   labels: np.ndarray | None, data_name: str, batch_size: int = 256,
                   progress: Callable[[int], None] | None = None) -> TimestepProfile:
    """Run every sample T_max steps and record the scores of every metric after each step."""
    trace = run_timesteps(manifest, step, x, encoder=encoder, batch_size=batch_size, progress=progress)
    probs = softmax(accumulate(trace.logits, manifest.exit.accumulate), manifest.exit.temperature)
    scores = {"confidence": trace.confidence.astype(np.float64), "entropy": exit_scores(probs, "entropy")}
    return TimestepProfile(scores, trace.prediction.astype(np.int64), None if labels is None else labels.astype(np.int64),
                           bundle_fingerprint(bundle, manifest), data_name)
