"""The energy estimate on a tiny network counted by hand."""

import pytest
import torch
from torch import nn

from seenn_deploy.profile.energy import estimate_energy
from seenn_deploy.snn.model import InputSpec, SpikingModel
from seenn_deploy.snn.neurons import LIF
from seenn_deploy.snn.state import SpikingSequential


class Tiny(SpikingModel):
    """conv 1->2 (3x3, 4x4 image) | LIF | flatten | fc 32->3. Channel 0 always fires, channel 1 never."""

    def __init__(self):
        super().__init__(InputSpec(1, 4, 4), 3)
        conv = nn.Conv2d(1, 2, 3, padding=1)
        conv.weight.data.zero_()
        conv.bias.data = torch.tensor([2.0, -1.0])  # LIF: v = 0.5 v + 2 >= 1 every step; -1 never
        self.encoder = nn.Sequential(conv)
        self.body = SpikingSequential(LIF(), nn.Flatten(), nn.Linear(32, 3))


@pytest.mark.parametrize("once", [True, False])
def test_energy_of_a_tiny_network_by_hand(once):
    model = Tiny()
    estimate = estimate_energy(model, torch.randn(5, 1, 4, 4), timesteps=4, avg_timesteps=2.5, encoder_runs_once=once)
    conv, fc = estimate.layers
    assert (conv.kind, conv.macs_per_step) == ("analog", 4 * 4 * 2 * 9)  # 288 MACs
    assert (fc.kind, fc.macs_per_step, fc.rate) == ("spike", 32 * 3, 0.5)  # half the inputs spike, always
    conv_runs = 1 if once else 2.5
    assert conv.energy_pj == pytest.approx(4.6 * 288 * conv_runs)
    assert fc.ops_per_sample == pytest.approx(0.5 * 2.5 * 96)  # SOPs = rate x T x MACs = 120
    assert fc.energy_pj == pytest.approx(0.9 * 120)
    assert estimate.total_uj == pytest.approx((4.6 * 288 * conv_runs + 0.9 * 120) * 1e-6)


@pytest.mark.parametrize("once", [True, False])
def test_the_estimate_at_another_average_equals_a_fresh_estimate_there(once):
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(5, 1, 4, 4)
    fresh = estimate_energy(model, x, timesteps=4, avg_timesteps=1.75, encoder_runs_once=once)
    moved = estimate_energy(model, x, timesteps=4, avg_timesteps=3.0, encoder_runs_once=once).at(1.75)
    assert moved.avg_timesteps == 1.75 and moved.total_uj == pytest.approx(fresh.total_uj)
    assert [layer.energy_pj for layer in moved.layers] == pytest.approx([layer.energy_pj for layer in fresh.layers])
