"""Calibration: AET on the paper's example, the exact (alpha, T_cap) sweep, offline == online sample by sample,
and the choice made on held-out data and scored on test."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from seenn_deploy.calib.calibrate import Target, analyse, versus_fixed
from seenn_deploy.calib.select import for_accuracy_drop, for_timestep_budget
from seenn_deploy.calib.metrics import aet, empirical_aet, exit_scores
from seenn_deploy.calib.profile import profile_bundle
from seenn_deploy.calib.sweep import evaluate_alpha, exit_times, fixed_points, sweep, sweep_capped
from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Confidence, Runtime, read_manifest
from seenn_deploy.runtime.exit import Fixed, parse_exit
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


def random_profile(seed: int, steps: int = 5, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, (steps, n)).round(2)  # many ties
    correct = rng.uniform(0, 1, (steps, n)) < np.linspace(0.5, 0.8, steps)[:, None]
    return scores, correct


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capped_sweep_equals_the_direct_computation_at_every_alpha_and_cap(seed):
    scores, correct = random_profile(seed)
    sw = sweep_capped(scores, correct)
    assert sorted(set(sw.caps.tolist())) == [1, 2, 3, 4, 5]
    for cap in range(1, 6):
        rows = np.flatnonzero(sw.caps == cap)
        alphas = sw.alphas[rows]
        finite = alphas[np.isfinite(alphas)]
        probes = np.concatenate([finite, (finite[:-1] + finite[1:]) / 2, [1.0]]) if len(finite) else np.array([0.3, 1.0])
        for alpha in probes:
            i = rows[np.searchsorted(alphas, alpha, side="right") - 1]
            direct = evaluate_alpha(scores, correct, alpha, cap)
            assert (sw.accuracy[i], sw.avg_timesteps[i]) == pytest.approx((direct.accuracy, direct.avg_timesteps), abs=1e-12)
            assert direct.t_cap == cap


@pytest.mark.parametrize("seed", range(6))
def test_the_capped_front_is_at_or_above_every_fixed_point_and_targets_never_pick_a_dominated_point(seed):
    scores, correct = random_profile(seed, steps=4, n=300)
    sw = sweep_capped(scores, correct)
    fixed = fixed_points(correct)
    front = sw.pareto()
    for f in fixed:
        assert any(p.avg_timesteps <= f["timesteps"] and p.accuracy >= f["accuracy"] for p in front), f
    full = float(correct[-1].mean())
    picks = [for_accuracy_drop(sw, full, drop) for drop in (0, 0.5, 2, 5)]
    picks += [for_timestep_budget(sw, budget) for budget in (1, 1.5, 2.5, 4)]
    for point in picks:
        assert all(v["verdict"] != "dominated" for v in versus_fixed(point, fixed)), point


def test_a_fixed_point_that_beats_plain_seenn_i_is_found_by_the_capped_sweep():
    """Samples wrong but fairly confident at t=1, right and less confident later: plain SEENN-I either exits them
    at t=1 (wrong) or runs them to T=4; a cap of 2 stops them where they are already right."""
    # samples 0, 1: confident and right at t=1; samples 2, 3: wrong at 0.5, then right at 0.4-0.45
    scores = np.array([[0.9, 0.9, 0.5, 0.5], [0.9, 0.9, 0.4, 0.4], [0.9, 0.9, 0.45, 0.45], [0.9, 0.9, 0.45, 0.45]])
    correct = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    plain = for_accuracy_drop(sweep(scores, correct), 1.0, 0)
    assert (plain.accuracy, plain.avg_timesteps) == (1.0, 2.5)  # exits at 1, 1, 4, 4
    assert versus_fixed(plain, fixed_points(correct))[1]["verdict"] == "dominated"  # Fixed(2): 100% at 2.0
    capped = for_accuracy_drop(sweep_capped(scores, correct), 1.0, 0)
    assert (capped.accuracy, capped.avg_timesteps, capped.t_cap) == (1.0, 1.5, 2)  # exits at 1, 1, 2, 2
    assert capped.spelling() == f"confidence:{capped.alpha:.6g}@2"


def test_exit_spellings_with_a_cap(digits_bundle):
    manifest = read_manifest(digits_bundle)
    assert parse_exit("confidence:0.9@3", manifest) == Confidence(0.9, 3)
    assert parse_exit("confidence:0.9", manifest) == Confidence(0.9)
    assert parse_exit("fixed:2", manifest) == Fixed(2)
    for bad, message in [("confidence:1.5", "0 <= A < 1"), ("confidence:1", "0 <= A < 1"), ("fixed@2", "only the confidence"),
                         ("confidence:0.9@x", "not valid"), ("confidence:0.9@0", "cap T >= 1")]:
        with pytest.raises(UserError, match=message):
            parse_exit(bad, manifest)
    with pytest.raises(UserError, match="exceeds the bundle's T_max"):
        Confidence(0.5, 9).budgets(np.zeros((2, 1)), manifest.timesteps)
    for spelling in ("fixed:9", "confidence:0.5@9"):  # refused when the runtime opens, not at its first sample
        with pytest.raises(UserError, match="exceeds the bundle's T_max 4"):
            Runtime.from_bundle(digits_bundle, exit=spelling)


@pytest.fixture(scope="module")
def profiled(digits_bundle):
    manifest = read_manifest(digits_bundle)
    data = parse_data_spec("digits").load("test")
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    return data, profile_bundle(digits_bundle, manifest, step, encoder, data.x, data.y, data.name)


@pytest.mark.parametrize("quantile, cap", [(0.1, None), (0.5, None), (0.9, None), (0.5, 2), (0.9, 3), (0.2, 1)])
@pytest.mark.parametrize("mode, batch", [("slots", 32), ("compact", 16), ("slots", 1)])
def test_offline_sweep_predicts_the_runtime_sample_by_sample(digits_bundle, profiled, quantile, cap, mode, batch):
    data, profile = profiled
    scores = profile.scores["confidence"]
    alpha = float(np.quantile(scores[0], quantile))
    t = exit_times(scores[: cap or profile.timesteps], alpha)
    predicted = profile.prediction[t - 1, np.arange(len(t))]
    with Runtime.from_bundle(digits_bundle, exit=Confidence(alpha, cap), mode=mode, batch=batch) as runtime:
        results = runtime.infer(data.x)
    assert [r.timesteps for r in results] == t.tolist()
    assert [r.prediction for r in results] == predicted.tolist()
    point = evaluate_alpha(scores, profile.correct(), alpha, cap)
    assert point.accuracy == np.mean([r.prediction == y for r, y in zip(results, data.y)])


def test_targets_pick_the_right_points(profiled):
    _, profile = profiled
    full = profile.correct()[-1].mean()
    report, chosen = analyse(profile, None, "confidence", Target(drop=0.5), "validation")
    assert chosen.accuracy >= full - 0.005
    assert report.choice["fixed"][-1]["accuracy"] == full
    _, budget = analyse(profile, None, "confidence", Target(timesteps=1.5), "validation")
    assert budget.avg_timesteps <= 1.5
    with pytest.raises(UserError, match="fewest reachable is 1.000"):
        analyse(profile, None, "confidence", Target(timesteps=0.5), "validation")
    with pytest.raises(UserError, match="one of"):
        analyse(profile, None, "confidence", Target(drop=1.0, alpha=0.5), "validation")
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        analyse(profile, None, "confidence", Target(alpha=1.0), "validation")
    report, _ = analyse(profile, profile, "confidence", Target(drop=0.5), "test")
    assert any("optimistic" in w for w in report.warnings)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "seenn_deploy.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_calibrate_chooses_on_the_validation_slice_and_scores_test_once(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    assert read_manifest(bundle).provenance["validation"]["fraction"] == 0.1
    result = cli("calibrate", bundle, "--target-drop", "1.0", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["chosen_on"] == "validation" and "validation slice" in report["choice"]["data"]
    assert "(test)" in report["test"]["data"] and report["test"]["samples"] == len(parse_data_spec("digits").load("test"))
    assert report["choice"]["samples"] != report["test"]["samples"]
    manifest = read_manifest(bundle)
    chosen = report["chosen"]
    assert parse_exit(None, manifest) == parse_exit(chosen["exit"], manifest)
    assert manifest.history[-1]["previous_exit"] == {"kind": "fixed", "alpha": None, "t_cap": None}
    for plot in report["plots"]:
        assert (bundle / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the test figures are those of the runtime on the test split
    data = parse_data_spec("digits").load("test")
    with Runtime.from_bundle(bundle, batch=16) as runtime:
        results = runtime.infer(data.x)
    assert np.mean([r.prediction == y for r, y in zip(results, data.y)]) == report["test"]["chosen"]["accuracy"]
    assert np.mean([r.timesteps for r in results]) == pytest.approx(report["test"]["chosen"]["avg_timesteps"])
    # the stored profiles serve a second target without running the model
    again = cli("calibrate", "b", "--target-timesteps", "2", "--json", "r2.json", cwd=tmp_path)  # a relative bundle path
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r2.json").read_text())["plots"] == ["calib/curve.png", "calib/exits.png", "calib/scores.png"]
    assert "profiling" not in again.stderr and len(read_manifest(bundle).history) == 2


def test_calibrate_writes_the_exit_without_matplotlib(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    blocker = ("import importlib.abc, sys\n"
               "class Block(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.split('.')[0] == 'matplotlib': raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "from seenn_deploy.cli import main\n"
               f"main(['calibrate', {str(bundle)!r}, '--target-drop', '1', '--quiet'])\n")
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "plots skipped" in result.stdout and "seenn-deploy[plots]" in result.stdout
    assert read_manifest(bundle).exit.kind in ("confidence", "fixed") and len(read_manifest(bundle).history) == 1
    assert not (bundle / "calib" / "curve.png").exists()


def test_calibrate_refuses_bad_alphas(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    for alpha in ("1.5", "1", "-0.1"):
        result = cli("calibrate", bundle, "--alpha", alpha)
        assert result.returncode == 2 and "--alpha" in result.stderr, result.stderr
    assert read_manifest(bundle).history == []


def test_a_profile_from_another_bundle_is_not_reused(digits_bundle, digits_checkpoint, tmp_path):
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    assert cli("calibrate", bundle, "--samples", "50", "--no-plots", "--target-drop", "5").returncode == 0
    export_checkpoint(digits_checkpoint, tmp_path / "other", ExportOptions(temperature=2.0))
    shutil.copytree(bundle / "calib", tmp_path / "other" / "calib")
    result = cli("calibrate", tmp_path / "other", "--samples", "50", "--no-plots", "--target-drop", "5")
    assert result.returncode == 0, result.stderr
    assert "profiling" in result.stderr  # the copied profiles were made on another graph: profiled anew


def test_labels_are_needed_to_choose(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    data = parse_data_spec("digits").load("test")
    np.savez(tmp_path / "nolabels.npz", x=data.x[:40, 0])
    result = cli("calibrate", bundle, "--calib-data", f"npz:{tmp_path / 'nolabels.npz'}", "--calib-split", "all",
                 "--no-test", "--target-drop", "1")
    assert result.returncode == 2 and "no labels" in result.stderr
    np.savez(tmp_path / "eleven.npz", x=data.x[:40, 0], y=np.arange(40) % 12)
    result = cli("calibrate", bundle, "--calib-data", f"npz:{tmp_path / 'eleven.npz'}", "--calib-split", "all",
                 "--no-test", "--target-drop", "1")
    assert result.returncode == 2 and "has label 11" in result.stderr, result.stderr


def test_calibrate_never_writes_through_a_calib_symlink_out_of_the_bundle(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    (tmp_path / "outside").mkdir()
    (bundle / "calib").symlink_to(tmp_path / "outside")
    result = cli("calibrate", bundle, "--target-drop", "1", "--samples", "20")
    assert result.returncode == 2 and "outside the bundle" in result.stderr, result.stderr
    assert list((tmp_path / "outside").iterdir()) == [] and read_manifest(bundle).history == []


def test_json_to_stdout_stays_parseable_and_entropy_is_refused_before_any_work(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    result = cli("calibrate", bundle, "--target-drop", "1", "--no-plots", "--quiet", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["chosen"]["exit"] and "chosen on" in result.stderr  # the report went to stderr
    refused = cli("calibrate", bundle, "--metric", "entropy", "--target-drop", "1", "--samples", "20")
    assert refused.returncode == 2 and "--no-write" in refused.stderr and "profiling" not in refused.stderr
