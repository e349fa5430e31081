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
from seenn_deploy.runtime.manifest import MAX_TIMESTEPS, Manifest
from seenn_deploy.runtime.schema import parse_json



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
        """Read and check a saved profile; anything corrupt, truncated or inconsistent is a UserError."""
        fix = "delete it and calibrate again"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except Exception as exc:  # the file is untrusted: zip, zlib, npy header and size errors all mean "corrupt"
            raise UserError(f"{path} is not a readable timestep profile ({type(exc).__name__}: "
                            f"{str(exc)[:160]}): {fix}") from None
        return cls._from_arrays(arrays, f"timestep profile {path}", fix)

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], where: str, fix: str) -> "TimestepProfile":
        def bad(problem: str) -> UserError:
            return UserError(f"{where} {problem}: {fix}")

        missing = [n for n in ("meta", "prediction", *(f"score_{m}" for m in METRICS)) if n not in arrays]
        if missing:
            raise bad(f"lacks {', '.join(missing)}")
        meta = arrays["meta"]
        if meta.shape != () or meta.dtype.kind != "U":
            raise bad(f"has meta of shape {list(meta.shape)} {meta.dtype.name}, not one JSON string")
        info = parse_json(str(meta), f"{where} (meta)", fix)
        if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("fingerprint", "data")):
            raise bad("has meta without the strings fingerprint and data")
        prediction = arrays["prediction"]
        if prediction.ndim != 2 or 0 in prediction.shape or prediction.dtype.kind not in "iu":
            raise bad(f"has prediction of shape {list(prediction.shape)} {prediction.dtype.name}, not [T, N] integers "
                      "with T, N >= 1")
        if prediction.shape[0] > MAX_TIMESTEPS:
            raise bad(f"has {prediction.shape[0]} timesteps, more than {MAX_TIMESTEPS}")
        scores = {m: arrays[f"score_{m}"] for m in METRICS}
        for metric, value in scores.items():
            if value.shape != prediction.shape or value.dtype.kind != "f" or not np.isfinite(value).all():
                raise bad(f"has score_{metric} of shape {list(value.shape)} {value.dtype.name}, not finite floats "
                          f"of the prediction's shape {list(prediction.shape)}")
        labels = arrays.get("labels")
        if labels is not None and (labels.shape != prediction.shape[1:] or labels.dtype.kind not in "iu"):
            raise bad(f"has labels of shape {list(labels.shape)} {labels.dtype.name}, not [{prediction.shape[1]}] "
                      "integers (one per sample)")
        return cls(scores, prediction, labels, info["fingerprint"], info["data"])


def profile_bundle(bundle: Path, manifest: Manifest, step: Executor, encoder: Executor | None, x: np.ndarray,
                   labels: np.ndarray | None, data_name: str, batch_size: int = 256,
                   progress: Callable[[int], None] | None = None) -> TimestepProfile:
    """Run every sample T_max steps and record the scores of every metric after each step."""
    trace = run_timesteps(manifest, step, x, encoder=encoder, batch_size=batch_size, progress=progress)
    probs = softmax(accumulate(trace.logits, manifest.exit.accumulate), manifest.exit.temperature)
    scores = {"confidence": trace.confidence.astype(np.float64), "entropy": exit_scores(probs, "entropy")}
    return TimestepProfile(scores, trace.prediction.astype(np.int64), None if labels is None else labels.astype(np.int64),
                           bundle_fingerprint(bundle, manifest), data_name)
