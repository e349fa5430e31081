"""`calibrate`: sweep every (alpha, T_cap) exactly on held-out data, pick a point, score it once on test.

The choice is made on one profile (the validation slice, or --calib-data) and reported on
another (the test split), so the early-exit figures a user reads are not fitted to the data
they are measured on. The capped confidence exit holds every Fixed(T) point, so the chosen
point is never beaten by a fixed budget on the data it was chosen on; on test it is compared
with every Fixed(T) again, and a fixed budget that beats it there is flagged.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seenn_deploy.calib.metrics import METRICS, aet, empirical_aet
from seenn_deploy.calib.policy_front import combined_sweep, evaluate_combined, pareto
from seenn_deploy.calib.profile import TimestepProfile
from seenn_deploy.calib.select import for_accuracy_drop, for_timestep_budget
from seenn_deploy.calib.sweep import SweepPoint, evaluate_alpha, exit_shares, fixed_points, point_dict, sweep_capped
from seenn_deploy.errors import UserError
from seenn_deploy.files import write_json_atomic
from seenn_deploy.runtime.manifest import Manifest, write_manifest

CHOSEN_ON_TEST_WARNING = "the point was chosen on the test split, so its test figures are optimistic"


@dataclass
class Target:
    """At most one of: accuracy drop in percentage points, average-timestep budget, or a given alpha (and cap)."""

    drop: float | None = None
    timesteps: float | None = None
    alpha: float | None = None
    t_cap: int | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.drop, self.timesteps, self.alpha))

    def check(self, t_max: int | None = None) -> None:
        given = [v is not None for v in (self.drop, self.timesteps, self.alpha)]
        if sum(given) > 1:
            raise UserError("give one of --target-drop, --target-timesteps, --alpha")
        if self.alpha is not None and not 0.0 <= self.alpha < 1.0:
            raise UserError(f"--alpha must be in [0, 1), got {self.alpha} (a confidence never exceeds 1: "
                            "for no early exit use --alpha with --t-cap, or `run --exit fixed:T`)")
        if self.t_cap is not None:
            if self.alpha is None:
                raise UserError("--t-cap goes with --alpha; targets choose the cap themselves")
            if self.t_cap < 1 or (t_max is not None and self.t_cap > t_max):
                raise UserError(f"--t-cap must be in 1..{t_max or 'T_max'}, got {self.t_cap}")
        if self.drop is not None and not self.drop >= 0:
            raise UserError(f"--target-drop must be >= 0 percentage points, got {self.drop}")


@dataclass
class CalibrationReport:
    """What `calibrate` found: the choice set's sweep, the chosen point, and its test figures."""

    metric: str
    timesteps: int
    chosen_on: str
    choice: dict[str, Any]
    chosen: dict[str, Any] | None
    test: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    policy: dict[str, Any] | None = None  # SEENN-II bundles: the policy and policy+confidence:alpha (policy_analysis)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def set_figures(profile: TimestepProfile) -> dict[str, Any]:
    """Fixed(T) accuracies and AET of one labelled profile."""
    correct = profile.correct()
    return {"data": profile.data, "samples": profile.samples, "fixed": fixed_points(correct),
            "aet": aet(correct), "empirical_aet": empirical_aet(correct)}


def versus_fixed(point: SweepPoint, fixed: list[dict]) -> list[dict]:
    """How a point stands against each Fixed(T): 'dominates', 'equal', 'dominated' or 'trade-off'."""
    rows = []
    for f in fixed:
        at_least = point.accuracy >= f["accuracy"] and point.avg_timesteps <= f["timesteps"]
        at_most = point.accuracy <= f["accuracy"] and point.avg_timesteps >= f["timesteps"]
        verdict = "equal" if at_least and at_most else "dominates" if at_least else "dominated" if at_most else "trade-off"
        rows.append({"timesteps": f["timesteps"], "accuracy": f["accuracy"], "verdict": verdict})
    return rows


def table_points(front: list[SweepPoint], count: int = 12) -> list[SweepPoint]:
    """A readable subset of a Pareto front: evenly spaced along it."""
    if len(front) <= count:
        return front
    picks = np.linspace(0, len(front) - 1, count).round().astype(int)
    return [front[i] for i in sorted(set(picks.tolist()))]


