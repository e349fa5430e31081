"""Foreign SNNs (SpikingJelly, snnTorch) export like zoo models; the oracle is each framework's own forward.

Each model is small (8x8 images, T=4, batch 3) with random BatchNorm statistics so that its
neurons fire. The exported step.onnx is run with onnxruntime for T steps, states fed back, and
its per-step logits must equal the framework's per-step outputs: exact spikes.
"""

import importlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions
from seenn_deploy.export.foreign import ForeignModel, ParityError, export_model, load_factory_model
from seenn_deploy.snn.model import InputSpec

T, B, C, H = 4, 3, 3, 8
OPTIONS = ExportOptions(max_batch=8)


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_jelly = pytest.mark.skipif(not importable("spikingjelly.activation_based"), reason=(
    "SpikingJelly is not installed: pip install --no-deps spikingjelly loguru tqdm scipy packaging h5py"))
needs_snntorch = pytest.mark.skipif(not importable("snntorch"), reason="snnTorch is missing: pip install snntorch")


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine so that neurons fire at rates strictly between 0 and 1."""
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


def sample(seed: int = 1) -> torch.Tensor:
    return torch.rand(B, C, H, H, generator=torch.Generator().manual_seed(seed))


def run_onnx(bundle, manifest, x: torch.Tensor, steps: int) -> np.ndarray:
    """step.onnx over `steps` timesteps from rest, states fed back -> per-step logits [T, B, K]."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "step.onnx"), providers=["CPUExecutionProvider"])
    batch = x.shape[0]
    states = [np.full((batch, *s.shape), s.init, dtype=np.float32) for s in manifest.states]
    names = [s.name for s in manifest.states]
    assert [i.name for i in session.get_inputs()] == ["x", "reset", *names]
    assert [o.name for o in session.get_outputs()] == ["confidence", "prediction", "logits",
                                                      *[n + ".next" for n in names]]
    feed_x, reset = x.numpy().astype(np.float32), np.zeros(batch, dtype=bool)
    logits = []
    for _ in range(steps):
        out = session.run(None, {"x": feed_x, "reset": reset, **dict(zip(names, states))})
        logits.append(out[2])
        states = out[3:]
    return np.stack(logits)


def assert_fires(model: ForeignModel, x: torch.Tensor) -> None:
    with torch.no_grad():
        _, frame = model.run_steps(x, T)
    rates = {name: float(s.mean()) for name, s in frame.spikes.items()}
    assert len(rates) >= 3 and any(0 < r < 1 for r in rates.values()), rates
    assert all(n._binding is None for n in model.body.neurons()), "a neuron kept its frame after the call"


