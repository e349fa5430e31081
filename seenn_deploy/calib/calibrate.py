"""`calibrate`: profile a bundle once, sweep every threshold exactly, pick alpha, write it and the report."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.calib.metrics import METRICS, aet, empirical_aet
from seenn_deploy.calib.profile import PROFILE_FILE, TimestepProfile, bundle_fingerprint
from seenn_deploy.calib.select import for_accuracy_drop, for_timestep_budget
from seenn_deploy.calib.sweep import SweepPoint, evaluate_alpha, exit_shares, fixed_points, point_dict, sweep
from seenn_deploy.errors import UserError
from seenn_deploy.files import write_json_atomic
from seenn_deploy.runtime.manifest import Manifest, write_manifest

CALIB_DIR = "calib"


@dataclass
class Target:
    """Exactly one of: accuracy drop in percentage points, average-timestep budget, or a given alpha."""

    drop: float | None = None
    timesteps: float | None = None
    alpha: float | None = None

    def check(self) -> None:
        given = [v is not None for v in (self.drop, self.timesteps, self.alpha)]
        if sum(given) > 1:
            raise UserError("give one of --target-drop, --target-timesteps, --alpha")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.drop, self.timesteps, self.alpha))


@dataclass
class CalibrationReport:
    metric: str
    samples: int
    timesteps: int
    sweep_seconds: float
    fixed: list[dict]
    aet: float | None
    empirical_aet: float | None
    chosen: dict | None
    exit_shares: list[float] | None
    pareto: list[dict]
    table: list[dict]
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def table_points(sw, count: int = 12) -> list[SweepPoint]:
    """A readable subset of the Pareto front: evenly spaced in average timesteps."""
    front = sw.pareto()
    if len(front) <= count:
        return front
    picks = np.linspace(0, len(front) - 1, count).round().astype(int)
    return [front[i] for i in sorted(set(picks.tolist()))]


def analyse(profile: TimestepProfile, metric: str, target: Target) -> tuple[CalibrationReport, SweepPoint | None]:
    """The sweep and the figures of the report; the chosen point when a target is given."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    target.check()
    scores = profile.scores[metric]
    has_labels = profile.labels is not None
    if not has_labels and (target.drop is not None or target.timesteps is not None):
        raise UserError(f"{profile.data} has no labels: --target-drop and --target-timesteps need labelled data "
                        "(give --alpha, or data with labels)")
    chosen = None
    if has_labels:
        correct = profile.correct()
        started = time.perf_counter()
        sw = sweep(scores, correct)
        seconds = time.perf_counter() - started
        full = float(correct[-1].mean())
        if target.drop is not None:
            chosen = for_accuracy_drop(sw, full, target.drop)
        elif target.timesteps is not None:
            chosen = for_timestep_budget(sw, target.timesteps)
        elif target.alpha is not None:
            chosen = evaluate_alpha(scores, correct, target.alpha)
        table = [point_dict(p) | {"exit_shares": exit_shares(scores, p.alpha)} for p in table_points(sw)]
        report = CalibrationReport(
            metric=metric, samples=profile.samples, timesteps=profile.timesteps, sweep_seconds=seconds,
            fixed=fixed_points(correct), aet=aet(correct), empirical_aet=empirical_aet(correct),
            chosen=None if chosen is None else point_dict(chosen),
            exit_shares=None if chosen is None else exit_shares(scores, chosen.alpha),
            pareto=[point_dict(p) for p in sw.pareto()], table=table,
        )
        return report, chosen
    if target.alpha is not None:
        steps = (np.arange(profile.timesteps) + 1)
        shares = exit_shares(scores, target.alpha)
        chosen = SweepPoint(target.alpha, float("nan"), float((steps * np.asarray(shares)).sum()))
    report = CalibrationReport(metric, profile.samples, profile.timesteps, 0.0, [], None, None,
                               None if chosen is None else point_dict(chosen),
                               None if chosen is None else exit_shares(scores, target.alpha), [], [])
    return report, chosen


def write_alpha(bundle: Path, manifest: Manifest, point: SweepPoint, metric: str, data: str) -> None:
    """Set the bundle's exit to Confidence(alpha), keeping the previous exit settings in the history."""
    if metric != "confidence":
        raise UserError("only --metric confidence is written into the bundle (the step graph outputs max softmax); "
                        "the entropy sweep is in the report")
    manifest.history.append({
        "changed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "by": "calibrate", "data": data,
        "previous_exit": {"kind": manifest.exit.kind, "alpha": manifest.exit.alpha},
    })
    manifest.exit.kind = "confidence"
    manifest.exit.alpha = float(point.alpha)
    write_manifest(bundle, manifest)


def load_profile(bundle: Path, manifest: Manifest, path: Path | None = None) -> TimestepProfile:
    """The stored profile, refused if it was made for another bundle."""
    path = path or Path(bundle) / CALIB_DIR / PROFILE_FILE
    if not path.is_file():
        raise UserError(f"no timestep profile at {path}: run calibrate with --data first")
    profile = TimestepProfile.load(path)
    profile.check_bundle(bundle_fingerprint(bundle, manifest), path)
    return profile


def write_report(bundle: Path, report: CalibrationReport) -> Path:
    path = Path(bundle) / CALIB_DIR / f"report_{report.metric}.json"
    write_json_atomic(path, report.to_dict())
    return path


def make_plots(bundle: Path, profile: TimestepProfile, report: CalibrationReport, chosen: SweepPoint | None) -> list[str]:
    """The three PNGs in calib/; returns their paths relative to the bundle."""
    from seenn_deploy.calib import plots

    folder = Path(bundle) / CALIB_DIR
    scores = profile.scores[report.metric]
    correct = profile.correct() if profile.labels is not None else None
    made = []
    if correct is not None:
        sw = sweep(scores, correct)
        plots.plot_curve(folder / "curve.png", sw, report.fixed, report.aet, chosen,
                         f"{Path(bundle).name}: accuracy vs timesteps ({report.metric})")
        made.append(f"{CALIB_DIR}/curve.png")
    plots.plot_exit_composition(folder / "exits.png", scores, np.linspace(0, 1, 201), f"{Path(bundle).name}: exit timestep by alpha ({report.metric})")
    plots.plot_score_distributions(folder / "scores.png", scores, correct, report.metric)
    return made + [f"{CALIB_DIR}/exits.png", f"{CALIB_DIR}/scores.png"]
