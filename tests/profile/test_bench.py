"""`seenn-deploy bench` on the CPU: the report's figures hang together, and bad input is refused."""

import json
import subprocess
import sys


def cli(*args):
    return subprocess.run([sys.executable, "-m", "seenn_deploy.cli", *map(str, args)], capture_output=True, text=True)


def test_bench_compares_early_exit_with_fixed(digits_bundle, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--engine", digits_bundle, "--data", "digits", "--exit", "confidence:0.9", "--batch", "16",
                 "--compare", "fixed", "--iterations", "1", "--warmup-ms", "0", "--power", "none",
                 "--json", out, "--plot", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    early, fixed = report["runs"]
    assert early["exit"] == "confidence:0.9" and fixed["exit"] == "fixed:4"
    assert early["samples"] == fixed["samples"] == 360
    assert sum(early["exit_histogram"]) == 360 and fixed["exit_histogram"] == [0, 0, 0, 360]
    assert 1.0 <= early["avg_timesteps"] < 4.0 and fixed["avg_timesteps"] == 4.0
    assert report["ideal_speedup"] == 4.0 / early["avg_timesteps"]
    assert report["share_of_ideal"] == report["speedup"] / report["ideal_speedup"]
    assert early["latency"]["min_ms"] <= early["latency"]["p50_ms"] <= early["latency"]["p99_ms"] <= early["latency"]["max_ms"]
    assert report["energy_estimate"]["total_uj_per_sample"] > 0
    assert "Speedup over Fixed(4)" in result.stdout
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"latency.png", "exits.png", "summary.md"}


def test_bench_refuses_bad_input(digits_bundle, tmp_path):
    missing_trt = cli("bench", "--engine", digits_bundle, "--synthetic", "--backend", "trt")
    assert missing_trt.returncode == 2 and "seenn-deploy[trt]" in missing_trt.stderr
    both = cli("bench", "--engine", digits_bundle, "--synthetic", "--data", "digits")
    assert both.returncode == 2 and "one of --data SPEC or --synthetic" in both.stderr
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00")
    assert "bundle directory" in cli("bench", "--engine", plan, "--synthetic").stderr
    bad = cli("bench", "--engine", digits_bundle, "--synthetic", "--percentiles", "50,101")
    assert bad.returncode == 2 and "outside 0..100" in bad.stderr


def test_bench_defaults_to_the_bundles_training_data(digits_bundle, tmp_path):
    result = cli("bench", "--engine", digits_bundle, "--iterations", "1", "--warmup-ms", "0", "--power", "none",
                 "--json", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr
    assert "digits" in result.stderr and json.loads((tmp_path / "b.json").read_text())["data"] == "digits (test)"
