"""Spike-count-tuned INT8 weights: never more calibration flips than max-abs (exact counts), QuantCompute's
invariants kept (so the Q/DQ export writes the tuned weights), deterministic, and bad input refused with a fix."""

import copy

import numpy as np
import pytest
import torch

from seenn_deploy.data import ArrayDataset, ValidationSlice
from seenn_deploy.data.validation import validation_rows
from seenn_deploy.errors import UserError
from seenn_deploy.export.int8 import QMAX, apply_int8, quantized_layers
from seenn_deploy.export.int8_rounding import calibration_set, planned_passes, tune_int8_weights
from seenn_deploy.export.precision import fold_batchnorms, weighted_layers
from seenn_deploy.snn.zoo.cnn import SpikingCNN

TIMESTEPS = 4


def tiny_model(seed: int = 0) -> SpikingCNN:
    """An untrained 1x8x8 spiking CNN, weights scaled up so that every neuron layer spikes (5-30 % of the time)."""
    torch.manual_seed(seed)
    model = SpikingCNN(num_classes=4, in_channels=1, image_size=8, channels=(4, 8), hidden=16).eval()
    with torch.no_grad():
        for layer, gain in zip([model.encoder[0], *weighted_layers(model).values()], (3.0, 4.0, 8.0, 1.0)):
            layer.weight.mul_(gain)
    return model


def calibration(seed: int = 1, batches: int = 2, batch: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 8, 8, generator=generator) for _ in range(batches)]


def int8_single(model: SpikingCNN) -> SpikingCNN:
    return apply_int8(copy.deepcopy(model), weights="single")


@torch.no_grad()
def flips(model, reference, batches) -> dict[str, int]:
    """Spikes of every neuron layer (all t) that differ from the reference's, counted from scratch."""
    counts: dict[str, int] = {}
    for x in batches:
        _, got = model.run_steps(x, TIMESTEPS)
        _, ref = reference.run_steps(x, TIMESTEPS)
        for name, spikes in ref.spikes.items():
            counts[name] = counts.get(name, 0) + int((got.spikes[name] != spikes).sum())
    return counts


@pytest.fixture(scope="module")
def tuned():
    model = tiny_model()
    batches = calibration()
    laid_out = int8_single(model)
    maxabs = copy.deepcopy(laid_out)
    report = tune_int8_weights(laid_out, model, batches, TIMESTEPS)
    reference = copy.deepcopy(model)
    fold_batchnorms(reference.body)  # the FP32 model as the INT8 layout folds it
    return model, batches, maxabs, laid_out, report, reference


def test_tuning_never_flips_more_calibration_spikes_than_max_abs(tuned):
    _model, batches, maxabs, laid_out, report, reference = tuned
    before, after = flips(maxabs, reference, batches), flips(laid_out, reference, batches)
    assert report.neuron_flips_before == before and report.neuron_flips_after == after  # the report's counts are exact
    assert sum(before.values()) > 0  # max-abs does flip spikes here, so the comparison means something
    assert sum(after.values()) < sum(before.values())
    for layer in report.layers:
        assert layer.total_flips_after <= layer.total_flips_before
        assert layer.accepted or layer.total_flips_after == layer.total_flips_before
    assert report.passes <= planned_passes(laid_out) and report.samples == 64 and report.timesteps == TIMESTEPS


def test_tuned_layers_keep_quantcompute_invariants(tuned):
    _model, _batches, maxabs, laid_out, _report, _reference = tuned
    changed = 0
    for layer, before in zip(quantized_layers(laid_out), quantized_layers(maxabs)):
        q, scale = layer.q_weight, layer.weight_scale
        assert torch.equal(q, q.round()) and float(q.abs().max()) <= QMAX and bool((scale > 0).all())
        assert torch.equal(layer.layer.weight, q * scale.reshape(-1, *[1] * (q.dim() - 1)))
        spec = layer.spec()
        assert np.array_equal(spec.weight, q.to(torch.int8).numpy()) and spec.weight_low is None
        assert np.array_equal(spec.weight_scale, scale.numpy()) and spec.input_scale == layer.input_scale
        changed += int((q != before.q_weight).sum())
        # the integer arithmetic and the traced graph form (dequantized weights) compute the same layer
        shape = (16, q.shape[1], 4, 4) if layer.kind == "conv" else (16, q.shape[1])
        x = torch.randint(0, 5, shape).float() * layer.input_scale  # on the layer's input grid
        exact = layer(x)
        layer.graph_form = True
        try:
            torch.testing.assert_close(layer(x), exact, rtol=1e-5, atol=1e-5)
        finally:
            layer.graph_form = False
    assert changed > 0  # tuning did choose other weights than max-abs


