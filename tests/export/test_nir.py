"""NIR graphs to bundles: snnTorch's and Sinabs' exporters round-trip exactly on Fashion-MNIST; bad graphs are refused.

The oracle is each framework's own forward. The networks are untrained; their Linear weights are
scaled so that every layer fires on Fashion-MNIST. Each is built the way its framework's NIR
exporter describes it faithfully: snnTorch Leaky with reset_mechanism="zero", reset_delay=False
(what snnTorch's importer builds from a NIR LIF); Sinabs IAF with MembraneReset and SingleSpike
(its default MultiSpike emits spike counts and subtracts, which its exporter writes as a plain IF
all the same).
"""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions

nir = pytest.importorskip("nir", reason="nir is not installed: pip install 'seenn-deploy[nir]'")

from seenn_deploy.export.nir import export_nir, export_nir_graph, nir_model, repaired_graph

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FMNIST_TEST = SHARED_DATA / "fashion_mnist_test.npz"


def fmnist(n: int) -> torch.Tensor:
    """The first n Fashion-MNIST test images, [n, 1, 28, 28] in [0, 1] (rows are shuffled: a fair subset)."""
    with np.load(FMNIST_TEST) as data:
        x = data["x"][:n]
    return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)


def scale_linear(net: nn.Module, factor: float) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.weight.data.mul_(factor)
    return net.eval()


# -- snnTorch ---------------------------------------------------------------------------------
def snntorch_net(seed: int = 0) -> nn.Module:
    import snntorch as snn

    def leaky(beta: float, **kw) -> nn.Module:
        return snn.Leaky(beta=beta, init_hidden=True, reset_mechanism="zero", reset_delay=False, **kw)

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), leaky(0.9), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 6 * 6, 64), leaky(0.8), nn.Linear(64, 10), leaky(0.7, output=True))
    return scale_linear(net, 4.0)


def snntorch_rleaky_net(seed: int = 2) -> nn.Module:
    """An MLP whose hidden layer is recurrent (RLeaky, all-to-all with a bias)."""
    import snntorch as snn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32),
        snn.RLeaky(beta=0.9, linear_features=32, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        nn.Linear(32, 10), snn.Leaky(beta=0.8, init_hidden=True, output=True, reset_mechanism="zero",
                                     reset_delay=False))
    net[2].recurrent.bias.data.fill_(0.05)
    return scale_linear(net, 3.0)


def snntorch_graph(net: nn.Module, monkeypatch):
    """snnTorch 1.0's export_to_nir as a user runs it against nir 1.0.8: its closing `infer_types()` raises on the
    scalar LIF parameters it writes, so it is skipped, and the graph keeps the scalars."""
    import nir
    from snntorch.export_nir import export_to_nir

    with monkeypatch.context() as m:
        m.setattr(nir.NIRGraph, "infer_types", lambda self: None)
        return export_to_nir(net, torch.zeros(1, 1, 28, 28))


def snntorch_forward(net: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """snnTorch's loop from rest: per-step output spikes [T, B, 10]."""
    import snntorch as snn

    for m in net.modules():
        if isinstance(m, (snn.Leaky, snn.RLeaky, snn.Synaptic)):
            m.reset_mem()
    with torch.no_grad():
        return torch.stack([net(x)[0] for _ in range(steps)])


# -- Norse -------------------------------------------------------------------------------------
def norse_net(seed: int = 0) -> nn.Module:
    """An MLP of LIFBox cells (no synaptic current: Norse's LIFCell adds its input current a step later than NIR's
    CubaLIF as read here). No Flatten: Norse's to_nir writes an empty node for it; the input comes flat."""
    import norse.torch as nt

    torch.manual_seed(seed)
    net = nt.SequentialState(nn.Linear(784, 64), nt.LIFBoxCell(), nn.Linear(64, 10), nt.LIFBoxCell())
    return scale_linear(net, 30.0)


def norse_graph(net: nn.Module):
    from norse.torch.utils.export_nir import to_nir

    return to_nir(net, torch.zeros(1, 784))


def norse_forward(net: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Norse's loop from rest (state None), x [B, 1, 1, 784] -> per-step output spikes [T, B, 10]."""
    state, out = None, []
    with torch.no_grad():
        for _ in range(steps):
            y, state = net(x.flatten(1), state)
            out.append(y)
    return torch.stack(out)


# -- Sinabs -----------------------------------------------------------------------------------
def sinabs_net(batch: int, seed: int = 0) -> nn.Module:
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    def iaf() -> nn.Module:
        return sl.IAFSqueeze(batch_size=batch, reset_fn=MembraneReset(), spike_fn=SingleSpike)

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), iaf(), sl.SumPool2d(2), nn.Flatten(),
                        nn.Linear(6 * 6 * 6, 64), iaf(), nn.Linear(64, 10))
    return scale_linear(net, 3.0)


