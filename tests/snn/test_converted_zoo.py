"""Every spiking architecture as an ANN (QCFS, ReLU), with BN folded, and with per-neuron settings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neurons import SpikingNeuron
from seenn_deploy.snn.qcfs import QCFS
from seenn_deploy.snn.zoo import create_model, list_models
from seenn_deploy.snn.zoo.converted import fold_batch_norm

SPIKING = [entry.name for entry in list_models() if entry.spiking]
QCFS_NEURON = {"kind": "qcfs", "levels": 4, "v_threshold": 2.0}


def small(name: str, **kwargs) -> SpikingModel:
    size = 32 if name == "vgg16" else 12
    torch.manual_seed(0)
    return create_model(name, num_classes=5, in_channels=3, image_size=size, **kwargs)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name", SPIKING)
def test_the_ann_has_an_activation_where_the_snn_has_a_neuron(name):
    snn, ann = small(name), small(name, neuron=QCFS_NEURON)
    neurons = [n for n, m in snn.named_modules() if isinstance(m, SpikingNeuron)]
    assert [n for n, m in ann.named_modules() if isinstance(m, QCFS)] == neurons
    assert ann.state_specs() == []  # stateless: one timestep is the whole ANN
    relu = small(name, neuron={"kind": "relu"})
    assert [n for n, m in relu.named_modules() if isinstance(m, nn.ReLU)] == neurons
    x = torch.randn(2, *ann.input_spec.shape)
    logits = ann.train()(x, timesteps=1)[0]
    logits.logsumexp(-1).sum().backward()
    lambdas = [m.threshold.grad for m in ann.modules() if isinstance(m, QCFS)]
    assert all(g is not None and torch.isfinite(g) for g in lambdas) and any(g != 0 for g in lambdas)


@pytest.mark.parametrize("name", SPIKING)
def test_folding_batch_norm_keeps_the_output_and_matches_the_rebuilt_structure(name):
    ann = randomise_batchnorm(small(name, neuron={"kind": "relu"}))
    folded = fold_batch_norm(copy.deepcopy(ann))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, *ann.input_spec.shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, timesteps=1), ann(x, timesteps=1), atol=1e-4, rtol=1e-4)
    rebuilt = small(name, neuron={"kind": "relu"}, fold_bn=True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in folded.state_dict().items()}


def test_per_neuron_settings_reach_their_neurons_and_their_initial_states():
    model = small("resnet20", neuron={"kind": "if", "v_init": 0.5}, neurons={
        "body.layers.0": {"v_threshold": 3.0, "v_init": 1.5},
        "body.layers.1.layers.0.residual.layers.2": {"v_threshold": 0.25, "v_init": 0.125},
    })
    assert model.get_submodule("body.layers.0").v_threshold == 3.0
    inits = {s.name: s.init for s in model.state_specs()}
    assert inits["body.layers.0.v"] == 1.5 and inits["body.layers.1.layers.0.residual.layers.2.v"] == 0.125
    assert sorted(set(inits.values())) == [0.125, 0.5, 1.5]  # the rest keep the model's neuron config


def test_per_neuron_settings_for_a_module_that_is_no_neuron_are_refused():
    with pytest.raises(UserError, match="does not have"):
        small("spiking_cnn", neuron={"kind": "if"}, neurons={"body.layers.1": {"v_threshold": 2.0}})
    with pytest.raises(UserError, match="does not have"):
        small("spiking_cnn", neuron={"kind": "if"}, neurons={"body.nowhere": {"v_threshold": 2.0}})
    with pytest.raises(UserError, match="unknown fields"):
        small("spiking_cnn", neuron={"kind": "if"}, neurons={"body.layers.0": {"threshold": 2.0}})
