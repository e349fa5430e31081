"""The SEENN-II report's figures: the combined exit's exact sweep against per-alpha evaluation, and the policy
point and verdicts on a hand case."""

from __future__ import annotations

import numpy as np

from seenn_deploy.calib.policy_front import combined_exit_times, combined_sweep, evaluate_combined, front_at, policy_figures
from seenn_deploy.calib.sweep import SweepPoint


def combined_exits(scores: np.ndarray, caps: np.ndarray, alpha: float) -> np.ndarray:
    """policy+confidence:alpha, sample by sample: the first t < cap with score > alpha, else cap (1-based)."""
    out = caps.copy()
    for i, cap in enumerate(caps):
        above = np.flatnonzero(scores[: cap - 1, i] > alpha)
        if len(above):
            out[i] = above[0] + 1
    return out


def test_combined_sweep_equals_the_direct_rule_at_every_alpha():
    rng = np.random.default_rng(3)
    steps, n = 4, 300
    scores = rng.choice(np.linspace(0.1, 1.0, 19), size=(steps, n))  # ties on purpose
    correct = rng.random((steps, n)) < 0.7
    caps = rng.integers(1, steps + 1, n)
    points = combined_sweep(scores, correct, caps)
    assert len(points) > 10
    cols = np.arange(n)
    for p in points:
        t = combined_exits(scores, caps, p.alpha)
        assert p.avg_timesteps == t.mean() and p.accuracy == correct[t - 1, cols].mean(), p
        np.testing.assert_array_equal(combined_exit_times(scores, caps, p.alpha), t)
        assert evaluate_combined(scores, correct, caps, p.alpha) == p
    # alpha 1 (nothing is that confident): the plain policy exit, which the sweep holds
    plain = max(points, key=lambda p: p.alpha)
    assert plain.alpha == 1.0 and plain.avg_timesteps == caps.mean()
    assert plain.accuracy == correct[caps - 1, cols].mean()


def test_policy_point_and_verdict_on_a_hand_case():
    # two classes, two steps; sample 0 right from t=1 and confident, sample 1 right only at t=2
    logits = np.array([[[4.0, 0.0], [0.0, 0.1]],
                       [[4.0, 0.0], [4.0, 0.0]]])
    labels = np.array([0, 0])
    figures = policy_figures("validation", "hand", logits, labels, {1.0: np.array([1, 2]), 2.0: np.array([1, 1])}, [1, 2],
                             {1.0: 0.25, 2.0: 0.5})
    one, two = figures.policies
    assert (one["accuracy"], one["avg_timesteps"], one["shares"], one["effective_timesteps"]) == (1.0, 1.5, [0.5, 0.5], 1.75)
    assert (two["accuracy"], two["avg_timesteps"], two["effective_timesteps"]) == (0.5, 1.0, 1.5)
    # SEENN-I exits sample 0 at t=1 (confident) and sample 1 at t=2 (not): the same point as beta 1's policy
    assert one["seenn_accuracy_at_same_timesteps"] == 1.0 and one["verdict"] == "equal to SEENN-I"
    assert two["capped_accuracy_at_same_timesteps"] == 0.5 and two["verdict"] == "equal to SEENN-I"
    assert [f["accuracy"] for f in figures.fixed] == [0.5, 1.0]


def test_front_at_reads_the_best_accuracy_within_a_budget():
    front = [SweepPoint(0.1, 0.8, 1.0, 4), SweepPoint(0.5, 0.9, 1.5, 4)]
    assert front_at(front, 1.2) == 0.8 and front_at(front, 1.5) == 0.9 and front_at(front, 0.5) is None
