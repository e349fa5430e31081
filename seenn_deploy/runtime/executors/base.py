"""Template-method executor: `run` checks feeds and times the call; backends implement `_run_impl`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from seenn_deploy.errors import UserError


@dataclass(frozen=True)
class TensorInfo:
    """A graph input: name, shape with None for the dynamic batch dimension, numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


class Executor:
    """Runs one graph: feeds by name -> outputs by name. A context manager; `close` frees the backend.

    `output_infos`: the outputs' shapes and dtypes where the backend reads them from the graph (None
    where the outputs are only named), so a bundle can be checked against its manifest when it opens.
    `placement` says where the graph actually runs (reports print it); `cuda_device` is the CUDA
    ordinal of the GPU it runs on, None on the CPU (a power sampler binds to that GPU).
    """

    placement: str = "cpu"
    cuda_device: int | None = None

    def __init__(self, inputs: list[TensorInfo], outputs: list[str], label: str,
                 output_infos: list[TensorInfo] | None = None) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.output_infos = output_infos
        self.label = label
        self.calls = 0
        self.seconds = 0.0

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """UserError naming the expected input when a name, rank, size or dtype is off."""
        expected = {i.name for i in self.inputs}
        if set(feeds) != expected:
            missing, extra = sorted(expected - set(feeds)), sorted(set(feeds) - expected)
            raise UserError(f"{self.label}: inputs missing {missing}, unexpected {extra}; it takes "
                            f"{', '.join(i.describe() for i in self.inputs)}")
        batch = None
        for info in self.inputs:
            value = feeds[info.name]
            shape_ok = value.ndim == len(info.shape) and all(d is None or d == v for d, v in zip(info.shape, value.shape))
            if not shape_ok or value.dtype != info.dtype:
                raise UserError(f"{self.label}: input {info.name} is {list(value.shape)} {value.dtype.name}, "
                                f"expected {info.describe()}")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise UserError(f"{self.label}: input {info.name} has batch {value.shape[0]}, others {batch}")

    def run(self, feeds: dict[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        """Outputs by name. `check=False` skips the input checks: for a caller's hot loop whose feeds
        have the shapes and dtypes of a call that was checked."""
        if check:
            self.check_feeds(feeds)
        return self._timed(self._run_impl, feeds)

    def _timed(self, call, *args):
        """Count and time one call of the backend, also when it raises."""
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Free backend resources; the base holds none."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DeviceStates:
    """A step graph's states kept where the graph runs (GPU memory under CUDA), for one slot scheduler.

    `step(x, reset, slots)` runs one step of the B bound slots and returns (confidence [B],
    prediction [B]) on the host, arrays the caller owns; the states never come back. x: the new
    input rows [k, ...] of `slots` [k] (static inputs change only where a sample entered), a full
    batch [B, ...] when `slots` is None (event frames), or None (x unchanged). Rows come as
    arrays, written with one indexed copy, never one call per slot.
    """

    batch: int
    bytes_to_device: int = 0  # host -> device over all steps (x rows, reset)
    bytes_to_host: int = 0  # device -> host over all steps (confidence, prediction)

    def step(self, x: np.ndarray | None, reset: np.ndarray,
             slots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Give the buffers back."""


def slot_rows(x, slots: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(x, slots) of a `DeviceStates.step` call as arrays: also takes the {slot: row} dict earlier callers passed."""
    if isinstance(x, dict):
        if not x:
            return None, None
        return np.stack(list(x.values())), np.fromiter(x, dtype=np.int64, count=len(x))
    return x, slots
