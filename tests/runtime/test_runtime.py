"""The runtime: exact early-exit results in every mode, thread-safe streaming, failures that stay contained."""

import threading
from concurrent.futures import wait

import numpy as np
import pytest

from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Confidence, Fixed, Runtime, read_manifest, run_timesteps
from seenn_deploy.runtime.api import RuntimeClosed
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.loop import open_bundle_graphs

ALPHA = 0.9


@pytest.fixture(scope="module")
def digits():
    return parse_data_spec("digits").load("test")


@pytest.fixture(scope="module")
def offline(digits_bundle, digits):
    """The reference: every sample runs T_max steps; its exit is the first t whose confidence > alpha."""
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    trace = run_timesteps(manifest, step, digits.x, encoder=encoder)
    above = trace.confidence > ALPHA
    exit_t = np.where(above.any(0), above.argmax(0) + 1, manifest.timesteps)
    cols = np.arange(len(digits.x))
    return exit_t, trace.prediction[exit_t - 1, cols], trace.confidence[exit_t - 1, cols]


def summary(results):
    return [(r.prediction, r.confidence, r.timesteps) for r in results]


MODES = [("slots", True), ("slots", False), ("compact", False), ("naive", False)]


@pytest.mark.parametrize("mode, device_states", MODES, ids=["slots-device-states", "slots-host-states", "compact", "naive"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batched_results_equal_the_offline_trace_exactly(digits_bundle, digits, offline, mode, device_states, batch):
    exit_t, prediction, confidence = offline
    assert 1 < exit_t.mean() < 4  # some samples exit early, some do not: the test can tell modes apart
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), mode=mode, batch=batch,
                             device_states=device_states) as runtime:
        results = runtime.infer(digits.x)
    assert [r.timesteps for r in results] == exit_t.tolist()
    assert [r.prediction for r in results] == prediction.tolist()
    assert [r.confidence for r in results] == confidence.tolist()


def test_a_confidence_equal_to_alpha_does_not_exit_at_batch_1_or_batched(digits_bundle, digits):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    trace = run_timesteps(manifest, step, digits.x, encoder=encoder)
    reached = np.sort(trace.confidence[0])[len(digits.x) // 2]  # a float32 confidence some samples have exactly
    alpha = float(np.nextafter(np.float64(reached), 0.0))  # just below it in float64, equal to it in float32
    assert np.float32(alpha) == reached and alpha < float(reached)
    above = trace.confidence > np.float32(alpha)  # strictly above, in the confidence's own type
    exit_t = np.where(above.any(0), above.argmax(0) + 1, manifest.timesteps)
    for mode, batch in (("slots", 1), ("slots", 7), ("compact", 7)):
        with Runtime.from_bundle(digits_bundle, exit=Confidence(alpha), mode=mode, batch=batch) as runtime:
            assert [r.timesteps for r in runtime.infer(digits.x)] == exit_t.tolist(), (mode, batch)


def test_single_sample_runs_equal_the_batched_run(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), mode="slots", batch=16) as runtime:
        batched = summary(runtime.infer(digits.x[:40]))
        alone = [summary(runtime.infer(digits.x[i : i + 1]))[0] for i in range(40)]
    assert batched == alone


def test_fixed_exit_runs_every_sample_t_steps(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle, exit="fixed:2", batch=32) as runtime:
        assert isinstance(runtime.exit, Fixed)
        assert {r.timesteps for r in runtime.infer(digits.x[:50])} == {2}


def test_20000_submissions_from_8_threads_are_each_answered_once(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), mode="slots", batch=64) as runtime:
        expected = summary(runtime.infer(digits.x))
        futures = [[] for _ in range(8)]

        def client(k):
            for i in range(k, 20000, 8):
                futures[k].append((i % len(digits.x), runtime.submit(digits.x[i % len(digits.x)])))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pairs = [p for chunk in futures for p in chunk]
        done, not_done = wait([f for _, f in pairs], timeout=300)
        assert len(pairs) == 20000 and not not_done
        for index, future in pairs:
            r = future.result()
            assert (r.prediction, r.confidence, r.timesteps) == expected[index]