def test_tuning_is_deterministic_and_starts_from_max_abs_whatever_the_layers_hold():
    model, batches = tiny_model(), calibration()
    first = int8_single(model)
    report = tune_int8_weights(first, model, batches, TIMESTEPS)
    again = copy.deepcopy(first)  # already tuned: tuning restarts from max-abs and lands on the same weights
    second = tune_int8_weights(again, model, batches, TIMESTEPS)
    for a, b in zip(quantized_layers(first), quantized_layers(again)):
        assert torch.equal(a.q_weight, b.q_weight) and torch.equal(a.weight_scale, b.weight_scale)
    assert report.neuron_flips_before == second.neuron_flips_before
    assert report.neuron_flips_after == second.neuron_flips_after


def test_progress_counts_every_pass():
    model, batches = tiny_model(), calibration(batches=1)
    seen = []
    report = tune_int8_weights(int8_single(model), model, batches, TIMESTEPS, progress=seen.append)
    assert sum(seen) == report.passes > 0


def test_bad_input_is_refused_with_the_fix():
    model, batches = tiny_model(), calibration(batches=1)
    with pytest.raises(UserError, match="no calibration samples.*--calib-samples"):
        tune_int8_weights(int8_single(model), model, [], TIMESTEPS)
    with pytest.raises(UserError, match="no calibration samples"):
        tune_int8_weights(int8_single(model), model, [torch.zeros(0, 1, 8, 8)], TIMESTEPS)
    with pytest.raises(UserError, match=r"no INT8 layers.*apply_int8\(model, weights='single'\)"):
        tune_int8_weights(copy.deepcopy(model), model, batches, TIMESTEPS)
    with pytest.raises(UserError, match="pairs of INT8 weights.*weights='single'"):
        tune_int8_weights(apply_int8(copy.deepcopy(model)), model, batches, TIMESTEPS)
    with pytest.raises(UserError, match=r"shape \(32, 3, 8, 8\).*\[B, 1, 8, 8\]"):
        tune_int8_weights(int8_single(model), model, [torch.zeros(32, 3, 8, 8)], TIMESTEPS)
    with pytest.raises(UserError, match="timesteps >= 1"):
        tune_int8_weights(int8_single(model), model, batches, None)
    with pytest.raises(UserError, match="pass the FP32 model"):
        tune_int8_weights(int8_single(model), int8_single(model), batches, TIMESTEPS)
    other = SpikingCNN(num_classes=4, in_channels=1, image_size=8, channels=(4, 6), hidden=16)
    with pytest.raises(UserError, match="the model the INT8 layout was made from"):
        tune_int8_weights(int8_single(model), other, batches, TIMESTEPS)
    with pytest.raises(UserError, match="starting with 1.0"):
        tune_int8_weights(int8_single(model), model, batches, TIMESTEPS, ratios=(0.9,))


def test_calibration_set_is_train_data_outside_the_validation_slice():
    x = np.arange(200, dtype=np.float32).reshape(200, 1, 1, 1) * np.ones((1, 1, 4, 4), np.float32)
    train = ArrayDataset(x, np.zeros(200, np.int64), ["a"], "toy (train)")
    vs = ValidationSlice("toy", 0.25, 3, 200)
    calib = calibration_set(train, 64, vs)
    ids = set(calib.x[:, 0, 0, 0].astype(int).tolist())
    assert len(calib) == 64 and len(ids) == 64
    assert not ids & set(validation_rows(200, 0.25, 3)[1].tolist())
    assert np.array_equal(calibration_set(train, 64, vs).x, calib.x)  # fixed by (rows, samples, seed)
    assert len(calibration_set(train, 1000, vs)) == 150  # at most every row outside the slice
    with pytest.raises(UserError, match="--calib-samples 0"):
        calibration_set(train, 0, vs)
    with pytest.raises(UserError, match="trained on"):
        calibration_set(train, 8, ValidationSlice("toy", 0.25, 3, 300))


def test_int8_fp16_layers_keep_fp16_exact_scales():
    model, batches = tiny_model(), calibration(batches=1)
    laid_out = apply_int8(copy.deepcopy(model), weights="single", half=True)
    tune_int8_weights(laid_out, model, batches, TIMESTEPS)
    for layer in quantized_layers(laid_out):
        assert torch.equal(layer.weight_scale.half().float(), layer.weight_scale)
        assert float(layer.q_weight.abs().max()) <= QMAX


def test_event_batches_are_tuned_over_their_own_timesteps():
    model = tiny_model()
    generator = torch.Generator().manual_seed(2)
    events = [(torch.rand(3, 32, 1, 8, 8, generator=generator) < 0.5).float() * 3.0]  # [T, B, C, H, W]
    laid_out = int8_single(model)
    report = tune_int8_weights(laid_out, model, events, None)
    assert report.timesteps == 3 and report.samples == 32
    assert sum(report.neuron_flips_after.values()) <= sum(report.neuron_flips_before.values())
