"""Exit scores from accumulated logits, and the paper's averaged exit timesteps.

* confidence: max softmax of the accumulated logits (what the step graph outputs);
* entropy: 1 - H(p) / log K, the reference code's alternative (1 for a one-hot p, 0 for uniform).

AET (SEENN eq. 4) is the oracle lower bound computed from the accuracy curve a_t of the fixed-T
points: sum_t t (a_t - a_{t-1}) + T (1 - a_T). Empirical AET (eq. 13) follows each sample: the
first t at which it is correct, T when it never is. For one sample with correctness
{F, T, F, T} over T = 4: AET = 2 - 3 + 4 = 3, empirical AET = 2.
"""

from __future__ import annotations

import numpy as np

METRICS = ("confidence", "entropy")


def accumulate(logits: np.ndarray, how: str = "mean") -> np.ndarray:
    """Per-step logits [T, N, K] -> accumulated logits after each step [T, N, K] (float64)."""
    total = np.cumsum(logits.astype(np.float64), axis=0)
    if how == "sum":
        return total
    return total / np.arange(1, len(logits) + 1).reshape(-1, 1, 1)


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def exit_scores(probs: np.ndarray, metric: str) -> np.ndarray:
    """[..., K] probabilities -> [...] scores in [0, 1]: higher means more certain."""
    if metric == "confidence":
        return probs.max(axis=-1)
    k = probs.shape[-1]
    entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=-1)
    return 1.0 - entropy / np.log(k)


def aet(correct: np.ndarray) -> float:
    """SEENN eq. 4 from correctness [T, N]: the oracle average exit timestep from the accuracy curve."""
    steps = correct.shape[0]
    acc = correct.mean(axis=1)
    gains = np.diff(np.concatenate([[0.0], acc]))
    return float((np.arange(1, steps + 1) * gains).sum() + steps * (1.0 - acc[-1]))


def empirical_aet(correct: np.ndarray) -> float:
    """SEENN eq. 13 from correctness [T, N]: mean over samples of the first correct t (T if never)."""
    steps = correct.shape[0]
    first = np.where(correct.any(axis=0), correct.argmax(axis=0) + 1, steps)
    return float(first.mean())
