"""The contract every registered model honours, checked for each one (new models are covered automatically)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.snn.model import SpikingModel
from seenn_deploy.snn.neurons import SpikingNeuron
from seenn_deploy.snn.zoo import create_model, get_entry, list_models

MODELS = [entry.name for entry in list_models()]
SPIKING = [entry.name for entry in list_models() if entry.spiking]
ANN = [entry.name for entry in list_models() if not entry.spiking]

T, B, K = 3, 2, 5


def small_model(name: str, **kwargs) -> nn.Module:
    """The model at the smallest of 16, 32, 64 pixels it accepts: 3 channels, K classes, seeded weights."""
    for size in (16, 32, 64):
        torch.manual_seed(0)
        try:
            return create_model(name, num_classes=K, in_channels=3, image_size=size, **kwargs)
        except UserError:
            continue
    raise AssertionError(f"{name} accepts none of the image sizes 16, 32, 64")


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2 + 0.2)


def inputs(model: nn.Module, *lead: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, *model.input_spec.shape, generator=g) * 2.0


def step_loop(model: SpikingModel, frames: list[torch.Tensor], states: dict | None = None) -> torch.Tensor:
    """Logits [T, B, K] of model.step fed frames[t] at step t, from `states` (default init_states)."""
    states = model.init_states(frames[0].shape[0]) if states is None else states
    out = []
    for x_t in frames:
        logits, new_states = model.step(x_t, states)
        assert new_states.keys() == states.keys()
        for name, value in new_states.items():
            assert value.shape == states[name].shape, name
        states = new_states
        out.append(logits)
    return torch.stack(out)


class SpikeRecorder:
    """Forward hooks on every neuron: the spikes each one emitted, in call order."""

    def __init__(self, model: nn.Module) -> None:
        self.neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
        self.spikes: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in self.neurons}
        self.hooks = [m.register_forward_hook(self._record) for m in self.neurons]

    def _record(self, module: nn.Module, _inputs, output: torch.Tensor) -> None:
        self.spikes[module].append(output.detach())

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def per_step(self, steps: int) -> list[torch.Tensor]:
        """Each neuron's spikes as [T, B, ...], from one multi-step call or from `steps` single-step calls."""
        out = []
        for m in self.neurons:
            calls = self.spikes[m]
            if len(calls) == 1:
                x = calls[0]
                out.append(x.reshape(steps, x.shape[0] // steps, *x.shape[1:]))
            else:
                assert len(calls) == steps
                out.append(torch.stack(calls))
        return out


def run_both(model: SpikingModel, x: torch.Tensor, event: bool) -> None:
    """Multi-step forward and the step loop agree on the logits and on every neuron's spikes."""
    frames = list(x) if event else [x] * T
    multi_rec = SpikeRecorder(model)
    with torch.no_grad():
        multi = model(x) if event else model(x, timesteps=T)
    multi_rec.remove()
    batch = frames[0].shape[0]
    states = model.init_states(batch)  # before recording: it runs a probe forward
    loop_rec = SpikeRecorder(model)
    with torch.no_grad():
        looped = step_loop(model, frames, states)
    loop_rec.remove()
    assert multi.shape == (T, batch, K)
    torch.testing.assert_close(multi, looped, atol=1e-5, rtol=1e-5)
    multi_spikes, loop_spikes = multi_rec.per_step(T), loop_rec.per_step(T)
    for i, (a, b) in enumerate(zip(multi_spikes, loop_spikes)):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"neuron layer {i}: {m}")
    # The comparison means something only if neurons spike: some, not all, and in most layers.
    rates = [s.float().mean().item() for s in multi_spikes]
    assert any(0.0 < r < 1.0 for r in rates), rates
    assert sum(r > 0.0 for r in rates) >= len(rates) / 2, rates


@pytest.fixture(scope="module", params=SPIKING)
def spiking_eval(request) -> SpikingModel:
    model = small_model(request.param)
    randomise_batchnorm(model)
    return model.eval()


def test_registry_lists_the_zoo() -> None:
    assert {"resnet18", "resnet19", "resnet20", "sew_resnet18", "vgg16", "policy_resnet8"} <= set(MODELS)
    assert not get_entry("policy_resnet8").spiking


@pytest.mark.parametrize("name", MODELS)
def test_factory_signature(name: str) -> None:
    entry = get_entry(name)
    assert entry.summary, f"{name}'s factory needs a one-line docstring"
    params = inspect.signature(entry.factory).parameters
    assert list(params)[:3] == ["num_classes", "in_channels", "image_size"]
    # Every default is recorded in checkpoint config.json, so it must be JSON-serialisable.
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    json.dumps(defaults)


def test_multi_step_equals_step_loop(spiking_eval: SpikingModel) -> None:
    run_both(spiking_eval, inputs(spiking_eval, B), event=False)


def test_event_input_equals_step_loop(spiking_eval: SpikingModel) -> None:
    run_both(spiking_eval, inputs(spiking_eval, T, B, seed=2), event=True)


def test_state_specs(spiking_eval: SpikingModel) -> None:
    model = spiking_eval
    specs = model.state_specs()
    names = [s.name for s in specs]
    assert names and len(names) == len(set(names)), names
    assert [(s.name, s.shape, s.init) for s in model.state_specs()] == [(s.name, s.shape, s.init) for s in specs]
    states = model.init_states(B)
    assert list(states) == names
    for s in specs:
        assert states[s.name].shape == (B, *s.shape)
        assert torch.all(states[s.name] == s.init)
    assert not model.training, "state_specs must restore the training flag"


@pytest.mark.parametrize("name", SPIKING)
def test_training_backward(name: str) -> None:
    model = small_model(name).train()
    x = inputs(model, B)
    logits, _ = model.step(x, model.init_states(B))
    loss = nn.functional.cross_entropy(logits, torch.arange(B) % K)
    loss.backward()
    first_conv = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    grad = first_conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, "no surrogate gradient reached the first conv"


@pytest.mark.parametrize("name", SPIKING)
def test_neuron_config_reaches_every_neuron(name: str) -> None:
    model = small_model(name, neuron={"kind": "if", "v_threshold": 2.0, "v_init": 1.0})
    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    assert neurons and all(type(m).__name__ == "IF" and m.v_threshold == 2.0 for m in neurons)
    assert {s.init for s in model.state_specs()} == {1.0}


@pytest.mark.parametrize("name", ["resnet18", "resnet19", "sew_resnet18"])
def test_odd_image_size(name: str) -> None:
    # Strided blocks on odd sizes: the shortcut must match the main path's ceil(H/2).
    model = create_model(name, num_classes=K, image_size=(13, 11)).eval()
    x = inputs(model, B)
    with torch.no_grad():
        torch.testing.assert_close(model(x, timesteps=2), step_loop(model, [x] * 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ANN)
def test_policy_forward(name: str) -> None:
    model = small_model(name)
    assert not isinstance(model, SpikingModel)
    assert model.num_classes == K
    x = inputs(model, B)
    logits = model.train()(x)
    assert logits.shape == (B, K)
    logits.logsumexp(-1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert model.eval()(x).shape == (B, K)
    with pytest.raises(UserError, match="does not match"):
        model(inputs(model, B)[:, :1])


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UserError) as info:
        create_model("resnet1000")
    message = str(info.value)
    assert "resnet1000" in message
    for name in MODELS:
        assert name in message


def test_vgg16_rejects_small_images() -> None:
    with pytest.raises(UserError, match="vgg16 needs images of at least 32x32"):
        create_model("vgg16", image_size=16)


def test_resnet20_width() -> None:
    wide = create_model("resnet20", width=2)
    assert wide.body[-1].in_features == 128
    with pytest.raises(UserError, match="width"):
        create_model("resnet20", width=0)


def test_catalog_matches_the_registry() -> None:
    """`seenn-deploy models` reads the static catalog (no torch): every figure in it must be the model's own."""
    from seenn_deploy.snn.zoo import CATALOG

    assert [info.name for info in CATALOG] == MODELS
    for info in CATALOG:
        entry = get_entry(info.name)
        assert (info.spiking, info.summary) == (entry.spiking, entry.summary), info.name
        for size in info.sizes:
            model = create_model(info.name, num_classes=size.num_classes, in_channels=size.channels,
                                 image_size=(size.height, size.width))
            assert sum(p.numel() for p in model.parameters()) == size.params, (info.name, size)
        create_model(info.name, in_channels=2, image_size=info.min_size)  # any channel count, the smallest size
        if info.min_size > 1:
            with pytest.raises(UserError, match="at least"):
                create_model(info.name, image_size=info.min_size - 1)


def test_spiking_cnn_takes_cifar_sized_colour_images() -> None:
    model = create_model("spiking_cnn", num_classes=10, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32), timesteps=2).shape == (2, 2, 10)
    assert "28x28 grayscale" not in get_entry("spiking_cnn").summary
