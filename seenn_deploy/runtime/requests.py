"""What the schedulers move in bulk: queued samples (`Requests`, `RequestQueue`), answers (`Answered`,
`Settled`, `Result`).

A sample is a row of arrays, not an object: it joins a batch with one array write per field and
leaves as a row of the step's `Answered` arrays; its `Result` object is built only for a caller
that asks for one (infer, a future), so the scheduler's own cost per sample is a fraction of a microsecond.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from seenn_deploy.errors import InternalError

# Takes the keys of n samples about to be admitted, returns bool [n]: which still want an answer
# (the streaming Runtime marks their futures running there and drops the cancelled ones).
Claim = Callable[[list], np.ndarray]


class Result(NamedTuple):
    """prediction, its confidence, timesteps used; seconds from submission (latency) and from admission (service) to answer.

    A NamedTuple, not a dataclass: one is built for every answered sample, and a frozen
    dataclass costs four times as much to build.
    """

    prediction: int
    confidence: float
    timesteps: int
    latency: float
    service: float = 0.0

    @property
    def queued(self) -> float:
        """Seconds from submission to admission: waiting for a batch row."""
        return self.latency - self.service


@dataclass
class Requests:
    """Samples queued together, row i of each array for sample i.

    x: normalised inputs [n, ...] (the bundle's input shape; events [n, T, ...]); keys [n]: the
    owner's handle for each sample (an index, a future), what its answer comes back with;
    submitted [n]: perf_counter seconds at submission.
    """

    x: np.ndarray
    keys: np.ndarray
    submitted: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, keys: np.ndarray | None = None, submitted: float | None = None) -> "Requests":
        """Samples x [n, ...] submitted together (now, unless given); keys default to 0..n-1."""
        n = len(x)
        keys = np.arange(n) if keys is None else np.asarray(keys)
        if len(keys) != n:
            raise InternalError(f"{len(keys)} keys for {n} samples")
        return cls(x, keys, np.full(n, time.perf_counter() if submitted is None else submitted))

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, rows: slice | np.ndarray) -> "Requests":
        return Requests(self.x[rows], self.keys[rows], self.submitted[rows])

    @staticmethod
    def concat(parts: list["Requests"]) -> "Requests":
        return Requests(np.concatenate([p.x for p in parts]), np.concatenate([p.keys for p in parts]),
                        np.concatenate([p.submitted for p in parts]))


class RequestQueue:
    """Requests blocks waiting for a row, first in first out; `take` slices them, copying only across blocks."""

    def __init__(self) -> None:
        self.blocks: deque[Requests] = deque()
        self.head = 0  # rows of blocks[0] already taken
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, block: Requests) -> None:
        if len(block):
            self.blocks.append(block)
            self.size += len(block)

    def take(self, n: int) -> Requests:
        """The next min(n, queued) samples; n >= 1 and the queue not empty."""
        parts = []
        while n > 0 and self.blocks:
            block = self.blocks[0]
            k = min(n, len(block) - self.head)
            parts.append(block if k == len(block) else block.select(slice(self.head, self.head + k)))
            self.head += k
            if self.head == len(block):
                self.blocks.popleft()
                self.head = 0
            n -= k
            self.size -= k
        return parts[0] if len(parts) == 1 else Requests.concat(parts)

    def pop(self) -> tuple[np.ndarray, object, float]:
        """The next sample alone, without building a block: (x [1, ...], key, submitted); the queue not empty."""
        block, i = self.blocks[0], self.head
        self.head += 1
        self.size -= 1
        if self.head == len(block):
            self.blocks.popleft()
            self.head = 0
        return block.x[i : i + 1], block.keys[i], float(block.submitted[i])

    def keys(self) -> list:
        """Every queued sample's key, in order."""
        return [k for i, b in enumerate(self.blocks) for k in b.keys[self.head if i == 0 else 0:].tolist()]


class Answered:
    """k samples answered together, as arrays: keys [k] and their results' fields.

    The scheduler hands these out per step without building a Python object per sample;
    `results()` builds the k `Result`s when a caller wants them (infer, a future), once.
    """

    __slots__ = ("_results", "confidence", "keys", "latency", "prediction", "service", "timesteps")

    def __init__(self, keys: np.ndarray, prediction: np.ndarray, confidence: np.ndarray, timesteps: np.ndarray,
                 latency: np.ndarray, service: np.ndarray, results: list[Result] | None = None) -> None:
        self.keys, self.prediction, self.confidence, self.timesteps = keys, prediction, confidence, timesteps
        self.latency, self.service, self._results = latency, service, results

    @classmethod
    def one(cls, key, result: Result) -> "Answered":
        """One sample whose Result is built already (the batch-1 path)."""
        return cls([key], [result.prediction], [result.confidence], [result.timesteps], [result.latency],
                   [result.service], [result])

    def __len__(self) -> int:
        return len(self.keys)

    def results(self) -> list[Result]:
        if self._results is None:
            self._results = results_of(self.prediction, self.confidence, self.timesteps, self.latency, self.service)
        return self._results


class Settled:
    """What a tick answered (`answered`, blocks of arrays) and failed (`failures`: keys and the exception).

    `keys` and `answers` list them one by one, aligned: keys[i] gets answers[i], a Result or the
    exception that failed it. A consumer that reads arrays (bench) takes `answered` as it is.
    """

    __slots__ = ("answered", "failed", "failures")

    def __init__(self) -> None:
        self.answered: list[Answered] = []
        self.failures: list[tuple[list, BaseException]] = []
        self.failed = 0

    def answer(self, block: Answered) -> None:
        self.answered.append(block)

    def fail(self, keys: list, error: BaseException) -> None:
        if len(keys):
            self.failures.append((keys, error))
            self.failed += len(keys)

    @property
    def keys(self) -> list:
        keys: list = []
        for block in self.answered:
            keys += block.keys.tolist() if isinstance(block.keys, np.ndarray) else block.keys
        for failed, _ in self.failures:
            keys += failed
        return keys

    @property
    def answers(self) -> list:
        answers: list = []
        for block in self.answered:
            answers += block.results()
        for failed, error in self.failures:
            answers += [error] * len(failed)
        return answers


def results_of(prediction: np.ndarray, confidence: np.ndarray, steps: np.ndarray, latency: np.ndarray,
               service: np.ndarray) -> list[Result]:
    """Results for k finished samples from their [k] arrays, in one pass (Python numbers, as the batch-1 path gives)."""
    return list(map(Result, prediction.tolist(), confidence.tolist(), steps.tolist(), latency.tolist(),
                    service.tolist()))