# -- SpikingJelly ------------------------------------------------------------------------------
def jelly_multi_step() -> nn.Module:
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    return randomise(nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(C, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
        neuron.LIFNode(tau=2.0, step_mode="m"),
        layer.Conv2d(8, 8, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(8, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
        layer.AvgPool2d(2, step_mode="m"),
        layer.Dropout(0.3, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(8 * 4 * 4, 16, step_mode="m"),
        neuron.ParametricLIFNode(init_tau=3.0, decay_input=False, v_reset=-0.2, step_mode="m"),
        layer.SeqToANNContainer(nn.Linear(16, 5), nn.BatchNorm1d(5)),
        neuron.LIFNode(tau=1.5, decay_input=False, v_reset=None, v_threshold=0.5, step_mode="m"),
    ))


class Block(nn.Module):
    """A user's stateless container with its own forward."""

    def __init__(self, conv: nn.Module, bn: nn.Module, node: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.node = conv, bn, node

    def forward(self, x):
        return self.node(self.bn(self.conv(x)))


def jelly_single_step() -> nn.Module:
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(1)
    return randomise(nn.Sequential(
        layer.Conv2d(C, 6, 3, padding=1, bias=False),
        layer.BatchNorm2d(6),
        neuron.ParametricLIFNode(init_tau=2.0),
        Block(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), neuron.IFNode()),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(6 * 4 * 4, 5),
        neuron.LIFNode(tau=2.0, v_reset=None),
    ), seed=1)


def jelly_reference(net: nn.Module, x: torch.Tensor, multi_step: bool) -> torch.Tensor:
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    with torch.no_grad():
        if multi_step:
            out = net(x.unsqueeze(0).repeat(T, 1, 1, 1, 1))
        else:
            out = torch.stack([net(x) for _ in range(T)])
    functional.reset_net(net)
    return out


@needs_jelly
@pytest.mark.parametrize("multi_step", [True, False], ids=["multi-step", "single-step"])
def test_spikingjelly_model_exports_with_exact_spikes(multi_step, tmp_path):
    net = jelly_multi_step() if multi_step else jelly_single_step()
    x = sample()
    expected = jelly_reference(net, x, multi_step)

    model = ForeignModel(net, InputSpec(C, H, H))
    assert model.step_mode == ("m" if multi_step else "s") and model.num_classes == 5
    with torch.no_grad():
        assert torch.equal(model(x, timesteps=T), expected)
    assert_fires(model, x)

    manifest = export_model(net, x, tmp_path / "b", timesteps=T, options=OPTIONS)
    assert "encoder" not in manifest.graphs and manifest.step_input_shape == (C, H, H)
    assert manifest.provenance["foreign"]["framework"] == "spikingjelly"
    np.testing.assert_allclose(run_onnx(tmp_path / "b", manifest, x, T), expected.numpy(), atol=1e-5, rtol=0)
    # the user's model is untouched: still its own neurons, still runs
    assert torch.equal(jelly_reference(net, x, multi_step), expected)


class Stem(nn.Module):
    """Multi-step layers called from a custom forward: a BatchNorm with no conv right before it, and a tdBN."""

    def __init__(self) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer

        self.conv = layer.Conv2d(C, 6, 3, padding=1, step_mode="m")
        self.bn = layer.BatchNorm2d(6, step_mode="m")
        self.tdbn = layer.ThresholdDependentBatchNorm2d(alpha=1.0, v_th=1.0, num_features=6)

    def forward(self, x):
        return self.tdbn(self.bn(self.conv(x)))


@needs_jelly
def test_spikingjelly_containers_and_lone_batchnorms_export(tmp_path):
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(5)
    net = randomise(nn.Sequential(
        Stem(),
        layer.MultiStepContainer(neuron.LIFNode(), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6),
                                 neuron.IFNode(v_reset=None)),
        layer.StepModeContainer(False, "m", nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)),
        layer.StepModeContainer(True, "m", neuron.ParametricLIFNode(init_tau=2.0, v_threshold=0.3, v_reset=None)),
    ), seed=5)
    x = sample()
    expected = jelly_reference(net, x, multi_step=True)
    model = ForeignModel(net, InputSpec(C, H, H))
    assert_fires(model, x)
    manifest = export_model(net, x, tmp_path / "b", timesteps=T, options=OPTIONS)
    assert [s.name for s in manifest.states][:3] == ["body.module.1.0.v", "body.module.1.3.v", "body.module.3.0.v"]
    np.testing.assert_allclose(run_onnx(tmp_path / "b", manifest, x, T), expected.numpy(), atol=1e-5, rtol=0)


@needs_jelly
def test_spikingjelly_unsupported_neuron_is_named_with_its_path():
    from spikingjelly.activation_based import layer, neuron

    net = nn.Sequential()
    net.add_module("features", nn.Sequential(layer.Conv2d(C, 4, 3), layer.BatchNorm2d(4), neuron.LIFNode(),
                                             neuron.IzhikevichNode()))
    with pytest.raises(UserError) as info:
        ForeignModel(net, InputSpec(C, H, H))
    message = str(info.value)
    assert "features.3" in message and "IzhikevichNode" in message and "LIFNode" in message

    class MyLIF(neuron.LIFNode):  # a subclass may change the equations: not mapped
        pass

    with pytest.raises(UserError, match=r"0 is .*MyLIF"):
        ForeignModel(nn.Sequential(MyLIF(), nn.Flatten(), nn.Linear(C * H * H, 2)), InputSpec(C, H, H))
    with pytest.raises(UserError, match="built from spikingjelly modules, not snntorch"):
        ForeignModel(jelly_single_step(), InputSpec(C, H, H), framework="snntorch")


@needs_jelly
def test_a_wrong_replacement_fails_the_parity_check(monkeypatch, tmp_path):
    from seenn_deploy.export.adapters.spikingjelly import JellyIF

    monkeypatch.setattr(JellyIF, "charge", lambda self, x, v: v * 0.5 + x)
    with pytest.raises(ParityError, match="SpikingJelly"):
        export_model(jelly_multi_step(), sample(), tmp_path / "b", timesteps=T, options=OPTIONS)
    assert not (tmp_path / "b").exists()


# -- snnTorch ------------------------------------------------------------------------------------
def snntorch_net(mechanism: str, init_hidden: bool = True) -> nn.Module:
    import snntorch as snn

    torch.manual_seed(2)
    kw = {"init_hidden": init_hidden, "reset_mechanism": mechanism}
    return randomise(nn.Sequential(
        nn.Conv2d(C, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
        snn.Leaky(beta=0.9, **kw),
        nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=0.7, threshold=0.8, **kw),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
        snn.Leaky(beta=0.8, output=True, **kw),
    ), seed=2)


@needs_snntorch
@pytest.mark.parametrize("mechanism, readout", [("subtract", "spikes"), ("zero", "membrane")])
def test_snntorch_model_exports_with_exact_spikes(mechanism, readout, tmp_path):
    from snntorch import utils

    net = snntorch_net(mechanism)
    x = sample(3)
    utils.reset(net)
    with torch.no_grad():
        pairs = [net(x) for _ in range(T)]
    expected = torch.stack([spk if readout == "spikes" else mem for spk, mem in pairs])

    model = ForeignModel(net, InputSpec(C, H, H), readout=readout)
    assert model.step_mode == "s"
    with torch.no_grad():
        assert torch.equal(model(x, timesteps=T), expected)
    assert_fires(model, x)

    manifest = export_model(net, x, tmp_path / "b", timesteps=T, readout=readout, classes=list("abcde"),
                            options=OPTIONS)
    assert manifest.classes == list("abcde") and manifest.provenance["foreign"]["readout"] == readout
    np.testing.assert_allclose(run_onnx(tmp_path / "b", manifest, x, T), expected.numpy(), atol=1e-5, rtol=0)


@needs_snntorch
def test_a_foreign_model_exports_with_tuned_int8_weights(tmp_path):
    net = snntorch_net("subtract")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=torch.rand(80, C, H, H, generator=torch.Generator().manual_seed(7)).numpy(),
             y=np.zeros(80, np.int64))
    options = ExportOptions(max_batch=8, precision="int8", int8_weights="tuned", calib_data=f"npz:{calib}",
                            calib_samples=32)
    manifest = export_model(net, sample(3), tmp_path / "b", timesteps=T, options=options)
    tuning = manifest.provenance["int8_tuning"]
    assert manifest.fp16_weights == "single" and tuning["samples"] == 32 and tuning["held_out"] is None
    assert tuning["flip_rate_after"] <= tuning["flip_rate_before"]


