"""The SEENN-II sweep's report: every beta's policy on the validation slice and, once, on test, beside the
SEENN-I front, with the policy's cost; written as JSON and a plot next to the runs.

Nothing is chosen here: the user picks beta from the validation figures (as they pick alpha with
`calibrate`); the test figures are there to confirm, and come from one pass over the test split
after every policy is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seenn_deploy.calib.policy_front import SplitFigures, plot_policy_front
from seenn_deploy.files import write_json_atomic

REPORT_JSON = "report.json"
REPORT_PLOT = "front.png"


@dataclass
class PolicyReport:
    """The figures of every split scored, the policy's cost, and where the report went."""

    candidates: list[int]
    splits: list[SplitFigures]
    cost: dict[str, Any] | None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "cost": self.cost, "files": self.files,
                "splits": {s.split: s.to_dict() for s in self.splits}}

    def lines(self) -> list[str]:
        out = []
        if self.cost:
            out.append(f"policy cost: {self.cost['macs']:,} MACs = {100 * self.cost['share_of_step']:.2f}% of one SNN "
                       f"timestep ({self.cost['snn_step_macs']:,} MACs)")
        for split in self.splits:
            out.append(f"on {split.split} ({split.data}, {split.samples} samples):")
            fixed = "  ".join(f"T={f['timesteps']}: {100 * f['accuracy']:.2f}%" for f in split.fixed)
            out.append(f"  Fixed T: {fixed}")
            for pol in split.policies:
                seenn, capped = pol["seenn_accuracy_at_same_timesteps"], pol["capped_accuracy_at_same_timesteps"]
                versus = "" if seenn is None else f"; SEENN-I at that T: {100 * seenn:.2f}%"
                versus += "" if capped is None else f", capped: {100 * capped:.2f}%"
                best = max(pol["combined_front"], key=lambda p: (p["accuracy"], -p["avg_timesteps"]))
                out.append(f"  beta {pol['beta']:<6g} acc {100 * pol['accuracy']:6.2f}%  avg T {pol['avg_timesteps']:.3f}"
                           f"  ({pol['verdict']}{versus}); +confidence best {100 * best['accuracy']:.2f}% at "
                           f"{best['avg_timesteps']:.3f} T (alpha {best['alpha']:.4g})")
        return out


def write_policy_report(folder: Path, candidates: list[int], splits: list[SplitFigures], cost: dict[str, Any] | None,
                        title: str) -> PolicyReport:
    """report.json and front.png in `folder` (the plot only where matplotlib is installed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = PolicyReport(candidates, splits, cost)
    plot = plot_policy_front(folder / REPORT_PLOT, splits, title)
    if plot is not None:
        report.files.append(str(plot))
    report.files.insert(0, str(folder / REPORT_JSON))
    write_json_atomic(folder / REPORT_JSON, report.to_dict())
    return report
