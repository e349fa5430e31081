"""The runtime under what callers do: cancelled futures, faults in and around the worker, close()
from a callback, non-finite and out-of-range inputs. Every request gets one answer, promptly."""

import random
import threading
import time
import warnings
from concurrent.futures import wait

import numpy as np
import pytest

from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.runtime import Confidence, Runtime, read_manifest
from seenn_deploy.runtime.api import RuntimeClosed, WorkerFailed
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.loop import open_bundle_graphs

ALPHA = 0.9
PROMPT = 60  # seconds: far above what any wait here needs, so a miss means a hang


@pytest.fixture(scope="module")
def digits():
    return parse_data_spec("digits").load("test")


@pytest.fixture(scope="module")
def expected(digits_bundle, digits):
    """infer's answer for every digits test sample: what each submission must get."""
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=16) as runtime:
        return [triple(r) for r in runtime.infer(digits.x)]


def triple(result):
    return result.prediction, result.confidence, result.timesteps


class CountingRuntime(Runtime):
    """A Runtime that counts what its worker hands to each future, to catch an answer given twice."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deliveries: dict[int, int] = {}

    def _deliver(self, settled) -> None:
        for future in settled.keys:
            self.deliveries[id(future)] = self.deliveries.get(id(future), 0) + 1
        super()._deliver(settled)


class FaultyStep(Executor):
    """The real step graph, raising on every `every`-th call, as a device that fails now and then would."""

    def __init__(self, inner: Executor, every: int) -> None:
        super().__init__(inner.inputs, inner.outputs, "faulty step")
        self.inner, self.every, self.closed = inner, every, False

    def _run_impl(self, feeds):
        if self.every and (self.calls + 1) % self.every == 0:
            raise RuntimeError("injected fault")
        return self.inner._run_impl(feeds)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


def open_runtime(bundle, mode: str, batch: int, fault_every: int = 0, runtime_type=Runtime, exit_policy=None):
    manifest = read_manifest(bundle)
    step, encoder = open_bundle_graphs(bundle, manifest)
    return runtime_type(manifest, FaultyStep(step, fault_every), encoder, exit_policy or Confidence(ALPHA),
                        mode=mode, batch=batch)


def submit_from_threads(runtime, digits, total: int, threads: int, cancel_share: float):
    """[(sample index, future, cancel() returned True)] for `total` submissions from `threads` threads;
    each thread cancels a random share of its futures right after submitting them."""
    out: list[list] = [[] for _ in range(threads)]

    def client(k: int) -> None:
        rng = random.Random(k)
        for i in range(k, total, threads):
            index = i % len(digits.x)
            future = runtime.submit(digits.x[index])
            out[k].append((index, future, rng.random() < cancel_share and future.cancel()))

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [row for chunk in out for row in chunk]


@pytest.mark.parametrize("mode, batch", [("slots", 64), ("compact", 16), ("slots", 1)], ids=["slots", "compact", "batch1"])
def test_cancelled_futures_are_skipped_and_every_other_one_is_answered_correctly(digits_bundle, digits, expected,
                                                                                  mode, batch):
    runtime = open_runtime(digits_bundle, mode, batch)
    submitted = submit_from_threads(runtime, digits, 2000, threads=4, cancel_share=0.2)
    futures = [f for _, f, _ in submitted]
    _, pending = wait(futures, timeout=PROMPT)
    assert not pending
    cancelled = [f for _, f, was_cancelled in submitted if was_cancelled]
    assert len(cancelled) > 50 and all(f.cancelled() for f in cancelled)
    for index, future, was_cancelled in submitted:
        if not was_cancelled:
            assert triple(future.result()) == expected[index]
    later = runtime.submit(digits.x[0])  # the worker lives on
    assert later.result(timeout=PROMPT).timesteps == expected[0][2]
    runtime.close()


def test_a_stream_with_cancellations_and_faults_answers_every_request_once(digits_bundle, digits, expected):
    runtime = open_runtime(digits_bundle, "slots", 16, fault_every=25, runtime_type=CountingRuntime)
    submitted = submit_from_threads(runtime, digits, 3000, threads=4, cancel_share=0.05)
    runtime.close()
    assert all(f.done() for _, f, _ in submitted)
    answered = [(i, f) for i, f, was_cancelled in submitted if not was_cancelled]
    failed = [f for _, f in answered if f.exception() is not None]
    assert 0 < len(failed) <= 16 * (runtime.step.calls // 25)  # at most the batch in flight at each fault
    assert all(str(f.exception()) == "injected fault" for f in failed)
    assert all(triple(f.result()) == expected[i] for i, f in answered if f.exception() is None)
    assert set(runtime.deliveries.values()) == {1}
    assert len(runtime.deliveries) == len(answered)  # cancelled ones are never admitted, so never answered


@pytest.mark.parametrize("mode", ["slots", "compact", "naive"])
def test_an_exit_policy_that_raises_fails_the_batch_in_flight_only(digits_bundle, digits, expected, mode):
    class RaisesOnThirdDecision(Confidence):
        def exits(self, confidence, steps, budget):
            object.__setattr__(self, "decisions", getattr(self, "decisions", 0) + 1)
            if self.decisions == 3:
                raise ValueError("policy bug")
            return super().exits(confidence, steps, budget)

    runtime = open_runtime(digits_bundle, mode, 8, exit_policy=RaisesOnThirdDecision(ALPHA))
    futures = [runtime.submit(x) for x in digits.x[:200]]
    runtime.close()
    failed = [i for i, f in enumerate(futures) if f.exception(timeout=PROMPT) is not None]
    assert 0 < len(failed) <= 8
    assert all(triple(futures[i].result()) == expected[i] for i in range(200) if i not in failed)


def test_what_a_caller_does_to_its_future_cannot_stop_the_worker(digits_bundle, digits, expected):
    runtime = open_runtime(digits_bundle, "slots", 8)

    def bad_callback(future):
        raise RuntimeError("a caller's callback fails")

    futures = []
    for i, x in enumerate(digits.x[:300]):
        future = runtime.submit(x)
        if i % 3 == 0:
            future.add_done_callback(bad_callback)
        if i % 50 == 1 and future.set_running_or_notify_cancel():
            future.set_result("settled by hand")
        futures.append(future)
    runtime.close()
    for i, future in enumerate(futures):
        answer = future.result(timeout=PROMPT)
        assert answer == "settled by hand" if i % 50 == 1 else triple(answer) == expected[i]


def test_close_from_a_done_callback_answers_everything_then_stops(digits_bundle, digits, expected):
    runtime = open_runtime(digits_bundle, "slots", 8)
    errors = []

    def close_runtime(future):
        try:
            runtime.close()
        except Exception as exc:  # what close() raised in the worker's thread
            errors.append(exc)

    first = runtime.submit(digits.x[0])
    first.add_done_callback(close_runtime)
    futures = [runtime.submit(x) for x in digits.x[1:200]]
    first.result(timeout=PROMPT)
    deadline = time.monotonic() + PROMPT
    while not runtime.step.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not errors
    assert runtime.step.closed  # the worker freed the executors when it stopped
    assert [triple(f.result(timeout=0)) for f in futures] == expected[1:200]  # close() answers what came before it
    with pytest.raises(RuntimeClosed):
        runtime.submit(digits.x[0])
    runtime.close()  # again, from the test's thread: a no-op


class DeviceLostOnReopen(Executor):
    """A step graph with device states whose second open_states fails (out of device memory, device lost)."""

    def __init__(self, inner) -> None:
        super().__init__(inner.inputs, inner.outputs, "step")
        self.inner, self.opened = inner, 0

    def _run_impl(self, feeds):
        return self.inner._run_impl(feeds)

    def open_states(self, batch, states):
        self.opened += 1
        if self.opened > 1:
            raise RuntimeError("CUDA error: device lost")
        return self.inner.open_states(batch, states)


def test_a_worker_that_cannot_go_on_fails_every_pending_and_later_future_at_once(digits_bundle, digits):
    manifest = read_manifest(digits_bundle)
    step, encoder = open_bundle_graphs(digits_bundle, manifest)
    runtime = Runtime(manifest, DeviceLostOnReopen(step), encoder, Confidence(ALPHA), batch=8, device_states=True)
    futures = [runtime.submit(x) for x in digits.x[:50]]
    _, pending = wait(futures, timeout=PROMPT)
    assert not pending
    assert all(isinstance(f.exception(), WorkerFailed) and "device lost" in str(f.exception()) for f in futures)
    later = runtime.submit(digits.x[0])
    assert later.done() and isinstance(later.exception(), WorkerFailed)
    runtime.close()


def test_a_non_finite_sample_fails_alone(digits_bundle, digits, expected):
    x = digits.x[:40].copy()
    x[3, 0, 2, 2] = np.nan
    x[17] = np.inf
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=16) as runtime:
        with pytest.raises(UserError, match=r"2 samples hold NaN or Inf values \(rows 3, 17\)"):
            runtime.infer(x)
        mixed = runtime.infer(x, errors="return")
        futures = [runtime.submit(sample) for sample in x]
        streamed = [f.exception(timeout=PROMPT) or f.result() for f in futures]
    for answers in (mixed, streamed):
        assert isinstance(answers[3], UserError) and isinstance(answers[17], UserError)
        assert "NaN or Inf" in str(answers[17])
        assert [triple(a) for i, a in enumerate(answers) if i not in (3, 17)] == [e for i, e in enumerate(expected[:40])
                                                                              if i not in (3, 17)]


def test_inputs_outside_the_normalisation_range_warn_once_per_runtime(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=16) as runtime:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            runtime.infer(digits.x[:20])  # raw [0, 1]: no warning
        with pytest.warns(UserWarning, match=r"range over \[0, 255\].*divide them by 255"):
            runtime.infer(digits.x[:20] * 255)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            runtime.infer(digits.x[:20] * 255)  # once per Runtime, not per call
            runtime.submit(digits.x[0] * 255).result(timeout=PROMPT)
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), batch=16) as runtime:
        with pytest.warns(UserWarning, match="look normalised already"):
            runtime.infer(runtime.prepare(digits.x[:20]))


def test_infer_refuses_an_unknown_errors_option(digits_bundle, digits):
    with Runtime.from_bundle(digits_bundle) as runtime:
        with pytest.raises(UserError, match="errors='skip' is not one of raise, return"):
            runtime.infer(digits.x[:2], errors="skip")

