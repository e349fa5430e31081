"""SEENN-II at run time: the exported policy picks each sample's T exactly as the trained policy does offline,
in every scheduler mode and backend; and the combined exit, policy+confidence:ALPHA."""

from __future__ import annotations

import numpy as np
import pytest

from seenn_deploy.data import Normalisation, parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Policy, Runtime, read_manifest, run_timesteps
from seenn_deploy.runtime.exit import PolicyConfidence, parse_exit
from seenn_deploy.runtime.loop import open_bundle_graphs

CANDIDATES = [1, 2, 4]  # those of tests/conftest.py's policy_bundle
ALPHA = 0.9
MODES = [("slots", True), ("slots", False), ("compact", False), ("naive", False)]
MODE_IDS = ["slots-device-states", "slots-host-states", "compact", "naive"]


@pytest.fixture(scope="module")
def digits():
    return parse_data_spec("digits").load("test")


@pytest.fixture(scope="module")
def offline(policy_bundle, digits) -> np.ndarray:
    """The trained policy's T per test sample, from the checkpoint in torch."""
    from seenn_deploy.snn.checkpoint import load_policy, read_config
    from seenn_deploy.train.policy_trainer import policy_choices

    checkpoint, _ = policy_bundle
    config = read_config(checkpoint)
    policy, candidates = load_policy(checkpoint, config)
    picks = np.asarray(candidates)[policy_choices(policy, digits, Normalisation.from_dict(config.normalisation))]
    assert len(set(picks.tolist())) == len(CANDIDATES)  # every candidate is picked: the test can tell them apart
    return picks


@pytest.mark.parametrize("mode, device_states", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("batch", [1, 16])
def test_runtime_policy_exits_equal_the_offline_decisions(policy_bundle, digits, offline, mode, device_states, batch):
    with Runtime.from_bundle(policy_bundle[1], mode=mode, batch=batch, device_states=device_states) as runtime:
        assert isinstance(runtime.exit, Policy)  # the bundle's default exit
        results = runtime.infer(digits.x)
    assert [r.timesteps for r in results] == offline.tolist()


def test_streamed_and_torch_backend_policy_exits_equal_the_offline_decisions(policy_bundle, digits, offline):
    with Runtime.from_bundle(policy_bundle[1], batch=4) as runtime:
        futures = [runtime.submit(x) for x in digits.x]
        streamed = [f.result(timeout=60).timesteps for f in futures]
    assert streamed == offline.tolist()
    with Runtime.from_bundle(policy_bundle[1], backend="torch", batch=16) as runtime:
        assert [r.timesteps for r in runtime.infer(digits.x)] == offline.tolist()


@pytest.fixture(scope="module")
def trace(policy_bundle, digits):
    manifest = read_manifest(policy_bundle[1])
    step, encoder = open_bundle_graphs(policy_bundle[1], manifest)
    return run_timesteps(manifest, step, digits.x, encoder=encoder)


@pytest.mark.parametrize("mode, device_states", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("batch", [1, 16])
def test_policy_plus_confidence_stops_at_the_policy_t_or_earlier_when_confident(policy_bundle, digits, offline, trace,
                                                                                mode, device_states, batch):
    above = trace.confidence > np.float32(ALPHA)
    confident = np.where(above.any(0), above.argmax(0) + 1, 10**6)
    expected = np.minimum(offline, confident)
    assert (expected < offline).any() and (expected == offline).any()  # both rules decide somewhere
    cols = np.arange(len(digits.x))
    with Runtime.from_bundle(policy_bundle[1], exit=f"policy+confidence:{ALPHA}", mode=mode, batch=batch,
                             device_states=device_states) as runtime:
        assert runtime.exit.describe() == f"policy+confidence:{ALPHA}"
        results = runtime.infer(digits.x)
    assert [r.timesteps for r in results] == expected.tolist()
    assert [r.prediction for r in results] == trace.prediction[expected - 1, cols].tolist()


def test_exit_spellings_with_a_policy(policy_bundle):
    manifest = read_manifest(policy_bundle[1])
    executor = object()  # parse_exit only hands the policy graph's executor on
    assert isinstance(parse_exit(None, manifest, executor), Policy)
    combined = parse_exit("policy+confidence:0.5", manifest, executor)
    assert isinstance(combined, PolicyConfidence) and combined.candidates == CANDIDATES and combined.alpha == 0.5
    with pytest.raises(UserError, match="no calibrated alpha: give policy\\+confidence:ALPHA"):
        parse_exit("policy+confidence", manifest, executor)
    manifest.exit.alpha = 0.75  # as `calibrate` records it
    assert parse_exit("policy+confidence", manifest, executor).alpha == 0.75
    with pytest.raises(UserError, match="0 <= A < 1"):
        parse_exit("policy+confidence:1.5", manifest, executor)
    with pytest.raises(UserError, match="not valid"):
        parse_exit("policy+confidence:high", manifest, executor)
    with pytest.raises(UserError, match="needs a bundle with policy.onnx"):
        parse_exit("policy+confidence:0.5", manifest, None)
    with pytest.raises(UserError, match="is not one of"):
        parse_exit("policy:3", manifest, executor)
