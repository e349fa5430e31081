"""Bulk admission and retirement: samples queue as blocks, enter rows by the block, leave by the step,
and each still gets its own answer, once, in queue order of admission."""

import numpy as np
import pytest

from seenn_deploy.data import parse_data_spec
from seenn_deploy.runtime import Confidence, Runtime
from seenn_deploy.runtime.requests import RequestQueue, Requests

ALPHA = 0.9


def test_the_queue_hands_out_samples_in_order_across_blocks():
    queue = RequestQueue()
    start = 0
    for size in (3, 5, 2):
        queue.add(Requests.of(np.arange(start, start + size, dtype=np.float32)[:, None], np.arange(start, start + size)))
        start += size
    taken = [queue.take(4), queue.take(4)]
    x, key, _ = queue.pop()
    taken.append(queue.take(9))
    keys = np.concatenate([taken[0].keys, taken[1].keys, [key], taken[2].keys]).tolist()
    assert keys == list(range(10)) and len(queue) == 0
    assert [b.x[:, 0].tolist() for b in taken[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]] and x.tolist() == [[8.0]]


@pytest.mark.parametrize("mode, batch", [("slots", 8), ("compact", 8), ("naive", 8), ("slots", 1)])
def test_samples_a_claim_drops_are_skipped_and_the_rest_answered_once(digits_bundle, mode, batch):
    """The streaming Runtime's claim (cancelled futures) in every scheduler: dropped samples never take a row."""
    x = parse_data_spec("digits").load("test").x[:120]
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), mode=mode, batch=batch) as runtime:
        expected = runtime.infer(x)
        claimed = []

        def claim(keys):
            claimed.extend(keys)
            return np.array([k % 3 != 0 for k in keys])

        scheduler = runtime.new_scheduler(claim=claim)
        for start in range(0, len(x), 25):  # blocks of another size than the batch
            scheduler.add(Requests.of(runtime.prepare(x[start : start + 25]), np.arange(start, min(start + 25, len(x)))))
        answered = {}
        while not scheduler.idle:
            settled = scheduler.tick()
            assert not set(settled.keys) & set(answered)  # never twice
            answered.update(zip(settled.keys, settled.answers))
        scheduler.close()
    assert claimed == list(range(len(x)))  # every sample offered once, in order
    assert sorted(answered) == [k for k in range(len(x)) if k % 3 != 0]
    assert all(answered[k][:3] == expected[k][:3] for k in answered)


@pytest.mark.parametrize("mode, batch", [("slots", 16), ("compact", 16), ("slots", 1)])
def test_a_step_answers_as_arrays_whose_results_are_infers(digits_bundle, mode, batch):
    """The scheduler answers in blocks of arrays (no object per sample); the Results built from them, in
    Python numbers as at batch 1, are infer's, and `keys` / `answers` list them aligned."""
    x = parse_data_spec("digits").load("test").x[:90]
    with Runtime.from_bundle(digits_bundle, exit=Confidence(ALPHA), mode=mode, batch=batch) as runtime:
        expected = runtime.infer(x)
        scheduler = runtime.new_scheduler()
        scheduler.add(Requests.of(runtime.prepare(x)))
        rows, timesteps, answered = [], [], {}
        while not scheduler.idle:
            settled = scheduler.tick()
            for block in settled.answered:
                rows += list(block.keys)
                timesteps += list(block.timesteps)
            answered.update(zip(settled.keys, settled.answers))
        scheduler.close()
    assert sorted(rows) == list(range(len(x))) and len(answered) == len(x)
    assert timesteps == [expected[k].timesteps for k in rows]
    assert [answered[k][:3] for k in range(len(x))] == [r[:3] for r in expected]
    assert all(type(r.prediction) is int and type(r.confidence) is float and type(r.timesteps) is int
               for r in answered.values())
