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
    assert missing_trt.returncode == 2 and "seenn-deploy[trt-cu12]" in missing_trt.stderr
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


def test_bench_measures_a_steady_stream_without_drain(digits_bundle, tmp_path):
    """Every step of the window runs a full batch: the answered samples' timesteps fill steps x batch rows,
    up to the rows in flight at the window's two ends. Replaying passes would add drain steps."""
    out = tmp_path / "bench.json"
    result = cli("bench", "--engine", digits_bundle, "--data", "digits", "--exit", "confidence:0.9", "--batch", "32",
                 "--iterations", "3", "--warmup-ms", "50", "--power", "none", "--json", out)
    assert result.returncode == 0, result.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert run["samples"] == 3 * 360 and run["passes"] == 3.0
    row_steps = run["samples"] * run["avg_timesteps"]
    assert abs(run["steps"] * 32 - row_steps) <= 32 * 4, (run["steps"], row_steps)


def test_run_and_bench_refuse_out_of_range_options(digits_bundle, run_cli):
    for args in (["--samples", "-5"], ["--samples", "0"], ["--threads", "100000"], ["--threads", "-1"],
                 ["--batch", "0"], ["--duration-s", "0"], ["--iterations", "0"]):
        error = run_cli("bench", "--engine", digits_bundle, "--synthetic", "--power", "none", *args).error()
        assert args[0] in error and "range" in error, error
    for args in (["--samples", "0"], ["--threads", "0"], ["--batch", "-1"]):
        error = run_cli("run", digits_bundle, "--data", "digits", *args).error()
        assert args[0] in error and "range" in error, error


def test_run_reports_service_time_and_queueing_apart(digits_bundle, run_cli, tmp_path):
    result = run_cli("run", digits_bundle, "--data", "digits", "--exit", "confidence:0.9", "--json", tmp_path / "r.json")
    assert result.code == 0, result.err
    assert "service time" in result.out and "(admission to exit)" in result.out and "queueing" in result.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0 < report["service_ms_mean"] <= report["service_ms_p99"]
    assert report["queue_ms_mean"] > 0 and "latency_ms_mean" not in report


def test_bench_times_the_thread_cpu_with_one_thread_and_refuses_it_otherwise(digits_bundle, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--engine", digits_bundle, "--data", "digits", "--exit", "confidence:0.9", "--compare", "fixed",
                 "--iterations", "1", "--warmup-ms", "0", "--power", "none", "--threads", "1", "--clock", "cpu",
                 "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    early, fixed = report["runs"]
    assert report["clock"] == "cpu" and 0 < early["cpu_seconds"] and 0 < fixed["cpu_seconds"]
    cpu_speedup = (early["samples"] / early["cpu_seconds"]) / (fixed["samples"] / fixed["cpu_seconds"])
    assert report["speedup"] == cpu_speedup and "(thread CPU time)" in result.stdout
    refused = cli("bench", "--engine", digits_bundle, "--synthetic", "--iterations", "1", "--power", "none",
                  "--clock", "cpu")
    assert refused.returncode == 2 and "--threads 1" in refused.stderr
