"""The plain timestep loop over a bundle: every sample runs T steps. The reference the scheduler is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, PREDICTION, RESET, X, Manifest

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class StepTrace:
    """Per-step outputs for N samples: logits [T, N, K], confidence [T, N], prediction [T, N]; `extra` by name."""

    logits: np.ndarray
    confidence: np.ndarray
    prediction: np.ndarray
    extra: dict[str, np.ndarray]


def normalise(manifest: Manifest, x: np.ndarray) -> np.ndarray:
    """The bundle's input normalisation, per channel (axis -3), in the bundle's dtype."""
    mean = np.asarray(manifest.input.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(manifest.input.std, np.float32).reshape(-1, 1, 1)
    out = np.subtract(x, mean, dtype=np.float32)  # one new array, then in place: this runs once per sample
    np.divide(out, std, out=out)
    return out.astype(NUMPY_DTYPES[manifest.input.dtype], copy=False)


def check_samples(manifest: Manifest, x: np.ndarray, min_frames: int = 1) -> None:
    """Raw samples x [N, ...]: floats of the bundle's input shape (event data: at least `min_frames`
    frames, more are fine); a UserError names the shape expected."""
    expected = manifest.input.shape
    shape_text = f"[N, {', '.join(map(str, expected))}] ({manifest.input.layout})"
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"samples are {x.dtype.name}; the bundle takes floats in [0, 1] of shape {shape_text} "
                        "(divide uint8 images by 255)")
    event = manifest.input.kind == "event"
    fits = x.ndim == len(expected) + 1 and (
        tuple(x.shape[1:]) == tuple(expected)
        or (event and x.shape[1] >= min_frames and tuple(x.shape[2:]) == tuple(expected[1:]))
    )
    if not fits:
        raise UserError(f"samples of shape {list(x.shape)} do not fit the bundle: it takes {shape_text}")


def run_timesteps(manifest: Manifest, step: Executor, x: np.ndarray, timesteps: int | None = None,
                  encoder: Executor | None = None, batch_size: int = 256, extra_outputs: tuple[str, ...] = (),
                  progress: Callable[[int], None] | None = None) -> StepTrace:
    """Run every sample of x (raw, un-normalised, [N, ...]) for `timesteps` (default T_max) steps."""
    steps = timesteps or manifest.timesteps
    check_samples(manifest, x)
    if manifest.input.kind == "event" and x.shape[1] < steps:
        raise UserError(f"event samples have {x.shape[1]} frames; {steps} timesteps need as many")
    logits, conf, pred = [], [], []
    extra: dict[str, list[np.ndarray]] = {name: [] for name in extra_outputs}
    for start in range(0, len(x), batch_size):
        xb = normalise(manifest, x[start : start + batch_size])
        b = len(xb)
        states = {s.name: np.full((b, *s.shape), s.init, dtype=NUMPY_DTYPES[s.dtype]) for s in manifest.states}
        reset = np.zeros(b, dtype=np.bool_)
        static = encoder.run({X: xb})["encoded"] if encoder is not None else xb
        per_step = {LOGITS: [], CONFIDENCE: [], PREDICTION: [], **{n: [] for n in extra_outputs}}
        for t in range(steps):
            frame = xb[:, t] if manifest.input.kind == "event" else static
            out = step.run({X: frame, RESET: reset, **states})
            states = {s.name: out[s.output] for s in manifest.states}
            for name in per_step:
                per_step[name].append(out[name])
        logits.append(np.stack(per_step[LOGITS]))
        conf.append(np.stack(per_step[CONFIDENCE]))
        pred.append(np.stack(per_step[PREDICTION]))
        for name in extra_outputs:
            extra[name].append(np.stack(per_step[name]))
        if progress is not None:
            progress(b)
    return StepTrace(
        logits=np.concatenate(logits, axis=1), confidence=np.concatenate(conf, axis=1),
        prediction=np.concatenate(pred, axis=1), extra={n: np.concatenate(v, axis=1) for n, v in extra.items()},
    )


def open_bundle_graphs(bundle: Path, manifest: Manifest, providers=None) -> tuple[Executor, Executor | None]:
    """(step, encoder or None) ORT executors for a bundle, checked against its manifest."""
    from seenn_deploy.runtime.bundle import open_executors

    graphs = open_executors(Path(bundle), manifest, "ort", providers)
    if graphs.policy is not None:
        graphs.policy.close()  # the plain step loop never runs it
    return graphs.step, graphs.encoder
