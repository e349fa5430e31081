"""matplotlib, imported lazily with the Agg backend, and the save step every plot shares."""

from __future__ import annotations

from pathlib import Path

from seenn_deploy.lazy import require


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); MissingDependency names the `plots` extra."""
    matplotlib = require("matplotlib", "plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return Path(path)