@needs_snntorch
@pytest.mark.parametrize("mechanism", ["subtract", "zero", "none"])
def test_snntorch_leaky_without_reset_delay_matches(mechanism):
    import snntorch as snn

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(C * H * H, 12), snn.Leaky(beta=0.8, init_hidden=True, reset_delay=False,
                                                          reset_mechanism=mechanism, threshold=0.25),
                        nn.Linear(12, 4), snn.Leaky(beta=0.5, init_hidden=True, reset_delay=False))
    flat = nn.Sequential(nn.Flatten(), net).eval()
    x = sample(5) * 2
    for m in net.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    with torch.no_grad():
        expected = torch.stack([flat(x) for _ in range(T)])
    with torch.no_grad():
        got = ForeignModel(flat, InputSpec(C, H, H))(x, timesteps=T)
    assert torch.equal(got, expected) and 0 < float(expected.mean()) < 1


@needs_snntorch
def test_snntorch_init_hidden_false_is_refused():
    net = snntorch_net("subtract", init_hidden=False)
    with pytest.raises(UserError, match="init_hidden=True") as info:
        ForeignModel(net, InputSpec(C, H, H))
    assert str(info.value).startswith("2 (snntorch Leaky)")


@needs_snntorch
@pytest.mark.parametrize("kind", ["Synaptic", "RLeaky"])
def test_snntorch_unsupported_neurons_are_named(kind):
    import snntorch as snn

    neuron = snn.Synaptic(alpha=0.9, beta=0.8, init_hidden=True) if kind == "Synaptic" else \
        snn.RLeaky(beta=0.9, linear_features=5, init_hidden=True)
    net = nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 5), neuron)
    with pytest.raises(UserError, match=rf"^2 is snntorch\..*{kind}.*snntorch\.Leaky"):
        ForeignModel(net, InputSpec(C, H, H))


