"""SEENN-II beside SEENN-I: each beta's policy as a point, the policy-capped confidence exit as a front per beta,
and the SEENN-I front, on the validation slice (where beta and alpha are chosen) and on test (scored once).

The combined exit stops a sample at the first t < c with confidence > alpha, else at c, its
policy's T. Its exact sweep over alpha is the SEENN-I sweep (calib/sweep.py) on scores that
are forced above every alpha at t = c: that is the whole trick, so both fronts come from one
exact algorithm. alpha -> 1 gives the plain policy exit, so the combined front holds the
policy's own point.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.calib.metrics import accumulate, exit_scores, softmax
from seenn_deploy.calib.sweep import SweepPoint, fixed_points, sweep, sweep_capped
from seenn_deploy.errors import MissingDependency

FORCED = 2.0  # above every confidence (<= 1): the score that makes a sample exit at its cap

__all__ = ["SplitFigures", "combined_exit_times", "combined_sweep", "evaluate_combined", "front_at", "pareto",
           "plot_policy_front", "policy_figures", "snn_profile"]


def snn_profile(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step logits [T, N, K] and labels [N] -> (confidence [T, N], correct [T, N]) of the mean of the first t
    outputs: what the runtime's step graph and calibrate's profiles compute."""
    means = accumulate(logits)
    return exit_scores(softmax(means), "confidence"), means.argmax(-1) == labels[None, :]


def combined_sweep(scores: np.ndarray, correct: np.ndarray, caps: np.ndarray) -> list[SweepPoint]:
    """Every operating point of policy+confidence:alpha for alpha in [0, 1], exactly; caps int [N] in 1..T.

    Each point's t_cap is 0 (a per-sample cap); the one at alpha >= 1 is the plain policy exit."""
    steps, n = scores.shape
    t = np.arange(steps)[:, None]
    last = caps[None, :] - 1
    forced = np.where(t < last, scores, FORCED)
    held = correct[np.minimum(t, last), np.arange(n)[None, :]]  # after its cap a sample keeps its answer there
    sw = sweep(forced, held)
    keep = sw.alphas < FORCED  # the point above FORCED would run every sample to T: no alpha reaches it
    return [SweepPoint(min(float(a), 1.0), float(acc), float(avg), 0)
            for a, acc, avg in zip(sw.alphas[keep], sw.accuracy[keep], sw.avg_timesteps[keep])]


def combined_exit_times(scores: np.ndarray, caps: np.ndarray, alpha: float) -> np.ndarray:
    """policy+confidence:alpha, directly: per sample the first t < cap with score > alpha, else cap (1-based)."""
    t = np.arange(scores.shape[0])[:, None]
    above = (scores > alpha) & (t < caps[None, :] - 1)
    return np.where(above.any(axis=0), above.argmax(axis=0) + 1, caps).astype(np.int64)


def evaluate_combined(scores: np.ndarray, correct: np.ndarray, caps: np.ndarray, alpha: float) -> SweepPoint:
    """Accuracy and average timesteps of policy+confidence:alpha (t_cap 0: the caps are per sample)."""
    t = combined_exit_times(scores, caps, alpha)
    return SweepPoint(float(alpha), float(correct[t - 1, np.arange(len(t))].mean()), float(t.mean()), 0)


