"""Latency statistics: exact values on known samples, edge cases, percentile parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seenn_deploy.profile.latency import LatencyStats, parse_percentiles, throughput

ONE_TO_HUNDRED_MS = [i / 1000.0 for i in range(1, 101)]


def test_one_to_hundred_ms_by_hand():
    s = LatencyStats.from_samples(ONE_TO_HUNDRED_MS)
    assert s.count == 100
    assert s.min == pytest.approx(0.001)
    assert s.max == pytest.approx(0.100)
    assert s.mean == pytest.approx(0.0505)
    assert s.median == pytest.approx(0.0505)
    # Linear method: rank = p/100 * (n - 1) into the sorted samples (0-based).
    # p50: 49.5 -> 50 + 0.5 = 50.5; p90: 89.1 -> 90 + 0.1 = 90.1;
    # p95: 94.05 -> 95 + 0.05 = 95.05; p99: 98.01 -> 99 + 0.01 = 99.01 (ms).
    assert list(s.percentiles) == [50.0, 90.0, 95.0, 99.0]
    assert s.percentiles[50.0] == pytest.approx(0.0505)
    assert s.percentiles[90.0] == pytest.approx(0.0901)
    assert s.percentiles[95.0] == pytest.approx(0.09505)
    assert s.percentiles[99.0] == pytest.approx(0.09901)
    # Population std of 1..n is sqrt((n^2 - 1) / 12).
    assert s.std == pytest.approx(math.sqrt((100**2 - 1) / 12) / 1000.0)


def test_to_dict_is_in_milliseconds():
    d = LatencyStats.from_samples(ONE_TO_HUNDRED_MS).to_dict()
    assert d["count"] == 100
    assert d["min_ms"] == pytest.approx(1.0)
    assert d["max_ms"] == pytest.approx(100.0)
    assert d["mean_ms"] == pytest.approx(50.5)
    assert d["median_ms"] == pytest.approx(50.5)
    assert d["p90_ms"] == pytest.approx(90.1)
    assert d["p99_ms"] == pytest.approx(99.01)
    assert d["std_ms"] == pytest.approx(28.86607, rel=1e-6)


def test_text_matches_trtexec_layout():
    line = LatencyStats.from_samples(ONE_TO_HUNDRED_MS).text()
    assert line == (
        "Latency: min = 1 ms, max = 100 ms, mean = 50.5 ms, median = 50.5 ms, "
        "percentile(50%) = 50.5 ms, percentile(90%) = 90.1 ms, percentile(95%) = 95.05 ms, "
        "percentile(99%) = 99.01 ms"
    )
    one = LatencyStats.from_samples([0.00123071], percentiles=[99.9])
    custom = one.text(name="GPU Compute Time")
    assert custom == (
        "GPU Compute Time: min = 1.23071 ms, max = 1.23071 ms, mean = 1.23071 ms, "
        "median = 1.23071 ms, percentile(99.9%) = 1.23071 ms"
    )


def test_single_sample():
    s = LatencyStats.from_samples([0.0042])
    assert s.count == 1
    assert s.min == s.max == s.mean == s.median == pytest.approx(0.0042)
    assert s.std == 0.0
    assert all(v == pytest.approx(0.0042) for v in s.percentiles.values())


def test_custom_percentiles_and_unsorted_input_agree_with_numpy():
    rng = np.random.default_rng(0)
    x = rng.exponential(0.003, size=257)
    s = LatencyStats.from_samples(list(x), percentiles=[0, 12.5, 100])
    assert s.percentiles[0.0] == pytest.approx(x.min())
    assert s.percentiles[100.0] == pytest.approx(x.max())
    assert s.percentiles[12.5] == pytest.approx(np.percentile(x, 12.5))
    assert "p12.5_ms" in s.to_dict()


@pytest.mark.parametrize("bad", [[], np.array([])])
def test_empty_input_raises(bad):
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.from_samples(bad)


def test_non_finite_and_bad_percentile_raise():
    with pytest.raises(ValueError, match="NaN"):
        LatencyStats.from_samples([0.001, float("nan")])
    with pytest.raises(ValueError, match="outside 0..100"):
        LatencyStats.from_samples([0.001], percentiles=[101])


def test_parse_percentiles():
    assert parse_percentiles("50,90,95,99") == [50.0, 90.0, 95.0, 99.0]
    assert parse_percentiles(" 99.9 , 0,100") == [99.9, 0.0, 100.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no percentiles"),
        ("50,,90", "empty entry"),
        ("50,abc", "'abc'.*not a number"),
        ("101", "outside 0..100"),
        ("-1", "outside 0..100"),
        ("nan", "outside 0..100"),
    ],
)
def test_parse_percentiles_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_percentiles(text)


def test_throughput():
    assert throughput(500, 2.0) == 250.0
    assert throughput(0, 1.0) == 0.0
    with pytest.raises(ValueError):
        throughput(10, 0.0)
    with pytest.raises(ValueError):
        throughput(-1, 1.0)