def choose(profile: TimestepProfile, metric: str, target: Target) -> tuple[dict[str, Any], SweepPoint | None]:
    """The exact (alpha, T_cap) sweep of the choice profile and the point the target picks (None: no target)."""
    scores, correct = profile.scores[metric], profile.correct()
    started = time.perf_counter()
    sw = sweep_capped(scores, correct)
    seconds = time.perf_counter() - started
    front = sw.pareto()
    seenn_front = pareto([sw.point(i) for i in np.flatnonzero(sw.caps == profile.timesteps)])
    chosen = None
    if target.drop is not None:
        chosen = for_accuracy_drop(sw, float(correct[-1].mean()), target.drop)
    elif target.timesteps is not None:
        chosen = for_timestep_budget(sw, target.timesteps)
    elif target.alpha is not None:
        chosen = evaluate_alpha(scores, correct, target.alpha, target.t_cap)
    t_max = profile.timesteps
    figures = set_figures(profile) | {
        "sweep_seconds": seconds, "points": len(sw.alphas),
        "front": [point_dict(p, t_max) for p in front],
        "seenn_front": [point_dict(p, t_max) for p in seenn_front],
        "front_uses_cap": any(p.t_cap < profile.timesteps for p in front),
        "table": [point_dict(p, t_max) | {"exit_shares": exit_shares(scores, p.alpha, p.t_cap)} for p in table_points(front)],
    }
    return figures, chosen


def analyse(choice: TimestepProfile, test: TimestepProfile | None, metric: str, target: Target,
            chosen_on: str) -> tuple[CalibrationReport, SweepPoint | None]:
    """Choose on `choice`, score the chosen point and every Fixed(T) on `test`."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    target.check(choice.timesteps)
    if choice.labels is None:
        raise UserError(f"{choice.data} has no labels: calibration chooses by accuracy, so it needs labelled data")
    figures, chosen = choose(choice, metric, target)
    warnings = [CHOSEN_ON_TEST_WARNING] if chosen_on == "test" else []
    chosen_dict = None
    if chosen is not None:
        chosen_dict = point_dict(chosen, choice.timesteps) | {
            "exit_shares": exit_shares(choice.scores[metric], chosen.alpha, chosen.t_cap),
            "vs_fixed": versus_fixed(chosen, figures["fixed"]),
        }
    test_dict = None
    if test is not None:
        if test.timesteps != choice.timesteps:
            raise UserError(f"the test profile has {test.timesteps} timesteps and the choice profile {choice.timesteps}: "
                            "delete the bundle's calib/ folder and calibrate again")
        if test.labels is None:
            warnings.append(f"{test.data} has no labels: the choice is not scored on test")
        else:
            test_dict = set_figures(test)
            if chosen is not None:
                scored = evaluate_alpha(test.scores[metric], test.correct(), chosen.alpha, chosen.t_cap)
                test_dict["chosen"] = point_dict(scored, test.timesteps) | {
                    "exit_shares": exit_shares(test.scores[metric], chosen.alpha, chosen.t_cap),
                    "vs_fixed": versus_fixed(scored, test_dict["fixed"]),
                }
                beaten = [v["timesteps"] for v in test_dict["chosen"]["vs_fixed"] if v["verdict"] == "dominated"]
                if beaten:
                    warnings.append(f"on test, Fixed({', '.join(map(str, beaten))}) is at least as accurate in no more "
                                    "timesteps than the chosen point: the choice set and test disagree there")
    report = CalibrationReport(metric=metric, timesteps=choice.timesteps, chosen_on=chosen_on, choice=figures,
                               chosen=chosen_dict, test=test_dict, warnings=warnings)
    return report, chosen


def check_writable_metric(metric: str) -> None:
    """Only the confidence's exit can go into a bundle: the step graph outputs max softmax."""
    if metric != "confidence":
        raise UserError(f"--metric {metric} cannot be written into the bundle (the step graph outputs the confidence, "
                        "max softmax): add --no-write to read its sweep in the report")


