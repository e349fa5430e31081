"""Picking an operating point (alpha, T_cap) for a target, from the exact sweep; ties go to the larger cap."""

from __future__ import annotations

import numpy as np

from seenn_deploy.calib.sweep import Sweep, SweepPoint
from seenn_deploy.errors import UserError


def for_accuracy_drop(sweep: Sweep, full_accuracy: float, drop_points: float) -> SweepPoint:
    """Smallest average T whose accuracy is within `drop_points` (percentage points) of Fixed(T_max)."""
    if drop_points < 0:
        raise UserError(f"--target-drop must be >= 0 percentage points, got {drop_points}")
    floor = full_accuracy - drop_points / 100.0 - 1e-12
    ok = np.flatnonzero(sweep.accuracy >= floor)
    if len(ok) == 0:
        best = sweep.point(int(np.argmax(sweep.accuracy)))
        raise UserError(f"no alpha keeps accuracy within {drop_points} points of {100 * full_accuracy:.2f}%; the best "
                        f"reachable is {100 * best.accuracy:.2f}% with {best.spelling()}")
    i = ok[np.lexsort((-sweep.caps[ok], -sweep.accuracy[ok], sweep.avg_timesteps[ok]))[0]]
    return sweep.point(int(i))


def for_timestep_budget(sweep: Sweep, budget: float) -> SweepPoint:
    """The most accurate point whose average timesteps stay within `budget`."""
    ok = np.flatnonzero(sweep.avg_timesteps <= budget + 1e-12)
    if len(ok) == 0:
        least = float(sweep.avg_timesteps.min())
        raise UserError(f"--target-timesteps {budget} cannot be met: the fewest reachable is {least:.3f} "
                        "average timesteps (every sample takes at least one)")
    i = ok[np.lexsort((-sweep.caps[ok], sweep.avg_timesteps[ok], -sweep.accuracy[ok]))[0]]
    return sweep.point(int(i))
