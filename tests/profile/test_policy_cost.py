"""The policy's cost: MACs counted by hand against one SNN timestep, its energy share, its timing."""

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
