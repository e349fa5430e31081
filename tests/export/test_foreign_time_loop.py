"""Models that loop over time inside forward (the SpikingJelly tutorials): exported as their per-step submodule when
the loop is a plain repeat-and-average, refused with the fix otherwise; a forced step mode that contradicts the model
is refused.

The oracle is the model's own call, loop included: after the model's T steps, the bundle's
accumulated mean must equal what the model returns, and each bundle step the framework's own
forward of the per-step submodule.
"""

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions
from seenn_deploy.export.foreign import ForeignModel, export_model
from seenn_deploy.snn.model import InputSpec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("spikingjelly") is None, reason=(
    "SpikingJelly is not installed: pip install --no-deps spikingjelly loguru"))

LOOP_T, B, C, H = 4, 3, 1, 8
OPTIONS = ExportOptions(max_batch=8)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics so that the neurons fire at rates strictly between 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.05 + 0.05)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.8)
        elif isinstance(m, nn.Linear):
            m.weight.data.mul_(3.0)
    return model.eval()


def layers(step_mode: str) -> nn.Sequential:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    net = nn.Sequential(
        layer.Conv2d(C, 6, 3, padding=1, bias=False), layer.BatchNorm2d(6),
        neuron.IFNode(surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2, 2), layer.Flatten(),
        layer.Linear(6 * (H // 2) ** 2, 5, bias=False), neuron.LIFNode(tau=2.0, v_reset=None),
    )
    functional.set_step_mode(net, step_mode)
    return net


class RepeatMean(nn.Module):
    """The SpikingJelly Fashion-MNIST tutorial's CSNN: multi-step layers; forward repeats the input T times, averages"""

    def __init__(self, T: int = LOOP_T) -> None:
        super().__init__()
        self.T = T
        self.conv_fc = layers("m")

    def forward(self, x):
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.conv_fc(x_seq).mean(0)


class LoopMean(nn.Module):
    """A single-step net with the loop inside forward."""

    def __init__(self, T: int = LOOP_T) -> None:
        super().__init__()
        self.T = T
        self.net = layers("s")

    def forward(self, x):
        out = 0
        for _ in range(self.T):
            out = out + self.net(x)
        return out / self.T


class EncodedOutside(RepeatMean):
    """A conv outside the loop: the per-step module is not fed the model's input, so the loop is not plain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(C, C, 1)

    def forward(self, x):
        return self.conv_fc(self.stem(x).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)).mean(0)


class SplitNeurons(nn.Module):
    """Neurons in two submodules called one after the other: no single submodule does a step."""

    def __init__(self) -> None:
        super().__init__()
        net = layers("s")
        self.features, self.head = net[:3], net[3:]
        self.T = LOOP_T

    def forward(self, x):
        return sum(self.head(self.features(x)) for _ in range(self.T)) / self.T


def build(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(cls(), seed)


def sample(seed: int = 1) -> torch.Tensor:
    return torch.rand(B, C, H, H, generator=torch.Generator().manual_seed(seed))


def own_call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    with torch.no_grad():
        out = model(x)
    functional.reset_net(model)
    return out


def onnx_steps(bundle, manifest, x: torch.Tensor, steps: int) -> np.ndarray:
    """step.onnx over `steps` timesteps from rest, states fed back -> per-step logits [steps, B, K]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "step.onnx"), providers=["CPUExecutionProvider"])
    states = [np.full((x.shape[0], *s.shape), s.init, dtype=np.float32) for s in manifest.states]
    names = [s.name for s in manifest.states]
    logits = []
    for _ in range(steps):
        out = session.run(None, {"x": x.numpy(), "reset": np.zeros(x.shape[0], bool), **dict(zip(names, states))})
        logits.append(out[2])
        states = out[3:]
    return np.stack(logits)


@pytest.mark.parametrize("cls, inner, mode", [(RepeatMean, "conv_fc", "m"), (LoopMean, "net", "s")],
                         ids=["repeat-and-mean", "single-step-loop"])
def test_a_plain_time_loop_exports_as_its_step_module(cls, inner, mode, tmp_path):
    net, x = build(cls), sample()
    expected = own_call(net, x)  # the model's own call: its loop of LOOP_T steps, averaged

    model = ForeignModel(net, InputSpec(C, H, H))
    assert model.step_mode == mode and model.plan.loop.inner == inner and model.plan.loop.timesteps == LOOP_T

    manifest = export_model(net, x, tmp_path / "b", timesteps=6, options=OPTIONS)  # T_max past the model's own T
    loop = manifest.provenance["foreign"]["time_loop"]
    assert loop == {"timesteps": LOOP_T, "inner": inner, "step_mode": mode, "reduction": "mean"}
    steps = onnx_steps(tmp_path / "b", manifest, x, 6)
    np.testing.assert_allclose(steps[:LOOP_T].mean(0), expected.numpy(), atol=1e-5, rtol=0)
    assert 0 < float(expected.mean()) < 1, "no spikes reach the output: the test would prove nothing"
    # each step is the per-step module's own step, also past the model's T (one pass over 6 steps of its own)
    from spikingjelly.activation_based import functional

    body = getattr(net, inner)
    functional.reset_net(body)
    with torch.no_grad():
        if mode == "m":
            own_steps = body(x.unsqueeze(0).repeat(6, 1, 1, 1, 1))
        else:
            own_steps = torch.stack([body(x) for _ in range(6)])
    functional.reset_net(body)
    np.testing.assert_allclose(steps, own_steps.numpy(), atol=1e-5, rtol=0)


