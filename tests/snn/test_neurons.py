"""Neuron dynamics against hand-computed sequences, and surrogate gradients against their formulas."""

import math

import pytest
import torch

from seenn_deploy.errors import UserError
from seenn_deploy.snn.neuron_config import NeuronConfig
from seenn_deploy.snn.neurons import IF, LIF
from seenn_deploy.snn.state import Frame
from seenn_deploy.snn.surrogate import Tanh, Triangle


def run_steps(neuron, xs, v0):
    v = torch.tensor([v0])
    spikes = []
    for x in xs:
        s, v = neuron.step(torch.tensor([x]), v)
        spikes.append(float(s))
    return spikes, float(v)


# Inputs are binary fractions, so every membrane value below is exact in float32.
# LIF, tau 0.5, theta 1: v = 0.5, 0.75, 1.125 (spike -> 0), 1.0 (spike only with >=), then 0.25 or 0.75.
@pytest.mark.parametrize(
    "firing, spikes, v_end",
    [(">=", [0, 0, 1, 1, 0], 0.25), (">", [0, 0, 1, 0, 0], 0.75)],
)
def test_lif_hard_reset_sequence(firing, spikes, v_end):
    neuron = LIF(tau=0.5, v_threshold=1.0, firing=firing).eval()
    got, v = run_steps(neuron, [0.5, 0.5, 0.75, 1.0, 0.25], 0.0)
    assert got == spikes
    assert v == v_end


# IF, theta 1, v_init 0.5 (converted models): soft reset subtracts theta.
@pytest.mark.parametrize(
    "firing, spikes, v_end",
    [(">=", [1, 0, 1, 1, 0], 0.0), (">", [0, 1, 1, 0, 0], 1.0)],
)
def test_if_soft_reset_sequence(firing, spikes, v_end):
    neuron = IF(v_threshold=1.0, v_init=0.5, firing=firing).eval()
    got, v = run_steps(neuron, [0.5, 0.25, 1.5, 0.25, 0.0], neuron.v_init)
    assert got == spikes
    assert v == v_end


def test_if_keeps_the_residue_above_two_thresholds():
    neuron = IF(v_threshold=1.0).eval()
    assert run_steps(neuron, [2.5, 0.0, 0.0], 0.0) == ([1, 1, 0], 0.5)


def test_lif_with_other_threshold_and_tau():
    neuron = LIF(tau=0.25, v_threshold=0.5).eval()
    # v = 0.25, 0.0625 + 0.25 = 0.3125, 0.078125 + 0.5 = 0.578125 -> spike -> 0
    assert run_steps(neuron, [0.25, 0.25, 0.5], 0.0) == ([0, 0, 1], 0.0)


def test_frame_form_equals_step_loop():
    """T timesteps folded time-major into the batch ([T*B, ...]) give the same spikes as T calls of step."""
    torch.manual_seed(0)
    neuron = LIF().eval()
    T, B = 5, 3
    xs = torch.rand(T, B, 4) * 1.5
    frame = Frame({neuron: "sn"}, timesteps=T)
    folded = neuron(xs.flatten(0, 1), frame).reshape(T, B, 4)
    v = torch.zeros(B, 4)
    for t in range(T):
        s, v = neuron.step(xs[t], v)
        assert torch.equal(folded[t], s)
    assert torch.equal(frame.new_states["sn.v"], v)
    assert frame.specs[0].name == "sn.v" and frame.specs[0].shape == (4,)


def test_eval_spike_is_a_plain_comparison_without_autograd():
    neuron = LIF().eval()
    x = torch.tensor([1.5], requires_grad=True)
    s, _ = neuron.step(x, torch.zeros(1))
    assert s.grad_fn is None and not s.requires_grad


@pytest.mark.parametrize(
    "surrogate, x, expected",
    [
        (Triangle(gamma=1.0), 1.25, 0.75),  # d = 0.25: 1 - |d|
        (Triangle(gamma=0.5), 1.25, 1.0),  # (0.5 - 0.25) / 0.25
        (Triangle(gamma=1.0), 2.5, 0.0),  # outside the triangle
        (Tanh(b=3.0), 1.0, 3.0 / (2 * math.tanh(1.5))),  # peak at the threshold
        (Tanh(b=3.0), 1.25, 3.0 / (2 * math.tanh(1.5)) * (1 - math.tanh(0.75) ** 2)),
        (Tanh(b=3.0), 1.75, 0.0),  # |d| > 1/2
    ],
)
def test_surrogate_gradient_in_training(surrogate, x, expected):
    neuron = LIF(surrogate=surrogate).train()
    xt = torch.tensor([x], requires_grad=True)
    s, _ = neuron.step(xt, torch.zeros(1))
    s.sum().backward()
    assert xt.grad.item() == pytest.approx(expected, rel=1e-6)
    assert float(s.detach()) == float(x >= 1.0)


def test_bad_neuron_parameters_are_user_errors():
    with pytest.raises(UserError, match="tau"):
        LIF(tau=2.0)
    with pytest.raises(UserError, match="v_threshold"):
        IF(v_threshold=0.0)
    with pytest.raises(UserError, match="firing"):
        LIF(firing="=>")
    with pytest.raises(UserError, match="known: lif, if"):
        NeuronConfig(kind="izhikevich")


def test_neuron_config_builds_what_it_says():
    neuron = NeuronConfig(kind="if", v_threshold=2.0, v_init=1.0, firing=">", surrogate="tanh", surrogate_param=4.0).build()
    assert isinstance(neuron, IF)
    assert (neuron.v_threshold, neuron.v_init, neuron.firing, neuron.surrogate) == (2.0, 1.0, ">", Tanh(4.0))
    assert NeuronConfig.from_dict(NeuronConfig(kind="if").to_dict()) == NeuronConfig(kind="if")