def sinabs_forward(net: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Sinabs' forward from rest on x repeated `steps` times ([B*T] batch-major in, as its Squeeze layers take it)
    -> per-step outputs [T, B, 10]."""
    for m in net.modules():
        if hasattr(m, "reset_states"):
            m.reset_states()
    batch = x.shape[0]
    with torch.no_grad():
        out = net(x.unsqueeze(1).expand(batch, steps, *x.shape[1:]).flatten(0, 1))
    return out.unflatten(0, (batch, steps)).transpose(0, 1)


needs_fmnist = pytest.mark.skipif(not FMNIST_TEST.is_file(), reason=f"Fashion-MNIST is absent ({FMNIST_TEST})")


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_snntorch = pytest.mark.skipif(not importable("snntorch"), reason="snnTorch is missing: pip install snntorch")
needs_norse = pytest.mark.skipif(not importable("norse.torch"), reason=(
    "Norse is missing: pip install --no-deps norse (its torchvision pin would replace torch)"))
needs_sinabs = pytest.mark.skipif(not importable("sinabs"), reason=(
    "Sinabs is missing: pip install --no-deps sinabs pbr (its nir<=1.0.4 pin and samna are not needed)"))

T = 4
N = 200  # Fashion-MNIST test images per round trip
OPTIONS = ExportOptions(max_batch=N)


def run_bundle(bundle: Path, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's step.onnx on ONNX Runtime for T_max steps -> (logits [T, N, K], predictions [T, N])."""
    from seenn_deploy.runtime.executors.ort import OrtExecutor
    from seenn_deploy.runtime.loop import run_timesteps
    from seenn_deploy.runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    trace = run_timesteps(manifest, OrtExecutor(bundle / manifest.graphs["step"]), x.numpy(), batch_size=N)
    return trace.logits, trace.prediction


def assert_same_per_step(logits: np.ndarray, predictions: np.ndarray, reference: torch.Tensor) -> None:
    """Logits equal the framework's outputs at every t, and predictions its cumulative-mean argmax at every t."""
    ref = reference.numpy()
    assert logits.shape == ref.shape
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    mean = np.cumsum(ref.astype(np.float64), axis=0) / np.arange(1, len(ref) + 1).reshape(-1, 1, 1)
    assert (predictions == mean.argmax(-1)).all()


def assert_fires(reference: torch.Tensor) -> None:
    """The output layer is neither silent nor saturated, so the comparison can fail."""
    assert 0.02 < float((reference != 0).float().mean()) < 0.98


def assert_layers_fire(graph, x: torch.Tensor) -> None:
    """Every spiking node fires at a rate strictly between 0 and 1 on x (through the model, which the test
    then shows equal to the framework's)."""
    with torch.no_grad():
        _, frame = nir_model(graph, tuple(x.shape[1:])).run_steps(x, T)
    rates = {name: float(s.mean()) for name, s in frame.spikes.items()}
    assert rates and all(0.01 < r < 0.99 for r in rates.values()), rates


# -- round trips through a file, run by the runtime -------------------------------------------
@pytest.mark.slow
@needs_fmnist
@needs_snntorch
@pytest.mark.parametrize("make", [snntorch_net, snntorch_rleaky_net], ids=["conv", "recurrent"])
def test_snntorch_round_trip_per_step(tmp_path, monkeypatch, make):
    net = make()
    graph = snntorch_graph(net, monkeypatch)
    path = tmp_path / "net.nir"
    nir.write(str(path), repaired_graph(graph, (1, 28, 28)))
    manifest = export_nir(path, tmp_path / "net.seenn", input_shape=(1, 28, 28), timesteps=T, options=OPTIONS)
    record = manifest.provenance["nir"]
    assert (record["dt"], record["dt_source"], record["file"]) == (1e-4, "inferred", "net.nir")
    assert "LIF" in record["nodes"].values() and record["nir_version"] == nir.__version__
    x = fmnist(N)
    reference = snntorch_forward(net, x, T)
    assert_fires(reference)
    assert_layers_fire(graph, x)
    assert_same_per_step(*run_bundle(tmp_path / "net.seenn", x), reference)
    # verify's machinery reads every neuron's spikes out of the step graph: none flips against the torch model
    from seenn_deploy.data import ArrayDataset, Normalisation
    from seenn_deploy.export.verify import verify_bundle

    report = verify_bundle(tmp_path / "net.seenn", manifest, nir_model(graph, (1, 28, 28)),
                           ArrayDataset(x.numpy(), None, [str(k) for k in range(10)], "fashion-mnist (test)"),
                           Normalisation((0.0,), (1.0,)))
    spiking = sum(kind in ("IF", "LIF", "CubaLIF") for kind in record["nodes"].values())
    assert report.passed and report.spike_flip_rate == 0 and report.spike_layers == spiking


@pytest.mark.slow
@needs_fmnist
@needs_sinabs
def test_sinabs_round_trip_per_step(tmp_path):
    import sinabs

    net = sinabs_net(batch=N)
    path = tmp_path / "net.nir"
    graph = sinabs.to_nir(net, torch.zeros(N, 1, 28, 28))
    nir.write(str(path), repaired_graph(graph, (1, 28, 28)))
    manifest = export_nir(path, tmp_path / "net.seenn", input_shape=(1, 28, 28), timesteps=T, options=OPTIONS,
                          classes=[f"c{k}" for k in range(10)])
    assert manifest.provenance["nir"]["dt"] == 1.0 and manifest.classes[3] == "c3"
    x = fmnist(N)
    reference = sinabs_forward(net, x, T)
    assert_layers_fire(graph, x)
    assert_same_per_step(*run_bundle(tmp_path / "net.seenn", x), reference)


@pytest.mark.slow
@needs_fmnist
@needs_norse
def test_norse_round_trip_per_step(tmp_path):
    """Norse writes tau = D / tau_mem_inv and r = 1 for its step D (default 1e-3): forward Euler matches it at
    dt = D * D, which must be given (inferring it is refused: unit gain would mean no memory at all)."""
    net = norse_net()
    graph = norse_graph(net)
    with pytest.raises(UserError, match="cannot infer dt.*D \\* D"):
        nir_model(graph, (1, 1, 784))
    path = tmp_path / "net.nir"
    nir.write(str(path), repaired_graph(graph, (1, 1, 784), dt=1e-6))
    manifest = export_nir(path, tmp_path / "net.seenn", input_shape=(1, 1, 784), timesteps=T, options=OPTIONS,
                          dt=1e-6)
    assert (manifest.provenance["nir"]["dt"], manifest.provenance["nir"]["dt_source"]) == (1e-6, "given")
    x = fmnist(N).reshape(N, 1, 1, 784)
    reference = norse_forward(net, x, T)
    assert_fires(reference)
    assert_same_per_step(*run_bundle(tmp_path / "net.seenn", x), reference)


# -- the model in torch (fast) ----------------------------------------------------------------
@needs_fmnist
@needs_snntorch
def test_snntorch_scalar_parameters_are_broadcast(monkeypatch):
    net = snntorch_net()
    graph = snntorch_graph(net, monkeypatch)
    assert np.asarray(graph.nodes["1"].tau).shape == ()  # what snnTorch 1.0 writes
    model = nir_model(graph, (1, 28, 28))
    assert "1: tau, r, v_leak, v_threshold, v_reset: scalar broadcast to [6, 12, 12]" in model.report.repairs
    x = fmnist(N)
    reference = snntorch_forward(net, x, T)
    with torch.no_grad():
        assert torch.equal(model(x, timesteps=T), reference)
        states, stepped = model.init_states(N), []
        for _ in range(T):
            logits, states = model.step(x, states)
            stepped.append(logits)
    assert torch.equal(torch.stack(stepped), reference)


@needs_fmnist
@needs_snntorch
def test_snntorch_synaptic_is_cuba_lif_with_the_new_current(monkeypatch):
    import snntorch as snn

    torch.manual_seed(1)
    net = scale_linear(nn.Sequential(
        nn.Flatten(), nn.Linear(784, 48),
        snn.Synaptic(alpha=0.6, beta=0.85, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        nn.Linear(48, 10), snn.Leaky(beta=0.75, init_hidden=True, output=True, reset_mechanism="zero",
                                     reset_delay=False)), 3.0)
    graph = snntorch_graph(net, monkeypatch)
    model = nir_model(graph, (1, 28, 28))
    assert model.report.nodes["2"] == "CubaLIF"
    x = fmnist(N)
    for m in net.modules():
        if isinstance(m, (snn.Leaky, snn.Synaptic)):
            m.reset_mem()
    with torch.no_grad():
        reference = torch.stack([net(x)[0] for _ in range(T)])
        got = model(x, timesteps=T)
    assert_fires(reference)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)


def test_old_file_with_scalar_parameters_is_read_and_repaired(tmp_path):
    """A file as older writers left it: scalar datasets, no input types. nir.write cannot save such a graph."""
    import h5py

    graph = scalar_graph()
    with pytest.raises(TypeError):
        nir.write(str(tmp_path / "fails.nir"), graph)
    path = tmp_path / "old.nir"
    with h5py.File(path, "w") as f:
        write_group(f.create_group("node"), graph.to_dict())
    from seenn_deploy.export.nir import read_graph

    model = nir_model(read_graph(path), (1, 1, 3), dt=1e-3)
    assert model.report.repairs == ["lif: tau, r, v_leak, v_threshold, v_reset: scalar broadcast to [2]"]
    x = torch.tensor([[[[1.0, 0.0, 2.0]]], [[[0.5, 0.5, 0.5]]]])
    assert torch.equal(model(x, timesteps=3), expected_scalar_graph(x, steps=3))
    written = tmp_path / "repaired.nir"
    nir.write(str(written), repaired_graph(read_graph(path), (1, 1, 3)))
    nir.read(str(written))  # with nir 1.0.8's type check


def scalar_graph():
    """Input [3] -> Linear -> LIF (scalar parameters: tau 2e-3, r 2, threshold 1) -> Output [2]."""
    weight = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]], dtype=np.float32)
    lif = nir.LIF(tau=np.array(2e-3, dtype=np.float32), r=np.array(2.0, dtype=np.float32),
                  v_leak=np.array(0.0, dtype=np.float32), v_threshold=np.array(1.0, dtype=np.float32))
    lif.v_reset = None  # old files have none: read as 0
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight=weight), "lif": lif,
                               "output": nir.Output(np.array([2]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)


def expected_scalar_graph(x: torch.Tensor, steps: int) -> torch.Tensor:
    """dt = 1e-3: v' = (1 - 1e-3 / 2e-3) v + (1e-3 * 2 / 2e-3) I = v / 2 + I, spike above 1, reset to 0."""
    current = x.flatten(1) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]]).T
    v, out = torch.zeros_like(current), []
    for _ in range(steps):
        v = 0.5 * v + current
        z = (v > 1.0).float()
        v = v * (1 - z)
        out.append(z)
    return torch.stack(out)