def test_a_shorter_model_loop_than_the_bundle_is_checked_at_the_model_own_t(tmp_path):
    net, x = build(RepeatMean, seed=3), sample(4)
    net.T = 2
    manifest = export_model(net, x, tmp_path / "b", timesteps=3, options=OPTIONS)
    assert manifest.provenance["foreign"]["time_loop"]["timesteps"] == 2 and manifest.timesteps == 3
    steps = onnx_steps(tmp_path / "b", manifest, x, 2)
    np.testing.assert_allclose(steps.mean(0), own_call(net, x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls, forced, detected", [(RepeatMean, "s", "m"), (LoopMean, "m", "s")])
def test_a_forced_step_mode_that_contradicts_a_time_loop_is_refused(cls, forced, detected, tmp_path):
    """The wrong export of the issue (step_mode='s' on the tutorial model: each bundle step a whole model call) is
    refused, as is the opposite."""
    with pytest.raises(UserError, match=rf"step_mode '{forced}' contradicts the model.*step_mode='{detected}'"):
        export_model(build(cls), sample(), tmp_path / "b", timesteps=LOOP_T, step_mode=forced, options=OPTIONS)
    assert not (tmp_path / "b").exists()
    manifest = export_model(build(cls), sample(), tmp_path / "b", timesteps=LOOP_T, step_mode=detected,
                            options=OPTIONS)
    assert manifest.provenance["foreign"]["step_mode"] == detected


@pytest.mark.parametrize("mode", ["s", "m"])
def test_a_forced_step_mode_that_contradicts_a_plain_model_is_refused(mode):
    net = randomise(layers("m" if mode == "s" else "s"))
    with pytest.raises(UserError, match=f"step_mode '{mode}' contradicts the model"):
        ForeignModel(net, InputSpec(C, H, H), step_mode=mode)


@pytest.mark.parametrize("cls, fix", [
    (EncodedOutside, "`return self.net(x)` (x: [T, B, C, H, W] -> [T, B, K])"),
    (SplitNeurons, "`return self.net(x)` (one timestep: [B, C, H, W] -> [B, K])"),
])
def test_a_loop_that_is_not_plain_is_refused_with_the_change_to_make(cls, fix, tmp_path):
    with pytest.raises(UserError) as info:
        export_model(build(cls), sample(), tmp_path / "b", timesteps=LOOP_T, options=OPTIONS)
    message = str(info.value)
    assert f"{cls.__name__}.forward loops over time itself ({LOOP_T} timesteps per call)" in message
    assert fix in message and "\n" not in message
    assert not (tmp_path / "b").exists()


def test_the_change_the_refusal_shows_makes_the_model_exportable(tmp_path):
    """forward returns self.conv_fc(x) on the sequence: the same weights export as a plain multi-step model."""

    class Fixed(RepeatMean):
        def forward(self, x):
            return self.conv_fc(x)

    net, x = build(RepeatMean), sample()
    fixed = Fixed().eval()
    fixed.load_state_dict(net.state_dict())
    manifest = export_model(fixed, x, tmp_path / "b", timesteps=LOOP_T, options=OPTIONS)
    assert manifest.provenance["foreign"]["step_mode"] == "m" and "time_loop" not in manifest.provenance["foreign"]
    steps = onnx_steps(tmp_path / "b", manifest, x, LOOP_T)
    np.testing.assert_allclose(steps.mean(0), own_call(net, x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("snntorch") is None, reason="snnTorch is missing: pip install snntorch")
def test_an_snntorch_loop_that_stacks_its_steps_exports(tmp_path):
    """The snnTorch tutorials' forward: call the net T times, return the stacked outputs [T, B, K]."""
    import snntorch as snn

    class Stacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 12), snn.Leaky(beta=0.8, init_hidden=True),
                                     nn.Linear(12, 4), snn.Leaky(beta=0.7, init_hidden=True, output=True))

        def forward(self, x):
            for m in self.net.modules():
                if isinstance(m, snn.Leaky):
                    m.reset_mem()
            return torch.stack([self.net(x)[1] for _ in range(LOOP_T)])  # the membranes of every step

    torch.manual_seed(6)
    net = randomise(Stacked(), 6)
    x = sample(7) * 2
    with torch.no_grad():
        expected = net(x)
    manifest = export_model(net, x, tmp_path / "b", timesteps=LOOP_T, readout="membrane", options=OPTIONS)
    assert manifest.provenance["foreign"]["time_loop"] == {"timesteps": LOOP_T, "inner": "net", "step_mode": "s",
                                                           "reduction": "stack"}
    np.testing.assert_allclose(onnx_steps(tmp_path / "b", manifest, x, LOOP_T), expected.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="contradicts the model"):
        ForeignModel(net, InputSpec(C, H, H), step_mode="m", readout="membrane")
