"""Agreement of NIR round trips (snnTorch, Sinabs) on 1,000 Fashion-MNIST test images, models trained briefly.

python examples/interop/nir_round_trips.py  (from the repository root, with the dev venv; writes /tmp/nir/fig/figures.json)
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch, nir
from torch import nn

import importlib.util
spec = importlib.util.spec_from_file_location("tn", Path(__file__).resolve().parents[2] / "tests/export/test_nir.py")
tn = importlib.util.module_from_spec(spec); spec.loader.exec_module(tn)
from seenn_deploy.export.nir import export_nir, repaired_graph, nir_model
from seenn_deploy.export.exporter import ExportOptions
from seenn_deploy.export.verify import verify_bundle
from seenn_deploy.data import ArrayDataset, Normalisation
from seenn_deploy.runtime.manifest import read_manifest

T, NTEST, NTRAIN = 4, 1000, 10000
OUT = Path("/tmp/nir/fig"); OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
with np.load(tn.SHARED_DATA / "fashion_mnist_train.npz") as d:
    xtr = torch.from_numpy(d["x"][:NTRAIN].astype(np.float32) / 255).unsqueeze(1); ytr = torch.from_numpy(d["y"][:NTRAIN].astype(np.int64))
with np.load(tn.FMNIST_TEST) as d:
    ytest = d["y"][:NTEST].astype(np.int64)
xtest = tn.fmnist(NTEST)


def train(net, forward, epochs=1, batch=100):
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(NTRAIN)
        for i in range(0, NTRAIN, batch):
            idx = perm[i:i + batch]
            out = forward(net, xtr[idx])
            loss = nn.functional.cross_entropy(out.mean(0), ytr[idx])
            opt.zero_grad(); loss.backward(); opt.step()
    return net.eval()


def report(name, bundle, reference, graph):
    logits, pred = run(bundle)
    ref = reference.numpy()
    mean = np.cumsum(ref.astype(np.float64), 0) / np.arange(1, T + 1).reshape(-1, 1, 1)
    refpred = mean.argmax(-1)
    manifest = read_manifest(bundle)
    return {"round_trip": name, "images": NTEST, "T": T,
            "prediction_agreement_per_t": [float(a) for a in (pred == refpred).mean(1)],
            "logits_equal_per_t": [bool(np.array_equal(logits[t], ref[t])) for t in range(T)],
            "max_abs_logit_diff_per_t": [float(np.abs(logits[t] - ref[t]).max()) for t in range(T)],
            "framework_accuracy_per_t": [float(a) for a in (refpred == ytest).mean(1)],
            "bundle_accuracy_per_t": [float(a) for a in (pred == ytest).mean(1)],
            "dt": manifest.provenance["nir"]["dt"]}


def run(bundle):
    from seenn_deploy.runtime.executors.ort import OrtExecutor
    from seenn_deploy.runtime.loop import run_timesteps
    manifest = read_manifest(bundle)
    trace = run_timesteps(manifest, OrtExecutor(bundle / manifest.graphs["step"]), xtest.numpy(), batch_size=250)
    return trace.logits, trace.prediction


class MP:  # pytest's monkeypatch, for snntorch_graph
    def context(self):
        import pytest
        return pytest.MonkeyPatch.context()


results = []
# snnTorch
import snntorch as snn
t0 = time.time()
net = tn.snntorch_net()
def fwd_snn(net, x):
    for m in net.modules():
        if isinstance(m, snn.Leaky): m.reset_mem()
    return 10 * torch.stack([net(x)[0] for _ in range(T)])  # spike rates (x10) of the output layer for training
net = train(net, fwd_snn, epochs=2)
graph = tn.snntorch_graph(net, MP())
nir.write(str(OUT / "snntorch.nir"), repaired_graph(graph, (1, 28, 28)))
export_nir(OUT / "snntorch.nir", OUT / "snntorch.seenn", input_shape=(1, 28, 28), timesteps=T,
           options=ExportOptions(max_batch=256, force=True))
ref = tn.snntorch_forward(net, xtest, T)
results.append(report("snnTorch export_to_nir (conv, spikes readout)", OUT / "snntorch.seenn", ref, graph))
print(json.dumps(results[-1]), f"{time.time()-t0:.0f}s", flush=True)
# Sinabs
import sinabs
t0 = time.time()
net = tn.sinabs_net(batch=100)
def fwd_sin(net, x):
    for m in net.modules():
        if hasattr(m, "reset_states"): m.reset_states()
    b = x.shape[0]
    return net(x.unsqueeze(1).expand(b, T, *x.shape[1:]).flatten(0, 1)).unflatten(0, (b, T)).transpose(0, 1)
net = train(net, fwd_sin, epochs=2)
for m in net.modules():
    if hasattr(m, "batch_size"): m.batch_size = NTEST
graph = sinabs.to_nir(net, torch.zeros(NTEST, 1, 28, 28))
nir.write(str(OUT / "sinabs.nir"), repaired_graph(graph, (1, 28, 28)))
export_nir(OUT / "sinabs.nir", OUT / "sinabs.seenn", input_shape=(1, 28, 28), timesteps=T,
           options=ExportOptions(max_batch=256, force=True))
ref = tn.sinabs_forward(net, xtest, T)
results.append(report("Sinabs to_nir (conv, IAF, SumPool, linear readout)", OUT / "sinabs.seenn", ref, graph))
print(json.dumps(results[-1]), f"{time.time()-t0:.0f}s", flush=True)
# Norse
t0 = time.time()
net = tn.norse_net()
def fwd_norse(net, x):
    state, out = None, []
    for _ in range(T):
        y, state = net(x.flatten(1), state); out.append(y)
    return 10 * torch.stack(out)
net = train(net, fwd_norse, epochs=2)
graph = tn.norse_graph(net)
nir.write(str(OUT / "norse.nir"), repaired_graph(graph, (1, 1, 784), dt=1e-6))
export_nir(OUT / "norse.nir", OUT / "norse.seenn", input_shape=(1, 1, 784), timesteps=T, dt=1e-6,
           options=ExportOptions(max_batch=256, force=True))
xflat = xtest.reshape(NTEST, 1, 1, 784)
ref = tn.norse_forward(net, xflat, T)
xtest_saved, xtest = xtest, xflat
results.append(report("Norse to_nir (MLP, LIFBox, dt=1e-6 given)", OUT / "norse.seenn", ref, graph))
xtest = xtest_saved
print(json.dumps(results[-1]), f"{time.time()-t0:.0f}s", flush=True)
(OUT / "figures.json").write_text(json.dumps(results, indent=1))
