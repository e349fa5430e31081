"""Calibration: AET on the paper's example, the exact sweep, and offline == online, sample by sample."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from seenn_deploy.calib.calibrate import Target, analyse, load_profile
from seenn_deploy.calib.metrics import aet, empirical_aet, exit_scores
from seenn_deploy.calib.profile import profile_bundle
from seenn_deploy.calib.sweep import evaluate_alpha, exit_times, sweep
from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Confidence, Runtime, read_manifest
from seenn_deploy.runtime.loop import open_bundle_graphs


def test_aet_on_the_papers_example():
    correct = np.array([[False], [True], [False], [True]])
    assert empirical_aet(correct) == 2.0
    assert aet(correct) == 3.0


def test_aet_counts_never_correct_samples_at_t_max():
    correct = np.array([[True, False], [True, False], [True, False]])
    assert empirical_aet(correct) == 2.0  # (1 + 3) / 2
    assert aet(correct) == 2.0  # 1 * 0.5 + 3 * (1 - 0.5)


def test_entropy_score_is_one_for_one_hot_and_zero_for_uniform():
    p = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_allclose(exit_scores(p, "entropy"), [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(exit_scores(p, "confidence"), [1.0, 0.25])


def test_exit_times_use_a_strict_comparison():
    scores = np.array([[0.5, 0.9], [0.7, 0.2], [0.1, 0.1]])
    assert exit_times(scores, 0.5).tolist() == [2, 1]  # 0.5 is not above 0.5
    assert exit_times(scores, 0.95).tolist() == [3, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_equals_the_direct_computation_at_every_alpha(seed):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, (5, 400)).round(2)  # many ties
    correct = rng.uniform(0, 1, (5, 400)) < 0.7
    sw = sweep(scores, correct)
    assert len(np.unique(sw.alphas)) == len(sw.alphas)
    finite = sw.alphas[np.isfinite(sw.alphas)]
    probes = np.concatenate([finite, (finite[:-1] + finite[1:]) / 2, [finite.max() + 0.01]])
    for alpha in probes:
        i = np.searchsorted(sw.alphas, alpha, side="right") - 1  # the point whose interval holds alpha
        direct = evaluate_alpha(scores, correct, alpha)
        assert (sw.accuracy[i], sw.avg_timesteps[i]) == pytest.approx((direct.accuracy, direct.avg_timesteps), abs=1e-12)
    front = sw.pareto()
    assert all(a.avg_timesteps <= b.avg_timesteps and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))


@pytest.fixture(scope="module")
def profiled(digits_bundle):
    manifest = read_manifest(digits_bundle)
    data = parse_data_spec("digits").load("test")
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    return data, profile_bundle(digits_bundle, manifest, step, encoder, data.x, data.y, data.name)


@pytest.mark.parametrize("quantile", [0.1, 0.5, 0.9])
def test_offline_sweep_predicts_the_runtime_sample_by_sample(digits_bundle, profiled, quantile):
    data, profile = profiled
    scores = profile.scores["confidence"]
    alpha = float(np.quantile(scores[0], quantile))
    t = exit_times(scores, alpha)
    predicted = profile.prediction[t - 1, np.arange(len(t))]
    with Runtime.from_bundle(digits_bundle, exit=Confidence(alpha), mode="slots", batch=32) as runtime:
        results = runtime.infer(data.x)
    assert [r.timesteps for r in results] == t.tolist()
    assert [r.prediction for r in results] == predicted.tolist()
    point = evaluate_alpha(scores, profile.correct(), alpha)
    assert point.accuracy == np.mean([r.prediction == y for r, y in zip(results, data.y)])


def test_targets_pick_the_right_points(profiled):
    _, profile = profiled
    full = profile.correct()[-1].mean()
    report, chosen = analyse(profile, "confidence", Target(drop=0.5))
    assert chosen.accuracy >= full - 0.005
    assert report.fixed[-1]["accuracy"] == full
    _, budget = analyse(profile, "confidence", Target(timesteps=1.5))
    assert budget.avg_timesteps <= 1.5
    with pytest.raises(UserError, match="fewest reachable is 1.000"):
        analyse(profile, "confidence", Target(timesteps=0.5))
    with pytest.raises(UserError, match="one of"):
        analyse(profile, "confidence", Target(drop=1.0, alpha=0.5))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "seenn_deploy.cli", *map(str, args)], capture_output=True, text=True)


def test_calibrate_writes_alpha_history_report_and_plots(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    result = cli("calibrate", bundle, "--data", "digits", "--target-drop", "1.0", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    manifest = read_manifest(bundle)
    assert manifest.exit.kind == "confidence" and manifest.exit.alpha == report["chosen"]["alpha"]
    assert manifest.history[-1]["previous_exit"] == {"kind": "fixed", "alpha": None}
    for plot in report["plots"]:
        assert (bundle / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stored profile serves a second target without running the model
    again = cli("calibrate", bundle, "--target-timesteps", "2", "--no-plots")
    assert again.returncode == 0, again.stderr
    assert len(read_manifest(bundle).history) == 2


def test_a_profile_from_another_bundle_is_refused(digits_bundle, digits_checkpoint, tmp_path):
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    assert cli("calibrate", bundle, "--data", "digits", "--samples", "50", "--no-plots").returncode == 0
    export_checkpoint(digits_checkpoint, tmp_path / "other", ExportOptions(temperature=2.0))
    (tmp_path / "other" / "calib").mkdir()
    shutil.copy(bundle / "calib" / "profile.npz", tmp_path / "other" / "calib" / "profile.npz")
    with pytest.raises(UserError, match="another bundle"):
        load_profile(tmp_path / "other", read_manifest(tmp_path / "other"))
    result = cli("calibrate", tmp_path / "other", "--target-drop", "1")
    assert result.returncode == 2 and "another bundle" in result.stderr


def test_labels_are_needed_for_accuracy_targets(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    data = parse_data_spec("digits").load("test")
    np.savez(tmp_path / "nolabels.npz", x=data.x[:40, 0])
    result = cli("calibrate", bundle, "--data", f"npz:{tmp_path / 'nolabels.npz'}", "--split", "all",
                 "--target-drop", "1")
    assert result.returncode == 2 and "no labels" in result.stderr
    result = cli("calibrate", bundle, "--target-drop", "1", "--no-plots")  # the unlabelled profile was kept
    assert result.returncode == 2 and "no labels" in result.stderr
    ok = cli("calibrate", bundle, "--alpha", "0.9", "--no-plots")
    assert ok.returncode == 0 and read_manifest(bundle).exit.alpha == 0.9
