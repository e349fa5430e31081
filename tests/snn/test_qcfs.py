"""The QCFS activation, and the IF neuron that replaces it: equal on a constant input at T = L."""

import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.neurons import IF
from seenn_deploy.snn.qcfs import QCFS
from seenn_deploy.snn.state import Frame


# lambda 2, L 4: y = 2 * clamp(floor(2x + 1/2) / 4, 0, 1); every x below is a multiple of 1/8 (exact in float32).
@pytest.mark.parametrize("x, y", [(-1.0, 0.0), (0.0, 0.0), (0.125, 0.0), (0.25, 0.5), (0.5, 0.5), (0.75, 1.0),
                                  (1.25, 1.5), (1.75, 2.0), (3.0, 2.0)])
def test_qcfs_clips_floors_and_shifts(x, y):
    assert QCFS(levels=4, threshold=2.0)(torch.tensor([x])).item() == y


def test_qcfs_gradient_passes_the_floor_and_reaches_lambda():
    act = QCFS(levels=4, threshold=2.0)
    x = torch.tensor([0.3, 1.0, 5.0, -1.0], requires_grad=True)
    act(x).sum().backward()
    # Inside (0, lambda) the floor is straight-through: dy/dx = 1; clipped values pass no gradient to x.
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    # dy/dlambda: the clipped-high value contributes 1 (y = lambda); inside, y = lambda q(x / lambda) gives q - x / lambda
    # through the straight-through floor: 0.25 - 0.15 and 0.5 - 0.5.
    assert act.threshold.grad.item() == pytest.approx(1.0 + 0.1 + 0.0)


def test_if_at_half_threshold_reproduces_qcfs_on_a_constant_input_at_t_equal_l():
    """The conversion's core: soft reset plus a lambda/2 start make T = L steps count floor(x L / lambda + 1/2) spikes."""
    levels, lam = 4, 2.0
    x = torch.arange(-8, 25, dtype=torch.float32) / 8  # -1 .. 3 in eighths, every rounding boundary included
    neuron = NeuronConfig(kind="if", v_threshold=lam, v_init=lam / 2, scale_spikes=True).build().eval()
    frame = Frame({neuron: "sn"}, timesteps=levels)
    out = neuron(x.repeat(levels), frame).reshape(levels, -1)
    assert torch.equal(out.mean(0), QCFS(levels, lam)(x).detach())
    assert set(frame.spikes["sn"].unique().tolist()) <= {0.0, 1.0}  # recorded spikes stay binary
    assert set(out.unique().tolist()) <= {0.0, lam}  # emitted spikes carry lambda


def test_half_threshold_start_and_soft_reset_by_hand():
    neuron = IF(v_threshold=2.0, v_init=1.0, scale_spikes=True).eval()
    frame = Frame({neuron: "sn"}, timesteps=4)
    # v: 1 + 0.75 = 1.75; 2.5 -> spike, 0.5; 1.25; 2.0 -> spike (>=), 0.0 (the residue is kept, not zeroed)
    out = neuron(torch.full((4, 1), 0.75), frame)  # [T*B, 1], B = 1
    assert out.flatten().tolist() == [0.0, 2.0, 0.0, 2.0]
    assert frame.new_states["sn.v"].item() == 0.0
    assert frame.specs[0].init == 1.0
    # A charge over two thresholds fires once per step and keeps the rest: 1 + 4.5 = 5.5 -> 3.5 -> 1.5.
    spikes, v = neuron.step(torch.tensor([4.5]), torch.tensor([1.0]))
    assert (spikes.item(), v.item()) == (1.0, 3.5)


def test_bad_qcfs_settings_are_user_errors():
    with pytest.raises(UserError, match="levels"):
        QCFS(levels=0)
    with pytest.raises(UserError, match="lambda"):
        QCFS(threshold=0.0)
    with pytest.raises(UserError, match="known: lif, if, qcfs, relu"):
        NeuronConfig(kind="gelu")


def test_activation_kinds_build_stateless_modules_and_records_stay_compatible():
    assert isinstance(NeuronConfig(kind="qcfs", levels=8, v_threshold=3.0).build(), QCFS)
    assert isinstance(NeuronConfig(kind="relu").build(), torch.nn.ReLU)
    assert not NeuronConfig(kind="qcfs").spiking and NeuronConfig(kind="if").spiking
    # Records written before the conversion fields existed compare equal (train --resume checks them).
    assert "levels" not in NeuronConfig().to_dict() and "scale_spikes" not in NeuronConfig().to_dict()
    qcfs = NeuronConfig(kind="qcfs", levels=8)
    assert NeuronConfig.from_dict(qcfs.to_dict()) == qcfs
