"""Event inputs ([T, C, H, W] per sample): step t reads frame t, in every scheduler, batch 1 included."""

import numpy as np
import pytest
import torch

from seenn_deploy.export.exporter import ExportSource, export_bundle
from seenn_deploy.runtime import Confidence, Runtime, read_manifest, run_timesteps
from seenn_deploy.runtime.loop import open_bundle_graphs
from seenn_deploy.runtime.scheduler import SerialScheduler, SlotScheduler, make_scheduler
from seenn_deploy.snn.zoo import create_model

T = 3


@pytest.fixture(scope="module")
def event_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("spiking_cnn", num_classes=4, in_channels=2, image_size=8).eval()
    with torch.no_grad():  # default init barely fires: scale the weights until every layer spikes
        for layer in model.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.weight.mul_(6.0)
    out = tmp_path_factory.mktemp("events") / "b"
    export_bundle(ExportSource(model, T, ["a", "b", "c", "d"], event=True), out)
    return out


@pytest.fixture(scope="module")
def events():
    return (np.random.default_rng(0).random((60, T, 2, 8, 8)) < 0.3).astype(np.float32)


@pytest.mark.parametrize("mode, batch, device_states", [("slots", 1, None), ("slots", 1, True), ("slots", 5, None),
                                                        ("slots", 5, True), ("compact", 5, None), ("naive", 5, None)])
def test_event_results_equal_the_offline_trace(event_bundle, events, mode, batch, device_states):
    manifest = read_manifest(event_bundle)
    assert manifest.input.kind == "event" and not manifest.has_encoder
    step, _ = open_bundle_graphs(event_bundle, manifest)
    trace = run_timesteps(manifest, step, events)
    alpha = float(np.quantile(trace.confidence, 0.7))  # some samples leave early, some run all frames
    above = trace.confidence > alpha
    exit_t = np.where(above.any(0), above.argmax(0) + 1, T)
    assert 1 < exit_t.mean() < T
    with Runtime.from_bundle(event_bundle, exit=Confidence(alpha), mode=mode, batch=batch,
                             device_states=device_states) as runtime:
        results = runtime.infer(events)
    cols = np.arange(len(events))
    assert [r.timesteps for r in results] == exit_t.tolist()
    assert [r.prediction for r in results] == trace.prediction[exit_t - 1, cols].tolist()
    assert [r.confidence for r in results] == trace.confidence[exit_t - 1, cols].tolist()


def test_batch_1_runs_serially_unless_slots_keep_device_states(event_bundle):
    manifest = read_manifest(event_bundle)
    step, _ = open_bundle_graphs(event_bundle, manifest)
    for mode in ("slots", "compact", "naive"):
        assert type(make_scheduler(mode, manifest, step, Confidence(0.5), 1)) is SerialScheduler
    assert type(make_scheduler("compact", manifest, step, Confidence(0.5), 2)) is not SerialScheduler
    slots = make_scheduler("slots", manifest, step, Confidence(0.5), 1, device_states=True)
    assert type(slots) is SlotScheduler and slots.device is not None
    slots.close()