class FailingStep(Executor):
    """Wraps the real step executor and raises on chosen calls, as a crashed device would."""

    def __init__(self, inner, fail_on):
        super().__init__(inner.inputs, inner.outputs, "failing step")
        self.inner, self.fail_on = inner, set(fail_on)

    def _run_impl(self, feeds):
        if self.calls in self.fail_on:
            raise RuntimeError("device lost")
        return self.inner._run_impl(feeds)


@pytest.mark.parametrize("mode", ["slots", "compact", "naive"])
def test_a_failing_step_fails_only_the_requests_in_flight(digits_bundle, digits, offline, mode):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    runtime = Runtime(manifest, FailingStep(step, fail_on={3}), encoder, Confidence(ALPHA), mode=mode, batch=8)
    futures = [runtime.submit(x) for x in digits.x[:100]]
    runtime.close()
    assert all(f.done() for f in futures)
    failed = [i for i, f in enumerate(futures) if f.exception() is not None]
    assert 0 < len(failed) <= 8  # at most one batch was in flight
    assert all("device lost" in str(futures[i].exception()) for i in failed)
    exit_t = offline[0]
    for i, f in enumerate(futures):
        if i not in failed:
            assert f.result().timesteps == exit_t[i]


class ExitThatFailsOnce(Confidence):
    """Confidence(ALPHA) whose decision raises on its first call: a bug in a user's exit policy."""

    def exits(self, confidence, steps, budget):
        if not getattr(self, "failed", False):
            object.__setattr__(self, "failed", True)
            raise ValueError("policy bug")
        return super().exits(confidence, steps, budget)


def test_a_policy_that_raises_at_batch_1_fails_that_sample_only(digits_bundle, digits, offline):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    runtime = Runtime(manifest, step, encoder, ExitThatFailsOnce(ALPHA), mode="slots", batch=1)
    futures = [runtime.submit(x) for x in digits.x[:20]]
    runtime.close()
    assert isinstance(futures[0].exception(timeout=10), ValueError)
    assert [f.result(timeout=10).timesteps for f in futures[1:]] == offline[0][1:20].tolist()


def test_close_answers_everything_submitted_and_refuses_more(digits_bundle, digits):
    runtime = Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=4)
    futures = [runtime.submit(x) for x in digits.x[:200]]
    runtime.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeClosed):
        runtime.submit(digits.x[0])


def test_wrong_input_shape_or_dtype_names_the_expected_shape(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle) as runtime:
        with pytest.raises(UserError, match=r"\[N, 1, 8, 8\] \(CHW\)"):
            runtime.infer(np.zeros((3, 1, 28, 28), np.float32))
        with pytest.raises(UserError, match=r"uint8.*\[N, 1, 8, 8\]"):
            runtime.infer(np.zeros((3, 1, 8, 8), np.uint8))
        with pytest.raises(UserError, match=r"\[N, 1, 8, 8\]"):
            runtime.submit(np.zeros((8, 8), np.float32))


