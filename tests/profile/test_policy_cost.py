"""The policy's cost: MACs counted by hand against one SNN timestep, its energy share, its timing, and `bench`
reporting it only for an exit that runs the policy."""

import json
import shutil

import numpy as np
import pytest
from torch import nn

from seenn_deploy.profile.energy import E_MAC_PJ
from seenn_deploy.profile.policy_cost import policy_cost, snn_step_macs, time_per_sample
from seenn_deploy.snn.model import InputSpec, SpikingModel
from seenn_deploy.snn.neurons import LIF
from seenn_deploy.snn.state import SpikingSequential


class Tiny(SpikingModel):
    """conv 1->2 (3x3, 4x4 image: 288 MACs) | LIF | flatten | fc 32->3 (96 MACs): 384 MACs per step."""

    def __init__(self):
        super().__init__(InputSpec(1, 4, 4), 3)
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
        self.body = SpikingSequential(LIF(), nn.Flatten(), nn.Linear(32, 3))


def test_policy_macs_against_one_snn_timestep_and_its_energy_share():
    snn = Tiny()
    assert snn_step_macs(snn) == 288 + 96
    policy = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Flatten(), nn.Linear(16, 2))  # 144 + 32 MACs
    cost = policy_cost(policy, (1, 4, 4), snn_step_macs(snn), ms_per_sample=0.01, snn_energy_pj=1000.0)
    assert cost.macs == 176 and cost.share_of_step == pytest.approx(176 / 384)
    assert cost.energy_pj == pytest.approx(E_MAC_PJ * 176)
    assert cost.share_of_energy == pytest.approx(E_MAC_PJ * 176 / (E_MAC_PJ * 176 + 1000.0))
    assert "45.833% of one SNN timestep" in cost.line()
    assert policy_cost(policy, (1, 4, 4), 384).share_of_energy is None


def test_time_per_sample_counts_every_sample_it_ran():
    seen = []
    seconds = time_per_sample(lambda block: seen.append(len(block)), np.zeros((10, 3)), batch=4, min_seconds=0.0)
    assert seen[:4] == [4, 4, 4, 2] and seconds >= 0  # one warm-up block, then one full pass
    assert sum(seen[1:]) == 10


@pytest.fixture(scope="module")
def policy_bundle(digits_checkpoint, tmp_path_factory):
    """A digits bundle with a policy graph (a barely trained one: only its presence and size matter here)."""
    from seenn_deploy.export.exporter import export_checkpoint
    from seenn_deploy.snn.checkpoint import read_config
    from seenn_deploy.train.policy_trainer import PolicyConfig, PolicyData, PolicyTrainer, training_rows

    checkpoint = shutil.copytree(digits_checkpoint, tmp_path_factory.mktemp("policy_cost") / "ckpt")
    fit, _ = training_rows(read_config(checkpoint), checkpoint, "digits")
    fit = type(fit)(fit.x[:64], fit.y[:64], fit.classes, fit.name)
    config = PolicyConfig(checkpoint, "digits", beta=1.0, candidates=[1, 2, 4], epochs=1, width=4)
    PolicyTrainer(config, log=lambda s: None, progress=False,
                  data=PolicyData(fit, None, np.ones((64, 3), dtype=bool), None)).run()
    bundle = checkpoint.parent / "policy.seenn"
    export_checkpoint(checkpoint, bundle)
    return checkpoint, bundle


def test_bench_reports_the_policys_cost_only_when_its_exit_runs_the_policy(policy_bundle, run_cli, tmp_path):
    """The runtime opens policy.onnx whenever the bundle has one; a confidence exit never calls it, so its
    cost (and its share of the energy) is no part of that run."""
    from seenn_deploy.snn.checkpoint import load_checkpoint, load_policy

    checkpoint, bundle = policy_bundle
    reports, printed = {}, {}
    for exit in ("confidence:0.9", "policy"):
        out = tmp_path / f"{exit}.json"
        result = run_cli("bench", "--engine", bundle, "--data", "digits", "--exit", exit, "--iterations", "1",
                         "--warmup-ms", "0", "--power", "none", "--json", out)
        assert result.code == 0, result.err
        reports[exit], printed[exit] = json.loads(out.read_text()), result.out
    assert reports["confidence:0.9"]["policy_cost"] is None and "MACs = " not in printed["confidence:0.9"]
    cost = reports["policy"]["policy_cost"]
    snn, config = load_checkpoint(checkpoint)
    policy, _ = load_policy(checkpoint, config)
    assert cost["macs"] == policy_cost(policy, snn.input_spec.shape, 1).macs > 0 and cost["ms_per_sample"] > 0
    assert 0 < cost["share_of_energy"] < 1 and f"policy: {cost['macs']:,} MACs = " in printed["policy"]


def test_bench_policy_cost_follows_the_measured_exit_not_the_runtimes_last_one(policy_bundle):
    """bench --compare fixed swaps the runtime's exit for Fixed(T_max) after the run it measured: the measured exit,
    policy+confidence here, is the one whose cost counts."""
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.profile.policy_cost import bench_policy_cost
    from seenn_deploy.runtime import Runtime
    from seenn_deploy.runtime.exit import Fixed, PolicyConfidence

    x = parse_data_spec("digits").load("test").x[:32]
    with Runtime.from_bundle(policy_bundle[1], exit="policy+confidence:0.9", batch=8) as runtime:
        measured = runtime.exit
        assert isinstance(measured, PolicyConfidence)
        runtime.exit = Fixed(runtime.manifest.timesteps)
        assert bench_policy_cost(runtime, x, None) == (None, None)
        cost, why = bench_policy_cost(runtime, x, None, measured)
    assert why is None and cost["macs"] > 0 and cost["ms_per_sample"] > 0 and cost["share_of_energy"] is None