def write_group(group, content: dict) -> None:
    for key, value in content.items():
        if isinstance(value, dict):
            write_group(group.create_group(str(key)), value)
        elif value is not None:
            group.create_dataset(key, data=value)


# -- recurrence --------------------------------------------------------------------------------
def test_recurrent_edge_is_the_previous_step_as_a_state():
    """Input -> fc -> lif <-> w_rec, lif -> out: w_rec takes the lif's spikes of step t-1 (0 at the start)."""
    w_in = np.array([[0.6, 0.2], [0.1, 0.9], [0.5, 0.5]], dtype=np.float32)
    w_rec = np.array([[0.0, 0.7, 0.0], [0.3, 0.0, 0.4], [0.6, 0.0, 0.0]], dtype=np.float32)
    w_out = np.eye(3, dtype=np.float32)
    ones = np.ones(3, dtype=np.float32)
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([2])), "fc": nir.Linear(weight=w_in),
        "rnn": nir.NIRGraph(nodes={  # as snnTorch writes RLeaky: a subgraph holding the loop
            "input": nir.Input(np.array([3])),
            "lif": nir.LIF(tau=ones * 2.0, r=ones * 2.0, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones),
            "w_rec": nir.Linear(weight=w_rec), "output": nir.Output(np.array([3]))},
            edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")], type_check=False),
        "out": nir.Linear(weight=w_out), "output": nir.Output(np.array([3]))},
        edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "out"), ("out", "output")], type_check=False)
    model = nir_model(graph, (1, 1, 2), dt=1.0)
    assert model.report.recurrent_edges == [["rnn.lif", "rnn.w_rec"]]  # the previous spikes cross the step
    assert "body.delay.rnn_lif" in [s.name for s in model.state_specs()]
    x = torch.tensor([[[[1.0, 0.4]]], [[[0.2, 1.3]]]])
    current = x.flatten(1) @ torch.from_numpy(w_in).T
    v, z, expected = torch.zeros(2, 3), torch.zeros(2, 3), []
    for _ in range(5):  # a = 1 - dt / tau = 0.5, gain dt r / tau = 1
        v = 0.5 * v + current + z @ torch.from_numpy(w_rec).T
        z = (v > 1.0).float()
        v = v * (1 - z)
        expected.append(z)
    with torch.no_grad():
        got = model(x, timesteps=5)
        states, stepped = model.init_states(2), []
        for _ in range(5):
            logits, states = model.step(x, states)
            stepped.append(logits)
    assert torch.equal(got, torch.stack(expected)) and torch.equal(torch.stack(stepped), got)
    assert float(got.sum()) > 0