def write_exit(bundle: Path, manifest: Manifest, point: SweepPoint, metric: str, data: str,
               combined_alpha: float | None = None) -> str:
    """Set the bundle's default exit to the chosen point; the previous exit settings go to the history.

    A bundle whose default exit is its policy keeps it, and takes `combined_alpha` (policy_analysis's
    choice; None: none met the target) as the alpha of policy+confidence.

    Returns the --exit spelling of what was written.
    """
    check_writable_metric(metric)
    info = manifest.exit
    manifest.history.append({
        "changed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "by": "calibrate", "data": data,
        "previous_exit": {"kind": info.kind, "alpha": info.alpha, "t_cap": info.t_cap},
    })
    fixed = point.fixed_steps
    if info.kind == "policy":  # the policy stays the default; `policy+confidence` reads the alpha
        if combined_alpha is not None:
            info.alpha = float(combined_alpha)
            write_manifest(bundle, manifest)
            return f"policy, alpha {info.alpha:.6g} for policy+confidence (chosen on its own sweep)"
        manifest.history.pop()
        return "policy (unchanged: no policy+confidence point meets the target)"
    cap = fixed if fixed is not None else point.t_cap
    info.kind = "fixed" if fixed is not None else "confidence"
    info.t_cap = None if cap >= manifest.timesteps else cap
    if fixed is None:
        info.alpha = float(point.alpha)
    write_manifest(bundle, manifest)
    return point.spelling(manifest.timesteps)


def write_report(folder: Path, report: CalibrationReport) -> Path:
    path = Path(folder) / f"report_{report.metric}.json"
    write_json_atomic(path, report.to_dict())
    return path


def _combined_pick(points: list[SweepPoint], full_accuracy: float, target: Target, scores: np.ndarray,
                   correct: np.ndarray, caps: np.ndarray) -> SweepPoint | None:
    """The policy+confidence point the target picks (None: no target, or none reaches it)."""
    if target.alpha is not None:
        return evaluate_combined(scores, correct, caps, target.alpha)
    if target.drop is not None:
        ok = [p for p in points if p.accuracy >= full_accuracy - target.drop / 100.0 - 1e-12]
        return min(ok, key=lambda p: (p.avg_timesteps, -p.accuracy, -p.alpha)) if ok else None
    if target.timesteps is not None:
        ok = [p for p in points if p.avg_timesteps <= target.timesteps + 1e-12]
        return max(ok, key=lambda p: (p.accuracy, -p.avg_timesteps, p.alpha)) if ok else None
    return None


def policy_analysis(choice: TimestepProfile, test: TimestepProfile | None, caps_choice: np.ndarray,
                    caps_test: np.ndarray | None, metric: str, target: Target) -> dict[str, Any]:
    """For a bundle with a policy: its plain exit and the exact sweep of policy+confidence:alpha on the choice set
    (each sample capped at its policy's T), the point the target picks there, and both scored once on test.

    The alpha written for policy+confidence comes from here, not from the SEENN-I sweep: the same
    alpha exits other samples when the policy caps them."""
    scores, correct = choice.scores[metric], choice.correct()
    points = combined_sweep(scores, correct, caps_choice)
    front = pareto(points)
    plain = evaluate_combined(scores, correct, caps_choice, 1.0)
    picked = _combined_pick(points, float(correct[-1].mean()), target, scores, correct, caps_choice)
    result: dict[str, Any] = {
        "policy": {"accuracy": plain.accuracy, "avg_timesteps": plain.avg_timesteps},
        "front": [{"alpha": max(p.alpha, 0.0), "accuracy": p.accuracy, "avg_timesteps": p.avg_timesteps}
                  for p in front],
        "chosen": None if picked is None else {"alpha": max(picked.alpha, 0.0), "accuracy": picked.accuracy,
                                               "avg_timesteps": picked.avg_timesteps,
                                               "exit": f"policy+confidence:{max(picked.alpha, 0.0):.6g}"},
        "test": None,
    }
    if target.given and picked is None:
        result["unreachable"] = "no policy+confidence point meets the target on the choice set"
    if test is not None and caps_test is not None and test.labels is not None:
        t_scores, t_correct = test.scores[metric], test.correct()
        plain_test = evaluate_combined(t_scores, t_correct, caps_test, 1.0)
        result["test"] = {"policy": {"accuracy": plain_test.accuracy, "avg_timesteps": plain_test.avg_timesteps}}
        if picked is not None:
            scored = evaluate_combined(t_scores, t_correct, caps_test, picked.alpha)
            result["test"]["chosen"] = {"alpha": max(picked.alpha, 0.0), "accuracy": scored.accuracy,
                                        "avg_timesteps": scored.avg_timesteps}
    return result
