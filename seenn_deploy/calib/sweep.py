"""The exact threshold sweep: accuracy and average timesteps for every distinct (alpha, T_cap), from a profile.

A sample exits at the first t whose score is strictly above alpha, T_cap at the latest. With
M[t] the running max of its scores, its exit time changes only where alpha crosses an M[t] at
which M rises, so those values are all the thresholds there are. Sorting them once and summing
the changes in exit time and correctness gives every operating point of one cap in
O(NT log NT); `sweep_capped` repeats that for T_cap = 1..T_max. At each cap the highest alpha
is Fixed(T_cap) (no sample exits early), so the capped family holds every Fixed-T point and
plain SEENN-I (T_cap = T_max): its Pareto front is at or above both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SweepPoint:
    """alpha: the smallest threshold with this outcome (it holds on [alpha, next higher alpha)) at cap t_cap.

    A point with avg_timesteps == t_cap has no early exits: it is Fixed(t_cap); one with alpha -inf
    exits every sample at t = 1 (every score is > 0): it is Fixed(1).
    """

    alpha: float
    accuracy: float
    avg_timesteps: float
    t_cap: int

    @property
    def fixed_steps(self) -> int | None:
        """T when the point is Fixed(T), else None."""
        if self.avg_timesteps >= self.t_cap:
            return self.t_cap
        return 1 if np.isneginf(self.alpha) else None

    def spelling(self, t_max: int | None = None) -> str:
        """The runtime's --exit for this point (no cap written at T_max)."""
        if self.fixed_steps is not None:
            return f"fixed:{self.fixed_steps}"
        return f"confidence:{self.alpha:.6g}" + ("" if self.t_cap == t_max else f"@{self.t_cap}")


@dataclass
class Sweep:
    """Operating points [P]: ascending alpha within each cap."""

    alphas: np.ndarray
    accuracy: np.ndarray
    avg_timesteps: np.ndarray
    caps: np.ndarray

    def point(self, i: int) -> SweepPoint:
        return SweepPoint(float(self.alphas[i]), float(self.accuracy[i]), float(self.avg_timesteps[i]), int(self.caps[i]))

    def pareto(self) -> list[SweepPoint]:
        """Points no other point beats on both accuracy (higher) and average timesteps (lower).

        Between points with the same outcome the one with the larger cap stands (plain SEENN-I
        where the cap buys nothing).
        """
        order = np.lexsort((-self.caps, -self.accuracy, self.avg_timesteps))
        front, best = [], -np.inf
        for i in order:
            if self.accuracy[i] > best:
                front.append(self.point(int(i)))
                best = self.accuracy[i]
        return front

    def to_dict(self) -> dict:
        return {"alpha": self.alphas.tolist(), "accuracy": self.accuracy.tolist(),
                "avg_timesteps": self.avg_timesteps.tolist(), "t_cap": self.caps.tolist()}


def exit_times(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Exit timestep (1-based) of each sample for one alpha: first t with score > alpha, else T. scores [T, N]."""
    steps = scores.shape[0]
    if steps == 1:
        return np.ones(scores.shape[1], dtype=np.int64)
    above = scores[:-1] > alpha
    return np.where(above.any(axis=0), above.argmax(axis=0) + 1, steps)


def evaluate_alpha(scores: np.ndarray, correct: np.ndarray, alpha: float, t_cap: int | None = None) -> SweepPoint:
    """Accuracy and average timesteps at one (alpha, T_cap) (the direct, per-sample computation)."""
    cap = scores.shape[0] if t_cap is None else t_cap
    t = exit_times(scores[:cap], alpha)
    cols = np.arange(scores.shape[1])
    return SweepPoint(float(alpha), float(correct[t - 1, cols].mean()), float(t.mean()), cap)


def sweep_capped(scores: np.ndarray, correct: np.ndarray) -> Sweep:
    """Every operating point of the capped threshold exit, T_cap = 1..T. scores, correct: [T, N]."""
    parts = [sweep(scores[:cap], correct[:cap]) for cap in range(1, scores.shape[0] + 1)]
    return Sweep(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("alphas", "accuracy", "avg_timesteps", "caps")))


def sweep(scores: np.ndarray, correct: np.ndarray) -> Sweep:
    """Every operating point of threshold exit with T_cap = T. scores, correct: [T, N] (after step t)."""
    steps, n = scores.shape
    if steps == 1:  # one step: every alpha exits there
        return Sweep(np.array([-np.inf]), np.array([float(correct[0].mean())]), np.array([1.0]), np.array([1]))
    running = np.maximum.accumulate(scores[:-1].astype(np.float64), axis=0)  # [T-1, N]
    previous = np.vstack([np.full((1, n), -np.inf), running[:-1]])
    rises = running > previous  # where alpha just below M[t] moves the exit to t+1
    t_idx, s_idx = np.nonzero(rises)
    values = running[t_idx, s_idx]
    # For each event, the exit time it replaces: the sample's next rise (later t), else T.
    order = np.lexsort((-t_idx, s_idx))  # per sample, descending t
    t_sorted, s_sorted = t_idx[order], s_idx[order]
    prev_exit = np.full(len(order), steps - 1)  # 0-based index of the exit step being replaced
    same = np.concatenate([[False], s_sorted[1:] == s_sorted[:-1]])
    prev_exit[same] = t_sorted[np.flatnonzero(same) - 1]
    d_steps = np.empty(len(order))
    d_correct = np.empty(len(order))
    d_steps[order] = t_sorted - prev_exit
    d_correct[order] = correct[t_sorted, s_sorted].astype(np.float64) - correct[prev_exit, s_sorted]
    # Lower alpha through the events from the highest value down.
    by_value = np.argsort(-values, kind="stable")
    v = values[by_value]
    total_steps = steps * n + np.cumsum(d_steps[by_value])
    total_correct = correct[-1].sum() + np.cumsum(d_correct[by_value])
    last_of_group = np.concatenate([v[1:] != v[:-1], [True]])
    group_values = v[last_of_group]
    # After the group at value g, the outcome holds for alpha in [next lower value, g).
    lower = np.concatenate([group_values[1:], [-np.inf]])
    alphas = np.concatenate([[group_values[0] if len(group_values) else np.inf], lower])
    accuracy = np.concatenate([[correct[-1].mean()], total_correct[last_of_group] / n])
    avg = np.concatenate([[float(steps)], total_steps[last_of_group] / n])
    asc = np.argsort(alphas, kind="stable")
    return Sweep(alphas[asc], accuracy[asc], avg[asc], np.full(len(asc), steps))


def fixed_points(correct: np.ndarray) -> list[dict]:
    """Accuracy of Fixed(T) for T = 1..T_max."""
    return [{"timesteps": t + 1, "accuracy": float(a)} for t, a in enumerate(correct.mean(axis=1))]


def exit_shares(scores: np.ndarray, alpha: float, t_cap: int | None = None) -> list[float]:
    """Share of samples exiting at each t = 1..T for one (alpha, T_cap)."""
    t = exit_times(scores[: t_cap or scores.shape[0]], alpha)
    return (np.bincount(t, minlength=scores.shape[0] + 1)[1:] / len(t)).tolist()


def point_dict(point: SweepPoint, t_max: int) -> dict:
    """The point as JSON-ready data, with the --exit that reproduces it (alpha -inf stored as 0: every score is > 0)."""
    return asdict(point) | {"alpha": max(point.alpha, 0.0), "exit": point.spelling(t_max)}
