"""`calibrate` on a bundle with a SEENN-II policy: the alpha it writes for policy+confidence is chosen on that
exit's own exact sweep, and the runtime then gives, sample by sample, the figures calibrate reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Runtime, read_manifest


def test_calibrate_chooses_policy_confidence_on_its_own_sweep_and_the_runtime_agrees(run_cli, policy_bundle, tmp_path):
    _, bundle = policy_bundle  # tests/conftest.py: candidates [1, 2, 4], each one picked
    out = tmp_path / "calib.json"
    result = run_cli("calibrate", bundle, "--target-drop", "1", "--no-plots", "--quiet", "--json", out)
    assert result.code == 0, result.err
    policy = json.loads(out.read_text())["policy"]
    chosen, on_test = policy["chosen"], policy["test"]["chosen"]
    assert "SEENN-II policy exit:" in result.out and f"chosen {chosen['exit']}" in result.out
    cost = policy["cost"]  # the policy's price beside the SNN's: MACs against one timestep, time per sample
    assert cost["macs"] > 0 and cost["share_of_step"] == pytest.approx(cost["macs"] / cost["snn_step_macs"])
    assert cost["ms_per_sample"] > 0 and f"policy: {cost['macs']:,} MACs" in result.out
    manifest = read_manifest(bundle)
    assert manifest.exit.kind == "policy" and manifest.exit.alpha == pytest.approx(chosen["alpha"])
    full = json.loads(out.read_text())["choice"]["fixed"][-1]["accuracy"]
    assert chosen["accuracy"] >= full - 0.01 - 1e-12  # the target holds on the choice set
    assert chosen["avg_timesteps"] <= policy["policy"]["avg_timesteps"]  # a cap never adds steps
    test = parse_data_spec("digits").load("test")
    with Runtime.from_bundle(bundle) as runtime:  # the default: the plain policy
        plain = runtime.infer(test.x)
    with Runtime.from_bundle(bundle, exit="policy+confidence") as runtime:  # the alpha calibrate wrote
        combined = runtime.infer(test.x)
    for results, figures in ((plain, policy["test"]["policy"]), (combined, on_test)):
        steps = np.array([r.timesteps for r in results])
        right = np.array([r.prediction for r in results]) == test.y
        assert (right.mean(), steps.mean()) == pytest.approx((figures["accuracy"], figures["avg_timesteps"]), abs=1e-12)
    assert np.mean([r.timesteps for r in combined]) < np.mean([r.timesteps for r in plain])  # alpha exits some early
