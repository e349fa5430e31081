"""Calibration plots (PNG): the accuracy-timesteps curve, exit composition per alpha, score distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from seenn_deploy.calib.sweep import exit_shares
from seenn_deploy.errors import MissingDependency
from seenn_deploy.plotting import pyplot, save


def plot_curve(path: Path, report: dict, title: str) -> None:
    """Accuracy against average timesteps on the choice set: the capped and plain SEENN-I fronts, Fixed(T),
    AET and the chosen point; on test, Fixed(T) and the chosen point again (hollow)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    choice, chosen, test = report["choice"], report["chosen"], report["test"]

    def xy(points: list[dict], key: str = "avg_timesteps") -> tuple[list[float], list[float]]:
        return [p[key] for p in points], [100 * p["accuracy"] for p in points]

    ax.plot(*xy(choice["seenn_front"]), "-", color="C0", label="SEENN-I front (T_cap = T_max)")
    if choice["front_uses_cap"]:
        ax.plot(*xy(choice["front"]), "-", color="C4", label="capped front (alpha, T_cap)")
    ax.plot(*xy(choice["fixed"], "timesteps"), "s--", color="C1", label="Fixed T")
    ax.axvline(choice["aet"], color="C2", linestyle=":", label=f"AET (oracle) {choice['aet']:.2f}")
    if chosen is not None:
        ax.plot([chosen["avg_timesteps"]], [100 * chosen["accuracy"]], "*", color="C3", markersize=14,
                label=f"{chosen['exit']}: {100 * chosen['accuracy']:.2f}% at {chosen['avg_timesteps']:.2f} T")
    if test is not None:
        ax.plot(*xy(test["fixed"], "timesteps"), "s:", color="C1", markerfacecolor="none", label="Fixed T on test")
        if "chosen" in test:
            c = test["chosen"]
            ax.plot([c["avg_timesteps"]], [100 * c["accuracy"]], "*", color="C3", markerfacecolor="none",
                    markersize=14, label=f"on test: {100 * c['accuracy']:.2f}% at {c['avg_timesteps']:.2f} T")
    ax.set_xlabel("average timesteps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("\n".join([title, *textwrap.wrap(f"chosen on {choice['data']}", 90)]), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
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


def make_plots(folder: Path, name: str, report: dict, scores: np.ndarray, correct: np.ndarray | None,
               ) -> tuple[list[Path], str | None]:
    """The three PNGs in `folder`, or none and a note naming the extra when matplotlib is missing."""
    try:
        pyplot()
    except MissingDependency as exc:
        return [], f"plots skipped: {exc}"
    metric = report["metric"]
    curve = Path(folder) / "curve.png"
    plot_curve(curve, report, f"{name}: accuracy vs timesteps ({metric})")
    exits = Path(folder) / "exits.png"
    plot_exit_composition(exits, scores, np.linspace(0, 1, 201), f"{name}: exit timestep by alpha ({metric}, T_cap = T_max)")
    hist = Path(folder) / "scores.png"
    plot_score_distributions(hist, scores, correct, metric)
    return [curve, exits, hist], None