def test_bad_runtime_settings(digits_bundle):
    with pytest.raises(UserError, match="outside 1..256"):
        Runtime.from_bundle(digits_bundle, batch=0)
    with pytest.raises(UserError, match="fixed:T, confidence:ALPHA"):
        Runtime.from_bundle(digits_bundle, exit="sometimes")
    with pytest.raises(UserError, match="policy.onnx"):
        Runtime.from_bundle(digits_bundle, exit="policy")
    with pytest.raises(UserError, match="T_max 4"):
        Runtime.from_bundle(digits_bundle, exit="fixed:9").infer(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(UserError, match="not a seenn-deploy bundle"):
        Runtime.from_bundle(digits_bundle.parent)


def test_torch_backend_matches_onnx_runtime(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle, backend="ort", exit=Confidence(ALPHA), batch=32) as ort_rt, \
            Runtime.from_bundle(digits_bundle, backend="torch", exit=Confidence(ALPHA), batch=32) as torch_rt:
        a, b = ort_rt.infer(digits.x), torch_rt.infer(digits.x)
    assert [r.prediction for r in a] == [r.prediction for r in b]
    assert [r.timesteps for r in a] == [r.timesteps for r in b]
    np.testing.assert_allclose([r.confidence for r in a], [r.confidence for r in b], atol=1e-5)


def test_slot_mode_keeps_states_in_bound_buffers(digits_bundle, digits):
    """With I/O binding the states stay in the executor's OrtValues: run() is never called."""
    from seenn_deploy.runtime.requests import Requests
    from seenn_deploy.runtime.scheduler import SlotScheduler

    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    scheduler = SlotScheduler(manifest, step, Confidence(ALPHA), 8, encoder, device_states=True)
    assert scheduler.device is not None and scheduler.states == {}
    step.run = None  # the host path would call it
    scheduler.add(Requests.of(digits.x[:20]))
    done = []
    while not scheduler.idle:
        done += scheduler.tick().keys
    scheduler.close()
    assert len(done) == 20 and step.calls == scheduler.steps_run


def test_slot_mode_on_the_ort_cpu_binds_its_states_by_default_above_batch_1(digits_bundle, digits, offline):
    """Bound in place, a step allocates and copies nothing; the answers are the offline trace's, exactly."""
    from seenn_deploy.runtime.scheduler import SerialScheduler, make_scheduler

    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=16) as runtime:
        scheduler = runtime.new_scheduler()
        assert scheduler.device is not None and scheduler.states == {}
        scheduler.close()
        runtime.step.run = None  # the host path would call it
        results = runtime.infer(digits.x)
        assert type(make_scheduler("slots", runtime.manifest, runtime.step, Confidence(ALPHA), 1)) is SerialScheduler
    assert [r.timesteps for r in results] == offline[0].tolist()
    assert [r.prediction for r in results] == offline[1].tolist()


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_device_states_read_back_only_the_head(digits_bundle, digits, offline, backend):
    """Slot mode with device states: exact results, and 8 bytes per slot per step come back (conf + pred)."""
    from seenn_deploy.runtime.requests import Requests
    from seenn_deploy.runtime.scheduler import SlotScheduler

    manifest = read_manifest(digits_bundle)
    with Runtime.from_bundle(digits_bundle, backend=backend, exit=Confidence(ALPHA)) as runtime:
        scheduler = SlotScheduler(manifest, runtime.step, Confidence(ALPHA), 16, runtime.encoder, device_states=True)
        assert scheduler.device is not None
        scheduler.add(Requests.of(runtime.prepare(digits.x)))
        answers = {}
        while not scheduler.idle:
            settled = scheduler.tick()
            answers.update(zip(settled.keys, settled.answers))
        device = scheduler.device
        scheduler.close()
    assert [answers[i].timesteps for i in range(len(digits.x))] == offline[0].tolist()
    assert device.bytes_to_host == scheduler.steps_run * 16 * 8


def test_policy_exit_runs_each_sample_for_the_candidate_its_policy_picks(digits_checkpoint, digits, tmp_path):
    import torch

    from seenn_deploy.export.exporter import export_checkpoint
    from seenn_deploy.runtime.executors.ort import OrtExecutor
    from seenn_deploy.snn.checkpoint import load_checkpoint, save_checkpoint
    from seenn_deploy.snn.zoo import create_model

    model, config = load_checkpoint(digits_checkpoint)
    torch.manual_seed(0)
    policy = create_model("policy_resnet8", num_classes=3, in_channels=1, image_size=8).eval()
    config.policy = {"arch": "policy_resnet8", "model": {"num_classes": 3, "in_channels": 1, "image_size": 8},
                     "candidates": [1, 2, 4]}
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(tmp_path / "ckpt", model, config, policy=policy)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "b")
    with Runtime.from_bundle(tmp_path / "b", exit="policy", mode="slots", batch=16) as runtime:
        results = runtime.infer(digits.x)
        scores = OrtExecutor(tmp_path / "b" / "policy.onnx").run({"x": runtime.prepare(digits.x)})["scores"]
    expected = np.array([1, 2, 4])[scores.argmax(1)]
    assert len(set(expected.tolist())) > 1  # the policy picks different T for different samples
    assert [r.timesteps for r in results] == expected.tolist()
