"""Conversion: the SNN's mean output approaches the ANN's, the exported bundle runs it, thresholds are what they claim."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from seenn_deploy.convert.converter import (
    ConvertOptions,
    check_convertible,
    convert_checkpoint,
    convert_model,
)
from seenn_deploy.convert.thresholds import percentile_thresholds, qcfs_thresholds
from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.runtime.loop import open_bundle_graphs, run_timesteps
from seenn_deploy.runtime.manifest import CONFIDENCE, LOGITS, RESET, X
from seenn_deploy.snn.checkpoint import (
    CheckpointConfig,
    load_checkpoint,
    save_checkpoint,
)
from seenn_deploy.snn.qcfs import QCFS
from seenn_deploy.snn.zoo import create_model

KWARGS = {"num_classes": 10, "in_channels": 1, "image_size": [12, 12], "channels": [8, 16], "hidden": 32}


def qcfs_ann(levels: int, seed: int = 0) -> nn.Module:
    """A spiking_cnn built as a QCFS ANN with BN statistics and lambdas that make every layer active."""
    torch.manual_seed(seed)
    ann = create_model("spiking_cnn", **KWARGS, neuron={"kind": "qcfs", "levels": levels})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ann.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2 + 0.2)
            if isinstance(m, QCFS):
                m.threshold.fill_(1.0 + float(torch.rand(1, generator=g)))
    return ann.eval()


def mean_output_error(levels: int, steps: list[int]) -> list[float]:
    """Mean |SNN mean logits over the first T steps - ANN logits| at each T, on 64 random inputs."""
    ann = qcfs_ann(levels)
    snn, _ = convert_model("spiking_cnn", {**KWARGS, "neuron": {"kind": "qcfs", "levels": levels}}, ann,
                           qcfs_thresholds(ann))
    x = torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = ann(x, timesteps=1)[0]
        out = snn(x, timesteps=max(steps))
    mean = out.cumsum(0) / torch.arange(1, out.shape[0] + 1).view(-1, 1, 1)
    return [float((mean[t - 1] - target).abs().mean()) for t in steps]


def test_the_snn_mean_output_converges_to_the_ann_as_t_grows():
    """As L grows QCFS tends to clip(x, 0, lambda), the rate an IF neuron with soft reset tends to: the error falls ~1/T.

    A hard reset loses the residue above threshold and stalls at a wrong rate (the error stops falling).
    """
    steps = [8, 16, 32, 64, 128]
    errors = mean_output_error(levels=1024, steps=steps)
    assert all(b < 0.7 * a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < errors[0] / 8, errors


def test_at_t_equal_l_the_snn_reproduces_the_qcfs_ann():
    """QCFS with L = 4 at T = 4: the lambda/2 start makes the spike counts round as the ANN does (zero start: floor)."""
    error_at_l, error_late = mean_output_error(levels=4, steps=[4, 64])
    assert error_at_l < 0.2 * error_late, (error_at_l, error_late)


def write_ann(path, ann: nn.Module, neuron: dict, data: str = "digits") -> None:
    path.mkdir()
    save_checkpoint(path, ann, CheckpointConfig(
        arch="spiking_cnn", model={**KWARGS, "neuron": neuron}, timesteps=1, classes=[str(i) for i in range(10)],
        normalisation={"mean": [0.0], "std": [1.0]}, data=data, metrics={"validation": {"accuracy_per_timestep": [0.9]}},
        validation={"data": data, "fraction": 0.1, "seed": 0}))


def test_the_exported_converted_model_matches_torch_and_resets_to_half_thresholds(tmp_path):
    ann = qcfs_ann(4)
    write_ann(tmp_path / "ann", ann, {"kind": "qcfs", "levels": 4})
    config = convert_checkpoint(tmp_path / "ann", tmp_path / "snn", ConvertOptions(timesteps=8), log=lambda s: None)
    assert config.validation == {"data": "digits", "fraction": 0.1, "seed": 0}  # calibrate chooses on the ANN's slice
    snn, _ = load_checkpoint(tmp_path / "snn")
    manifest = export_checkpoint(tmp_path / "snn", tmp_path / "b",
                                 ExportOptions(max_batch=8, accumulate="sum", temperature=3.0))
    lambdas = qcfs_thresholds(ann)
    inits = {s.name: s.init for s in manifest.states}
    assert {name: inits[f"{name}.v"] for name in lambdas} == {name: th / 2 for name, th in lambdas.items()}
    x = np.random.default_rng(0).normal(0, 1, (6, 1, 12, 12)).astype(np.float32)
    step, encoder = open_bundle_graphs(tmp_path / "b", manifest)
    trace = run_timesteps(manifest, step, x, encoder=encoder)
    with torch.no_grad():
        expected, frame = snn.run_steps(torch.from_numpy(x), 8)
    rates = [float(s.mean()) for s in frame.spikes.values()]
    assert all(0 < r < 1 for r in rates), rates
    np.testing.assert_allclose(trace.logits, expected.numpy(), atol=2e-4, rtol=1e-4)
    summed = torch.from_numpy(trace.logits).cumsum(0) / 3.0  # --accumulate sum --temperature 3
    np.testing.assert_allclose(trace.confidence, summed.softmax(-1).max(-1).values.numpy(), atol=1e-5)
    # reset: rows with the flag start from the half-threshold membranes, whatever they held.
    static = encoder.run({X: x[:2]})["encoded"] if encoder is not None else x[:2]
    garbage = {s.name: np.full((2, *s.shape), 7.0, np.float32) for s in manifest.states}
    fresh = {s.name: np.full((2, *s.shape), s.init, np.float32) for s in manifest.states}
    after_reset = step.run({X: static, RESET: np.array([True, True]), **garbage})
    from_init = step.run({X: static, RESET: np.array([False, False]), **fresh})
    np.testing.assert_array_equal(after_reset[LOGITS], from_init[LOGITS])
    np.testing.assert_array_equal(after_reset[CONFIDENCE], from_init[CONFIDENCE])


def test_percentile_thresholds_are_the_percentiles_of_each_relu():
    torch.manual_seed(0)
    ann = create_model("spiking_cnn", **KWARGS, neuron={"kind": "relu"}).eval()
    x = torch.randn(40, 1, 12, 12)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(o))
             for n, m in ann.named_modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        ann(x, timesteps=1)
    for h in hooks:
        h.remove()
    found = percentile_thresholds(ann, iter([x[:16], x[16:32], x[32:]]), 40, 99.0)
    for name, outs in seen.items():
        expected = np.percentile(torch.cat(outs).numpy().ravel(), 99.0, method="higher")
        assert found[name] == pytest.approx(float(expected), rel=1e-6), name
    assert percentile_thresholds(ann, iter([x]), 40, 100.0) == {n: float(torch.cat(o).max()) for n, o in seen.items()}


def test_relu_conversion_reads_training_rows_and_converges(tmp_path):
    """--relu on digits: percentile-100 thresholds, then the SNN's output error falls as T grows."""
    from seenn_deploy.data import Normalisation, parse_data_spec

    torch.manual_seed(0)
    kwargs = {**KWARGS, "image_size": [8, 8]}
    ann = create_model("spiking_cnn", **kwargs, neuron={"kind": "relu"}).eval()
    path = tmp_path / "ann"
    path.mkdir()
    save_checkpoint(path, ann, CheckpointConfig(
        arch="spiking_cnn", model={**kwargs, "neuron": {"kind": "relu"}}, timesteps=1, data="digits",
        classes=[str(i) for i in range(10)], normalisation={"mean": [8.0], "std": [6.0]}))
    config = convert_checkpoint(path, tmp_path / "snn", ConvertOptions(relu=True, percentile=100.0, samples=300),
                                log=lambda s: None)
    assert config.training["method"] == "relu-percentile" and config.training["samples"] == 300
    snn, _ = load_checkpoint(tmp_path / "snn")
    test = parse_data_spec("digits").load("test")
    x = torch.from_numpy(Normalisation.from_dict(config.normalisation).apply(test.x[:64]))
    with torch.no_grad():
        target = ann(x, timesteps=1)[0]
        out = snn(x, timesteps=128)
    mean = out.cumsum(0) / torch.arange(1, 129).view(-1, 1, 1)
    errors = [float((mean[t - 1] - target).abs().mean()) for t in (8, 32, 128)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 4, errors


def test_what_cannot_be_converted_is_refused_with_the_reason(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(UserError, match="max pooling .*average pooling"):
        check_convertible(net, "relu", relu=True, where="net")
    with pytest.raises(UserError, match="already an SNN"):
        check_convertible(nn.Identity(), "lif", relu=False, where="net")
    with pytest.raises(UserError, match="pass --relu"):
        check_convertible(nn.Identity(), "relu", relu=False, where="net")
    with pytest.raises(UserError, match="leave out --relu"):
        check_convertible(nn.Identity(), "qcfs", relu=True, where="net")
    write_ann(tmp_path / "ann", qcfs_ann(4), {"kind": "qcfs", "levels": 4})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        convert_checkpoint(tmp_path / "ann", tmp_path / "full", log=lambda s: None)
