"""`seenn-deploy export --factory` options and `verify` on foreign bundles, on real Fashion-MNIST.

A SpikingJelly model (the tutorial's CSNN: forward repeats the input T times and returns the
mean) and an snnTorch model are built by factory functions from a file, with weights saved as
safetensors. verify checks each bundle against its framework rerun on the data (and against the
outputs stored at export); a bundle with changed weights in step.onnx fails with exit code 1.
The models are untrained; their BatchNorm statistics are set so that every layer fires.
"""

import importlib.metadata
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.runtime.manifest import read_manifest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FMNIST = f"fashion-mnist:{SHARED_DATA}"
MEAN, STD = "0.286", "0.353"
VERIFY_SAMPLES = 300

pytestmark = [
    pytest.mark.skipif(not (SHARED_DATA / "fashion_mnist_test.npz").is_file(),
                       reason=f"Fashion-MNIST is not in {SHARED_DATA} (see its README)"),
    pytest.mark.skipif(importlib.util.find_spec("spikingjelly") is None or importlib.util.find_spec("snntorch") is None,
                       reason="needs SpikingJelly (pip install --no-deps spikingjelly loguru) and snnTorch"),
]

FACTORIES = '''
from torch import nn

T = 4


class CSNN(nn.Module):
    """The SpikingJelly Fashion-MNIST tutorial's shape: multi-step layers; forward repeats the input, returns the mean"""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        self.T = T
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, 4, 5, stride=2, bias=False), layer.BatchNorm2d(4),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.Flatten(), layer.Linear(4 * 12 * 12, 10), neuron.LIFNode(tau=2.0),
        )
        functional.set_step_mode(self, "m")

    def forward(self, x):
        x_seq = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.conv_fc(x_seq).mean(0)


def jelly():
    return CSNN()


def snntorch_net():
    import snntorch as snn

    return nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), snn.Leaky(beta=0.9, init_hidden=True),
        nn.Flatten(), nn.Linear(4 * 12 * 12, 10), snn.Leaky(beta=0.8, init_hidden=True, output=True),
    )
'''
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def fire(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics and Linear scale under which every layer fires on normalised Fashion-MNIST."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.5)
        elif isinstance(m, nn.Linear):
            m.weight.data.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def factory_dir(tmp_path_factory):
    """A directory with the factory module (a unique name per run) and each model's weights."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("factories")
    name = f"seenn_foreign_nets_{abs(hash(str(root))) % 10**8}"
    (root / f"{name}.py").write_text(FACTORIES)
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(name)
        for seed, fn in enumerate(("jelly", "snntorch_net")):
            torch.manual_seed(seed)
            model = fire(getattr(module, fn)(), seed)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / f"{fn}.safetensors"))
    finally:
        sys.path.remove(str(root))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    yield root, name
    sys.modules.pop(name, None)


def export_args(root: Path, name: str, fn: str, out: Path, *extra) -> list:
    return ["export", root / f"{fn}.safetensors", "--factory", f"{name}:{fn}", "--input-shape", "1,28,28", "-T", "4",
            "--sample-data", FMNIST, "--classes", root / "classes.txt", "--mean", MEAN, "--std", STD,
            "--max-batch", "512", "--out", out, *extra]


@pytest.fixture(scope="module")
def bundles(factory_dir, tmp_path_factory):
    """The two bundles, exported once through the CLI (run from the factory's directory, as a user would)."""
    from seenn_deploy.cli import main

    root, name = factory_dir
    out = tmp_path_factory.mktemp("bundles")
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for fn, extra in (("jelly", ()), ("snntorch_net", ("--readout", "membrane"))):
            try:
                main([str(a) for a in export_args(root, name, fn, out / fn, *extra)])
            except SystemExit as exc:
                assert exc.code == 0, exc
            made[fn] = out / fn
    return made


def verify(run_cli, bundle: Path, tmp_path: Path, *extra):
    report = tmp_path / "verify.json"
    result = run_cli("verify", bundle, "--data", FMNIST, "--samples", VERIFY_SAMPLES, "--json", report, *extra)
    return result, (json.loads(report.read_text()) if report.exists() else None)


@pytest.mark.parametrize("fn, framework", [("jelly", "spikingjelly"), ("snntorch_net", "snntorch")])
def test_factory_options_reach_the_manifest(bundles, factory_dir, fn, framework):
    root, name = factory_dir
    manifest = read_manifest(bundles[fn])
    foreign = manifest.provenance["foreign"]
    assert manifest.classes == CLASSES
    assert manifest.input.mean == (float(MEAN),) and manifest.input.std == (float(STD),)
    assert foreign["framework"] == framework
    assert foreign["framework_version"] == importlib.metadata.version(framework) != "unknown"
    assert foreign["readout"] == ("membrane" if framework == "snntorch" else "spikes")
    assert foreign["origin"]["factory"] == f"{name}:{fn}"
    assert foreign["origin"]["weights"] == str((root / f"{fn}.safetensors").resolve())
    assert (bundles[fn] / foreign["reference"]).is_file() and foreign["reference_samples"] == 32
    if framework == "spikingjelly":  # the tutorial's loop, exported as its per-step module
        assert foreign["step_mode"] == "m" and foreign["time_loop"]["inner"] == "conv_fc"


@pytest.mark.parametrize("fn", ["jelly", "snntorch_net"])
def test_verify_passes_on_a_foreign_bundle_against_its_framework(bundles, fn, run_cli, tmp_path):
    result, report = verify(run_cli, bundles[fn], tmp_path)
    assert result.code == 0, result.out + result.err
    assert "PASS" in result.out and report["passed"]
    on_data, stored = report["checks"]
    framework = "spikingjelly" if fn == "jelly" else "snntorch"
    assert on_data["source"].startswith(f"{framework} on fashion-mnist") and on_data["samples"] == VERIFY_SAMPLES
    assert stored["source"] == "reference set stored at export" and stored["samples"] == 32
    for check in (on_data, stored):
        assert check["passed"] and check["mismatch_rate"] == 0 and min(check["agreement"]) == 1.0
        assert max(check["max_logit_diff"]) < 1e-4
    if fn == "jelly":  # the model's own 4-step call against the bundle after 4 steps
        assert on_data["loop_timesteps"] == 4 and on_data["loop_agreement"] == 1.0
    # the outputs vary over the data, so agreement is not trivially 100 %
    assert len(set(report["bundle_accuracy"])) > 1 or 0.05 < report["bundle_accuracy"][-1] < 0.95


def tamper(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` whose step.onnx has one weight tensor changed (the graph stays valid)."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(bundle, out)
    proto = onnx.load(str(out / "step.onnx"))
    weights = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(weights)
    changed = array + np.random.default_rng(0).normal(0, 0.1 * float(np.abs(array).mean()), array.shape).astype(
        array.dtype)
    weights.CopyFrom(numpy_helper.from_array(changed, weights.name))
    onnx.save(proto, str(out / "step.onnx"))
    return out


@pytest.mark.parametrize("fn", ["jelly", "snntorch_net"])
def test_verify_fails_on_a_tampered_bundle(bundles, fn, run_cli, tmp_path):
    bad = tamper(bundles[fn], tmp_path / "bad")
    result, report = verify(run_cli, bad, tmp_path)
    assert result.code == 1, result.out + result.err
    assert "FAIL" in result.out and not report["passed"]
    assert all(not check["passed"] and check["mismatch_rate"] > 0.01 for check in report["checks"])


def fmnist(n: int) -> torch.Tensor:
    """The first n test images, normalised as the bundles normalise them."""
    from seenn_deploy.data import parse_data_spec

    x = parse_data_spec(FMNIST).load("test").subset(n).x
    return torch.from_numpy((x - np.float32(MEAN)) / np.float32(STD))


def test_verify_checks_an_in_memory_export_on_its_stored_reference_set(run_cli, tmp_path):
    """No factory recorded: the framework outputs stored at export are the reference; tampering still fails."""
    import snntorch as snn

    from seenn_deploy.data import Normalisation
    from seenn_deploy.export.foreign import export_model

    torch.manual_seed(3)
    net = fire(nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), snn.Leaky(beta=0.9, init_hidden=True),
                             nn.Flatten(), nn.Linear(4 * 12 * 12, 10),
                             snn.Leaky(beta=0.8, init_hidden=True, output=True)), 3)
    export_model(net, fmnist(16), tmp_path / "mem", timesteps=3, readout="membrane",
                 normalisation=Normalisation((float(MEAN),), (float(STD),)))
    with np.load(tmp_path / "mem" / "reference.npz") as ref:
        assert len(set(ref["logits"][-1].argmax(-1).tolist())) > 1, "every sample predicts one class"
    result, report = verify(run_cli, tmp_path / "mem", tmp_path)
    assert result.code == 0, result.out + result.err
    assert "exported in memory" in result.out and len(report["checks"]) == 1 and report["passed"]
    assert f"(--samples {VERIFY_SAMPLES} unused)" in result.out  # the stored set has its own size
    result, report = verify(run_cli, tamper(tmp_path / "mem", tmp_path / "bad"), tmp_path)
    assert result.code == 1 and not report["passed"]


@pytest.mark.slow
def test_the_wrong_export_of_a_time_looped_model_fails_verify(factory_dir, tmp_path, monkeypatch):
    """The issue's wrong export (the tutorial model run as step mode 's': each bundle step a whole 4-step call, with
    the membranes carried on) is refused now; made anyway, as the old exporter made it, verify fails it: its
    reference is the model's own call and the step pattern it detects, never the one the bundle records."""
    from seenn_deploy.errors import UserError
    from seenn_deploy.export import foreign
    from seenn_deploy.export.adapters.time_loop import StepPlan
    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.export.verify import verify_foreign

    root, name = factory_dir
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module(name)
    net = module.jelly()
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(root / "jelly.safetensors")))
    net.eval()
    norm = Normalisation((float(MEAN),), (float(STD),))
    with pytest.raises(UserError, match="step_mode 's' contradicts the model"):
        foreign.export_model(net, fmnist(8), tmp_path / "refused", timesteps=4, step_mode="s", normalisation=norm)

    monkeypatch.setattr(foreign, "plan_steps", lambda *args, **kwargs: StepPlan("", multi_step=False))  # the old way
    manifest = foreign.export_model(net, fmnist(8), tmp_path / "wrong", timesteps=4, normalisation=norm)
    monkeypatch.undo()
    assert manifest.provenance["foreign"]["step_mode"] == "s" and "time_loop" not in manifest.provenance["foreign"]
    data = parse_data_spec(FMNIST).load("test").subset(VERIFY_SAMPLES)
    report = verify_foreign(tmp_path / "wrong", manifest, data=data, module=net)
    assert not report.passed
    assert "the bundle was exported in step mode 's' with no loop of its own" in report.problems[0]
    on_data = report.checks[0]  # the bundle's step 1 is the model's whole 4-step call, and so on
    assert not on_data.passed and on_data.mismatch_rate > 0.5
    assert on_data.loop_timesteps == 4 and on_data.loop_agreement < 0.99  # the model's own call disagrees at t = 4
    stored = report.checks[1]  # made the wrong way at export too, so it agrees: only a rerun can tell
    assert stored.passed and stored.loop_timesteps is None


@pytest.mark.parametrize("args, fragment", [
    (["--mean", "0.1,0.2"], "--mean has 2 values for 1 input channels"),
    (["--std", "0"], "std <= 0"),
    (["--classes", "a,b,a"], "names a class twice"),
    (["--step-mode", "s"], "step_mode 's' contradicts the model"),
])
def test_bad_factory_options_are_refused(factory_dir, args, fragment, run_cli, tmp_path, monkeypatch):
    root, name = factory_dir
    monkeypatch.chdir(root)
    result = run_cli(*export_args(root, name, "jelly", tmp_path / "b", *args))
    assert fragment in result.error()
    assert not (tmp_path / "b").exists()


def test_factory_options_without_factory_are_refused(run_cli, tmp_path):
    result = run_cli("export", tmp_path / "ckpt", "--readout", "membrane", "--out", tmp_path / "b")
    assert "--readout go with --factory" in result.error()


def test_verify_checks_an_int8_foreign_bundle(tmp_path):
    """An INT8 foreign bundle verifies against its framework (it raised KeyError: no INT8 logit tolerance): its
    logits differ from snnTorch's by the weights' rounding, within the tolerance, with no prediction changed."""
    import onnx
    import snntorch as snn

    from seenn_deploy.data import Normalisation, parse_data_spec
    from seenn_deploy.export.exporter import ExportOptions
    from seenn_deploy.export.foreign import export_model
    from seenn_deploy.export.qdq import check_qdq_layout
    from seenn_deploy.export.verify import LOGIT_TOLERANCE, verify_foreign

    torch.manual_seed(3)
    net = fire(nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), snn.Leaky(beta=0.9, init_hidden=True),
                             nn.Flatten(), nn.Linear(4 * 12 * 12, 10),
                             snn.Leaky(beta=0.8, init_hidden=True, output=True)), 3)
    manifest = export_model(net, fmnist(32), tmp_path / "int8", timesteps=4, readout="membrane",
                            normalisation=Normalisation((float(MEAN),), (float(STD),)),
                            options=ExportOptions(precision="int8"))
    assert manifest.precision == "int8" and list(manifest.provenance["int8_input_scales"]) == ["body.module.4"]
    assert check_qdq_layout(onnx.load(str(tmp_path / "int8" / "step.onnx"))) == 1  # the Linear fed by spikes
    data = parse_data_spec(FMNIST).load("test").subset(VERIFY_SAMPLES)
    report = verify_foreign(tmp_path / "int8", manifest, data=data, module=net)
    assert report.passed and len(report.checks) == 2
    for check in report.checks:
        assert check.tolerance == LOGIT_TOLERANCE["int8"] and check.mismatch_rate == 0 and min(check.agreement) == 1.0
        assert 0 < max(check.max_logit_diff) < 1e-3  # rounded weights, no flipped spike


@pytest.mark.parametrize("args, fragment", [
    (["--checkpoint", "no-such-weights.safetensors"], "no such weights file"),
    (["--max-flip-rate", "0.01"], "drop --max-flip-rate"),
])
def test_verify_options_a_foreign_bundle_cannot_honour_are_refused(bundles, args, fragment, run_cli, tmp_path):
    result = run_cli("verify", bundles["jelly"], "--data", FMNIST, "--samples", "10", *args)
    assert result.code == 2 and fragment in result.err, result.err