def pareto(points: list[SweepPoint]) -> list[SweepPoint]:
    """Points no other beats on accuracy (higher) and average timesteps (lower), by ascending timesteps."""
    front, best = [], -np.inf
    for p in sorted(points, key=lambda p: (p.avg_timesteps, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def front_at(front: list[SweepPoint], avg_timesteps: float) -> float | None:
    """The best accuracy a front reaches in at most `avg_timesteps` (None: none of its points is that cheap)."""
    reached = [p.accuracy for p in front if p.avg_timesteps <= avg_timesteps + 1e-12]
    return max(reached) if reached else None


def _point(p: SweepPoint) -> dict[str, float]:
    return {"alpha": max(p.alpha, 0.0), "accuracy": p.accuracy, "avg_timesteps": p.avg_timesteps}


@dataclass
class SplitFigures:
    """One split: Fixed(T), the SEENN-I and capped fronts, and per beta the policy point and its combined front."""

    split: str  # "validation" (where beta and alpha are chosen) or "test" (scored once)
    data: str
    samples: int
    fixed: list[dict]
    seenn_front: list[dict]
    capped_front: list[dict]
    policies: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def policy_figures(split: str, data: str, logits: np.ndarray, labels: np.ndarray, choices: dict[float, np.ndarray],
                   candidates: list[int], step_share: dict[float, float] | None = None) -> SplitFigures:
    """The figures of one split. choices: beta -> the T its policy picks per sample [N]; step_share: beta -> its
    policy's MACs over one SNN timestep's, added to its average timesteps in `effective_timesteps`."""
    scores, correct = snn_profile(logits, labels)
    seenn = sweep(scores, correct).pareto()
    capped = sweep_capped(scores, correct).pareto()
    figures = SplitFigures(split, data, len(labels), fixed_points(correct), [_point(p) for p in seenn],
                           [_point(p) | {"t_cap": p.t_cap} for p in capped])
    cols = np.arange(len(labels))
    for beta, picks in sorted(choices.items()):
        picks = np.asarray(picks, dtype=np.int64)
        right = correct[picks - 1, cols]
        avg = float(picks.mean())
        combined = pareto(combined_sweep(scores, correct, picks))
        seenn_same_t = front_at(seenn, avg)
        capped_same_t = front_at(capped, avg)
        figures.policies.append({
            "beta": beta, "accuracy": float(right.mean()), "avg_timesteps": avg,
            "shares": [float(np.mean(picks == c)) for c in candidates],
            "effective_timesteps": None if step_share is None else avg + step_share[beta],
            "seenn_accuracy_at_same_timesteps": seenn_same_t,
            "verdict": _verdict(float(right.mean()), seenn_same_t),
            "capped_accuracy_at_same_timesteps": capped_same_t,  # confidence:alpha@T_cap, which holds Fixed(T)
            "combined_front": [_point(p) for p in combined],
        })
    return figures


def _verdict(accuracy: float, seenn: float | None) -> str:
    if seenn is None:
        return "cheaper than every SEENN-I point"
    return "above SEENN-I" if accuracy > seenn else "equal to SEENN-I" if accuracy == seenn else "below SEENN-I"


def plot_policy_front(path: Path, splits: list[SplitFigures], title: str) -> Path | None:
    """Accuracy against average timesteps, one panel per split: SEENN-I front, Fixed(T), each beta's policy point
    (and, hollow, the same point moved right by the policy's own MACs in timesteps) and its combined front."""
    from seenn_deploy.plotting import pyplot, save

    try:
        plt = pyplot()
    except MissingDependency:
        return None
    fig, axes = plt.subplots(1, len(splits), figsize=(6.4 * len(splits), 4.8), dpi=120, squeeze=False)
    for ax, split in zip(axes[0], splits):
        def xy(points, key="avg_timesteps"):
            return [p[key] for p in points], [100 * p["accuracy"] for p in points]

        ax.plot(*xy(split.seenn_front), "-", color="C0", label="SEENN-I front (confidence:alpha)")
        ax.plot(*xy(split.fixed, "timesteps"), "s--", color="C1", label="Fixed T")
        off: list[str] = []
        for i, pol in enumerate(split.policies):
            colour = f"C{(i + 2) % 10}"
            ax.plot(*xy(pol["combined_front"]), ":", color=colour, linewidth=1)
            ax.plot([pol["avg_timesteps"]], [100 * pol["accuracy"]], "o", color=colour,
                    label=f"SEENN-II beta {pol['beta']:g} (dotted: + confidence:alpha)")
            shown = pol["effective_timesteps"]
            if shown is not None and shown <= split.fixed[-1]["timesteps"] + 0.5:
                ax.plot([shown], [100 * pol["accuracy"]], "o", color=colour, markerfacecolor="none")
            elif shown is not None:  # a policy dearer than the whole SNN would squash the chart: say it instead
                off.append(f"beta {pol['beta']:g}: +{shown - pol['avg_timesteps']:.2f}")
        ax.set_xlabel("average timesteps (hollow: + the policy's MACs in SNN timesteps)")
        if off:
            ax.text(0.02, 0.02, "\n".join(textwrap.wrap("policy MACs in SNN timesteps, off the chart: "
                                                          + ", ".join(off), 60)),
                    transform=ax.transAxes, fontsize=6, va="bottom")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("\n".join(textwrap.wrap(f"{split.split}: {split.data} ({split.samples} samples)", 70)), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