@needs_fmnist
@needs_snntorch
def test_snntorch_rleaky_round_trip(monkeypatch):
    """snnTorch's RLeaky: mem = beta mem + input + recurrent(previous step's spikes), the recurrent bias from t = 0."""
    import snntorch as snn

    net = snntorch_rleaky_net()
    graph = snntorch_graph(net, monkeypatch)
    model = nir_model(graph, (1, 28, 28))
    assert model.report.recurrent_edges == [["2.lif", "2.w_rec"]]
    x = fmnist(N)
    for m in net.modules():
        if isinstance(m, (snn.Leaky, snn.RLeaky)):
            m.reset_mem()
    with torch.no_grad():
        reference = torch.stack([net(x)[0] for _ in range(T)])
        got = model(x, timesteps=T)
    assert_fires(reference)
    assert torch.equal(got, reference)


# -- refusals ----------------------------------------------------------------------------------
def small_graph(**lif):
    ones = np.ones(2, dtype=np.float32)
    params = {"tau": ones * 2.0, "r": ones * 2.0, "v_leak": 0 * ones, "v_threshold": ones, "v_reset": 0 * ones}
    params.update(lif)
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([3])),
                               "fc": nir.Affine(weight=np.ones((2, 3), np.float32), bias=np.zeros(2, np.float32)),
                               "lif": nir.LIF(**params), "output": nir.Output(np.array([2]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)


def test_unsupported_node_is_refused_by_name():
    graph = small_graph()
    graph.nodes["hold"] = nir.Delay(delay=np.ones(2, np.float32))
    graph.edges = [("input", "fc"), ("fc", "lif"), ("lif", "hold"), ("hold", "output")]
    with pytest.raises(UserError, match=r"NIR node 'hold' is a Delay.*supported nodes: Input"):
        nir_model(graph, (1, 1, 3))


def test_corrupt_and_missing_files_name_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "model.nir"
    bad.write_bytes(b"\x89HDF\r\n not really" * 10)
    with pytest.raises(UserError, match=r"cannot read .*model\.nir as a NIR graph.*nir\.write"):
        export_nir(bad, tmp_path / "out.seenn", input_shape=(1, 1, 3), timesteps=2)
    good = tmp_path / "good.nir"
    nir.write(str(good), small_graph())
    truncated = tmp_path / "cut.nir"
    truncated.write_bytes(good.read_bytes()[:600])
    with pytest.raises(UserError, match=r"cannot read .*cut\.nir"):
        export_nir(truncated, tmp_path / "out.seenn", input_shape=(1, 1, 3), timesteps=2)
    with pytest.raises(UserError, match=r"NIR file .*absent\.nir does not exist"):
        export_nir(tmp_path / "absent.nir", tmp_path / "out.seenn", input_shape=(1, 1, 3), timesteps=2)
    assert not (tmp_path / "out.seenn").exists()


def test_dt_that_neurons_disagree_on_must_be_given():
    ones = np.ones(2, dtype=np.float32)
    graph = small_graph(r=np.array([2.0, 4.0], np.float32))
    with pytest.raises(UserError, match=r"cannot infer dt: NIR node 'lif'.*--dt"):
        nir_model(graph, (1, 1, 3))
    model = nir_model(graph, (1, 1, 3), dt=0.5)
    assert (model.report.dt, model.report.dt_source) == (0.5, "given")
    with pytest.raises(UserError, match=r"'lif': dt = 3 is longer than its tau"):
        nir_model(small_graph(tau=ones * 2.0), (1, 1, 3), dt=3.0)


def test_bad_shapes_and_options_are_refused():
    with pytest.raises(UserError, match=r"input_shape \[1, 1, 4\] does not fit the graph.*\[3\]"):
        nir_model(small_graph(), (1, 1, 4))
    with pytest.raises(UserError, match="input_shape must be C, H, W"):
        nir_model(small_graph(), (3,))
    with pytest.raises(UserError, match="3 class names for a graph with 2 outputs"):
        export_nir_graph(small_graph(), Path("unused.seenn"), input_shape=(1, 1, 3), timesteps=2,
                         classes=["a", "b", "c"])
    with pytest.raises(UserError, match="timesteps must be an int >= 1"):
        export_nir_graph(small_graph(), Path("unused.seenn"), input_shape=(1, 1, 3), timesteps=0)


@pytest.mark.slow  # a fresh interpreter imports torch
def test_without_nir_the_error_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('nir', 'nirtorch'):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pathlib import Path\n"
        "from seenn_deploy.export.nir import export_nir\n"
        "from seenn_deploy.errors import MissingDependency\n"
        "try:\n"
        f"    export_nir(Path({str(tmp_path / 'a.nir')!r}), Path('x.seenn'), input_shape=(1, 1, 3), timesteps=2)\n"
        "except MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "pip install 'seenn-deploy[nir]'" in result.stdout, result.stderr


# -- reduced precision ------------------------------------------------------------------------
def three_layer_graph():
    """Input [16] -> fc1 -> lif1 -> fc2 -> lif2 -> fc3 -> li -> Output [4]: fc1 reads the analog input, fc2 and
    fc3 read spikes, the output is the LI's membrane. Weights scaled so that both LIFs fire on rand * 2 inputs."""
    g = np.random.default_rng(0)

    def affine(n_out: int, n_in: int, gain: float):
        return nir.Affine(weight=(g.standard_normal((n_out, n_in)) * gain / np.sqrt(n_in)).astype(np.float32),
                          bias=(g.standard_normal(n_out) * 0.1).astype(np.float32))

    def lif(n: int):
        ones = np.ones(n, np.float32)
        return nir.LIF(tau=ones * 2.0, r=ones * 2.0, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones)

    ones = np.ones(4, np.float32)
    nodes = {"input": nir.Input(np.array([16])), "fc1": affine(12, 16, 2.0), "lif1": lif(12),
             "fc2": affine(10, 12, 3.0),
             "lif2": lif(10), "fc3": affine(4, 10, 1.0), "li": nir.LI(tau=ones * 2.0, r=ones * 2.0, v_leak=0 * ones),
             "output": nir.Output(np.array([4]))}
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(itertools.pairwise(names)), type_check=False)


