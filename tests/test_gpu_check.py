"""benchmarks/gpu_check.py's dry run (--cpu): the script and the GPU code paths it drives still fit together,
so the one call on a lent GPU machine does not fail on a rename. Its figures mean nothing on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_passes_every_section(digits_bundle, digits_checkpoint, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--bundle",
                             str(digits_bundle), "--checkpoint", str(digits_checkpoint)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.strip().endswith("4 passed, 0 failed")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    graphs, broken = report["cudart"]["graphs"], report["cudart"]["capture_breaks"]
    assert graphs["captured"] == 4 and graphs["graph_error"] is None and graphs["instantiated_graphs_before_close"] == 4
    assert broken["graph_error"] and broken["instantiated_graphs_before_close"] == 0 and broken["warnings"]
    assert report["torch"]["race_probe_mismatches_of_20"] == 0 and report["torch"]["eager"]["agree_with_ort_cpu"] == 1.0
    assert report["nvml"]["idle_after"]["starts_fresh"]