# -- framework detection and inputs --------------------------------------------------------------
def test_a_plain_torch_model_and_bad_arguments_are_refused(tmp_path):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 2))
    with pytest.raises(UserError, match="no SpikingJelly or snnTorch module"):
        export_model(plain, sample(), tmp_path / "b", timesteps=T)
    with pytest.raises(UserError, match="framework 'keras'"):
        export_model(plain, sample(), tmp_path / "b", timesteps=T, framework="keras")
    with pytest.raises(UserError, match=r"one timestep \[B, C, H, W\]"):
        export_model(plain, torch.rand(T, B, C, H, H), tmp_path / "b", timesteps=T)
    with pytest.raises(UserError, match="timesteps"):
        export_model(plain, sample(), tmp_path / "b", timesteps=0)
    assert not (tmp_path / "b").exists()


# -- --factory -----------------------------------------------------------------------------------
FACTORY_SOURCE = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

def make_other():
    return nn.Linear(3, 1)

def needs_args(width):
    return nn.Linear(width, 1)

def not_a_module():
    return 42

NOT_CALLABLE = 3
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = f"seenn_test_factory_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_factory_model_builds_and_loads_weights(factory_module, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(7)
    trained = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)))
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")

    model = load_factory_model(f"{factory_module}:make", tmp_path / "w.safetensors", allow_pickle=False)
    assert not model.training
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    with pytest.raises(UserError, match="--allow-pickle"):
        load_factory_model(f"{factory_module}:make", tmp_path / "w.pt", allow_pickle=False)
    assert isinstance(load_factory_model(f"{factory_module}:make", tmp_path / "w.pt", allow_pickle=True), nn.Module)
    with pytest.raises(UserError, match="do not fit the model built by"):
        load_factory_model(f"{factory_module}:make_other", tmp_path / "w.safetensors", allow_pickle=False)
    with pytest.raises(UserError, match="does not exist"):
        load_factory_model(f"{factory_module}:make", tmp_path / "missing.safetensors", allow_pickle=False)


@pytest.mark.parametrize("factory, match", [
    ("nocolon", "is not package.module:function"),
    ("a:b:c", "is not package.module:function"),
    ("1mod:make", "is not package.module:function"),
    ("mod:", "is not package.module:function"),
    ("", "is not package.module:function"),
    ("seenn_no_such_module_xyz:make", "cannot import seenn_no_such_module_xyz"),
    ("{mod}:missing", "has no 'missing'.*make"),
    ("{mod}:NOT_CALLABLE", "not a function"),
    ("{mod}:needs_args", "called with no arguments"),
    ("{mod}:not_a_module", "not a torch.nn.Module"),
])
def test_bad_factories_are_refused(factory, match, factory_module, tmp_path):
    with pytest.raises(UserError, match=match):
        load_factory_model(factory.format(mod=factory_module), tmp_path / "w.safetensors", allow_pickle=False)


@needs_jelly
def test_a_model_in_train_mode_is_exported_in_eval_mode_with_a_warning(tmp_path):
    import copy

    net = jelly_multi_step().train()  # Dropout and BatchNorm: train mode would change every output
    x = sample()
    expected = jelly_reference(copy.deepcopy(net).eval(), x, multi_step=True)
    with pytest.warns(UserWarning, match="is in train mode; it is exported in eval mode"):
        manifest = export_model(net, x, tmp_path / "b", timesteps=T, options=OPTIONS)
    np.testing.assert_allclose(run_onnx(tmp_path / "b", manifest, x, T), expected.numpy(), atol=1e-5, rtol=0)
    assert net.training, "the user's model was switched to eval mode"


@needs_jelly
def test_the_framework_version_is_the_installed_distribution():
    from importlib import metadata

    from seenn_deploy.export.adapters import get_adapter

    assert get_adapter("spikingjelly").version() == metadata.version("spikingjelly")