def test_int8_and_fp16_reach_the_layers_of_a_nir_graph(tmp_path):
    """NIRBody holds its layers in a ModuleDict: the INT8 and FP16 layouts replace them there (before, they only
    looked inside Sequentials, and the bundle said int8 / fp16 with every layer in FP32)."""
    from seenn_deploy.data import Normalisation
    from seenn_deploy.export.int8 import quantized_layers
    from seenn_deploy.export.precision import HalfCompute, for_precision
    from seenn_deploy.export.qdq import check_qdq_layout
    from seenn_deploy.export.verify import reference_trace

    graph = three_layer_graph()
    model = nir_model(graph, (1, 1, 16))
    x = (torch.rand(64, 1, 1, 16, generator=torch.Generator().manual_seed(0)) * 2).numpy()
    _, spikes = reference_trace(model, x, Normalisation((0.0,), (1.0,)), T, 64)
    rates = [float(s.mean()) for s in spikes.values()]
    assert len(rates) == 2 and all(0.01 < r < 0.99 for r in rates), rates

    manifest = export_nir_graph(graph, tmp_path / "int8", input_shape=(1, 1, 16), timesteps=T,
                                options=ExportOptions(max_batch=64, precision="int8"))
    assert manifest.provenance["int8_input_scales"] == {"body.nodes.fc2": 1.0, "body.nodes.fc3": 1.0}
    laid_out = for_precision(model, "int8")
    assert [q.name for q in quantized_layers(laid_out)] == ["body.nodes.fc2", "body.nodes.fc3"]
    assert check_qdq_layout(onnx_load(tmp_path / "int8" / "step.onnx")) == 2
    expected, _ = reference_trace(laid_out, x, Normalisation((0.0,), (1.0,)), T, 64)
    logits, _ = run_bundle(tmp_path / "int8", torch.from_numpy(x))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-5)
    fp32, _ = reference_trace(model, x, Normalisation((0.0,), (1.0,)), T, 64)
    assert float(np.abs(expected - fp32).max()) > 0  # the weights were rounded: the layout is not the FP32 model

    export_nir_graph(graph, tmp_path / "fp16", input_shape=(1, 1, 16), timesteps=T,
                     options=ExportOptions(max_batch=64, precision="fp16"))
    half_layers = [n for n, m in for_precision(model, "fp16").named_modules() if isinstance(m, HalfCompute)]
    assert half_layers == ["body.nodes.fc2"]
    import onnx

    half = [i.name for i in onnx_load(tmp_path / "fp16" / "step.onnx").graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) == 4, half  # fc2's weight and bias, as hi and lo


def onnx_load(path: Path):
    import onnx

    return onnx.load(str(path))
