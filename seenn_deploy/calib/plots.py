"""Calibration plots (PNG): the accuracy-timesteps curve, exit composition per alpha, score distributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seenn_deploy.calib.sweep import Sweep, SweepPoint, exit_shares
from seenn_deploy.plotting import pyplot, save


def plot_curve(path: Path, sweep: Sweep, fixed: list[dict], aet: float, chosen: SweepPoint | None, title: str) -> None:
    """Accuracy against average timesteps: the SEENN-I curve, Fixed(T) points, AET and the chosen alpha."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    front = sweep.pareto()
    order = np.argsort(sweep.avg_timesteps, kind="stable")
    ax.plot(sweep.avg_timesteps[order], 100 * sweep.accuracy[order], "-", color="C0", alpha=0.3, linewidth=0.8,
            label="every alpha")
    ax.plot([p.avg_timesteps for p in front], [100 * p.accuracy for p in front], "-", color="C0",
            label="SEENN-I Pareto front")
    ax.plot([f["timesteps"] for f in fixed], [100 * f["accuracy"] for f in fixed], "s--", color="C1", label="Fixed T")
    ax.axvline(aet, color="C2", linestyle=":", label=f"AET (oracle) {aet:.2f}")
    if chosen is not None:
        ax.plot([chosen.avg_timesteps], [100 * chosen.accuracy], "*", color="C3", markersize=14,
                label=f"alpha {chosen.alpha:.4g}: {100 * chosen.accuracy:.2f}% at {chosen.avg_timesteps:.2f} T")
    ax.set_xlabel("average timesteps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, path)


def plot_exit_composition(path: Path, scores: np.ndarray, alphas: np.ndarray, title: str) -> None:
    """Share of samples exiting at each timestep, as alpha goes from 0 to 1."""
    plt = pyplot()
    shares = np.array([exit_shares(scores, a) for a in alphas])  # [A, T]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.stackplot(alphas, 100 * shares.T, labels=[f"t={t + 1}" for t in range(scores.shape[0])], alpha=0.85)
    ax.set_xlabel("alpha")
    ax.set_ylabel("samples exiting (%)")
    ax.set_xlim(alphas[0], alphas[-1])
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, path)


def plot_score_distributions(path: Path, scores: np.ndarray, correct: np.ndarray | None, metric: str) -> None:
    """Histogram of the exit score at each timestep, split by correct and wrong predictions where labels exist."""
    plt = pyplot()
    steps = scores.shape[0]
    fig, axes = plt.subplots(1, steps, figsize=(3.0 * steps, 3.0), dpi=110, sharey=True)
    axes = np.atleast_1d(axes)
    bins = np.linspace(0, 1, 41)
    for t, ax in enumerate(axes):
        if correct is None:
            ax.hist(scores[t], bins=bins, color="C0")
        else:
            ax.hist(scores[t][correct[t]], bins=bins, color="C2", alpha=0.7, label="correct")
            ax.hist(scores[t][~correct[t]], bins=bins, color="C3", alpha=0.7, label="wrong")
        ax.set_yscale("log")
        ax.set_title(f"t = {t + 1}")
        ax.set_xlabel(metric)
    axes[0].set_ylabel("samples")
    if correct is not None:
        axes[0].legend(fontsize=8)
    save(fig, path)
