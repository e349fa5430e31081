"""What the schedulers move in bulk: queued samples (`Requests`, `RequestQueue`), answers (`Result`, `Settled`).

A sample is a row of arrays, not an object: it joins a batch with one array write per field and
leaves with one pass that builds its `Result`, so a sample costs the runtime about a microsecond.
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


class Settled:
    """What a tick answered: keys[i] gets answers[i], a Result or the exception that failed it."""

    __slots__ = ("keys", "answers", "failed")

    def __init__(self) -> None:
        self.keys: list = []
        self.answers: list = []
        self.failed = 0

    def answer(self, keys: list, results: list[Result]) -> None:
        self.keys += keys
        self.answers += results

    def fail(self, keys: list, error: BaseException) -> None:
        self.keys += keys
        self.answers += [error] * len(keys)
        self.failed += len(keys)


def results_of(prediction: np.ndarray, confidence: np.ndarray, steps: np.ndarray, latency: np.ndarray,
               service: np.ndarray) -> list[Result]:
    """Results for k finished samples from their [k] arrays, in one pass (Python numbers, as the batch-1 path gives)."""
    return list(map(Result, prediction.tolist(), confidence.tolist(), steps.tolist(), latency.tolist(),
                    service.tolist()))
