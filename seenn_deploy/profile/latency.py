"""Latency statistics as trtexec reports them: min, max, mean, median, percentiles, std.

Samples come in seconds; `to_dict()` and `text()` report milliseconds. Percentiles use
`numpy.percentile(..., method="linear")`: the rank of percentile p over n sorted samples is
p/100 * (n - 1), interpolated linearly between the two neighbouring samples (NumPy's default,
type 7 in Hyndman & Fan). trtexec itself picks the nearest sample, so on small runs the two can
differ by up to one sample spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["DEFAULT_PERCENTILES", "LatencyStats", "parse_percentiles", "throughput"]

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


def parse_percentiles(text: str) -> list[float]:
    """`"50,90,95,99"` -> `[50.0, 90.0, 95.0, 99.0]`; each value a number in 0..100."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError(f"no percentiles given in {text!r}; expected e.g. '50,90,95,99'")
    values: list[float] = []
    for part in parts:
        if not part:
            raise ValueError(
                f"empty entry in percentile list {text!r}; expected e.g. '50,90,95,99'"
            )
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"percentile {part!r} in {text!r} is not a number") from None
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise ValueError(f"percentile {part!r} in {text!r} is outside 0..100")
        values.append(value)
    return values


def throughput(count: int, seconds: float) -> float:
    """Items per second: `count / seconds`."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return count / seconds


def _label(p: float) -> str:
    return f"{p:g}"


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples; every time field is in seconds."""

    count: int
    min: float
    max: float
    mean: float
    median: float
    std: float
    percentiles: dict[float, float] = field(default_factory=dict)

    @classmethod
    def from_samples(
        cls, seconds: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
    ) -> "LatencyStats":
        """Statistics of `seconds` ([N] latencies in s). `std` is the population std (ddof=0)."""
        values = np.asarray(seconds, dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError("no latency samples: need at least one to compute statistics")
        if not np.all(np.isfinite(values)):
            raise ValueError("latency samples contain NaN or infinity")
        for p in percentiles:
            if not 0.0 <= float(p) <= 100.0:
                raise ValueError(f"percentile {p} is outside 0..100")
        qs = [float(p) for p in percentiles]
        pct = np.percentile(values, qs, method="linear") if qs else []
        return cls(
            count=int(values.size),
            min=float(values.min()),
            max=float(values.max()),
            mean=float(values.mean()),
            median=float(np.median(values)),
            std=float(values.std()),
            percentiles={q: float(v) for q, v in zip(qs, pct)},
        )

    def to_dict(self) -> dict[str, float | int]:
        """Milliseconds: `count, min_ms, max_ms, mean_ms, median_ms, std_ms, p90_ms, ...`."""
        out: dict[str, float | int] = {
            "count": self.count,
            "min_ms": self.min * 1e3,
            "max_ms": self.max * 1e3,
            "mean_ms": self.mean * 1e3,
            "median_ms": self.median * 1e3,
            "std_ms": self.std * 1e3,
        }
        for p, v in self.percentiles.items():
            out[f"p{_label(p)}_ms"] = v * 1e3
        return out

    def text(self, name: str = "Latency", digits: int = 6) -> str:
        """A trtexec-like line: `Latency: min = 1.23 ms, max = ..., percentile(90%) = ... ms`.

        Values have `digits` significant digits, as trtexec's default stream precision (6).
        """

        def ms(v: float) -> str:
            return f"{v * 1e3:.{digits}g} ms"

        items = [
            f"min = {ms(self.min)}",
            f"max = {ms(self.max)}",
            f"mean = {ms(self.mean)}",
            f"median = {ms(self.median)}",
        ]
        items += [f"percentile({_label(p)}%) = {ms(v)}" for p, v in self.percentiles.items()]
        return f"{name}: " + ", ".join(items)
