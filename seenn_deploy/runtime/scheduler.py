"""Schedulers: which samples share each step's batch.

* `SlotScheduler` (slot mode): B fixed slots; an exited slot takes the next queued sample at
  the next step with `reset` set, so shapes never change (a captured CUDA graph stays valid).
* `CompactScheduler` (compact mode): exited rows leave and the batch shrinks; new samples join
  up to B rows. Saves the empty rows' compute while the queue drains, but every join copies the
  batch's states (on the Fashion-MNIST CNN, ORT CPU, batch 64: efficiency 0.80 against slots' 0.91).
* `NaiveScheduler` (naive mode): a wave of B samples runs until its slowest sample exits; the
  baseline the other two are measured against.
* `SerialScheduler`: batch 1 with the states on the host, where the three modes coincide; one
  sample runs to its exit in one tight loop, so the cost per step is the graph's and little more.

All four give every sample exactly the same result it gets alone: rows never interact.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.exit import ExitPolicy
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X, Manifest

MODES = ("slots", "compact", "naive")


@dataclass
class Request:
    """One sample: normalised input (the bundle's input shape), and where its answer goes."""

    x: np.ndarray
    submitted: float = field(default_factory=time.perf_counter)
    future: Future | None = None
    admitted: float = 0.0  # when it took a batch row


@dataclass(frozen=True, slots=True)
class Result:
    """prediction, its confidence, timesteps used; seconds from submission (latency) and from admission (service) to answer."""

    prediction: int
    confidence: float
    timesteps: int
    latency: float
    service: float = 0.0


Outcome = tuple[Request, "Result | BaseException"]


class Scheduler:
    """Shared machinery: admission (encoder + exit budgets), one step, exit decisions."""

    def __init__(self, manifest: Manifest, step: Executor, exit_policy: ExitPolicy, batch: int,
                 encoder: Executor | None = None) -> None:
        if batch < 1 or batch > manifest.max_batch:
            raise UserError(f"--batch {batch} is outside 1..{manifest.max_batch} (the bundle's max batch)")
        self.manifest = manifest
        self.step_executor = step
        self.encoder = encoder
        self.exit = exit_policy
        self.batch = batch
        self.event = manifest.input.kind == "event"
        self.pending: deque[Request] = deque()
        self.steps_run = 0  # step calls, for statistics
        self.admissions = 0
        self._placeholders: dict[int, dict[str, np.ndarray]] = {}

    # -- queue -----------------------------------------------------------------------------
    def add(self, requests: list[Request]) -> None:
        self.pending.extend(requests)

    @property
    def idle(self) -> bool:
        return not self.pending and self.active == 0

    @property
    def active(self) -> int:
        raise NotImplementedError

    def tick(self) -> list[Outcome]:
        """Admit what fits, run one step, return the samples that finished (or failed) in it."""
        raise NotImplementedError

    def held(self) -> list[Request]:
        """The requests that hold a batch row now (admitted, unanswered)."""
        return [r for r in getattr(self, "rows", []) if r is not None]

    def close(self) -> None:
        """Give back what the scheduler holds on the executor's device."""

    # -- helpers ---------------------------------------------------------------------------
    def _take(self, n: int) -> list[Request]:
        return [self.pending.popleft() for _ in range(min(n, len(self.pending)))]

    def _admit(self, requests: list[Request]) -> tuple[np.ndarray, np.ndarray] | list[Outcome]:
        """(step inputs [n, ...], or all T_max frames [n, T, ...] for events; budgets [n]), or failures if admission raises."""
        xs = requests[0].x[None] if len(requests) == 1 else np.stack([r.x for r in requests])
        now = time.perf_counter()
        for r in requests:
            r.admitted = now
        self.admissions += 1
        try:
            budgets = self.exit.budgets(xs, self.manifest.timesteps)
            inputs = self.encoder.run({X: xs}, check=self.admissions == 1)["encoded"] if self.encoder is not None else xs
        except Exception as exc:  # a failing policy or encoder fails these requests only
            return [(r, exc) for r in requests]
        return inputs, budgets

    def _fresh_states(self, n: int) -> dict[str, np.ndarray]:
        """Placeholder rows (shared, never written); `reset` makes the graph replace them with the initial values."""
        if n not in self._placeholders:
            self._placeholders[n] = {s.name: np.zeros((n, *s.shape), dtype=s.dtype) for s in self.manifest.states}
        return self._placeholders[n]

    def _run(self, x: np.ndarray, reset: np.ndarray, states: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step; the feeds of the first step are checked, later ones have the same layout."""
        self.steps_run += 1
        return self.step_executor.run({X: x, RESET: reset, **states}, check=self.steps_run == 1)

    def _frame(self, inputs: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """The step graph's x: the static encoding, or each row's frame at its own timestep."""
        if not self.event:
            return inputs
        return inputs[np.arange(len(inputs)), np.minimum(steps, inputs.shape[1] - 1)]  # finished naive rows idle on the last

    def _next_states(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {s.name: out[s.output] for s in self.manifest.states}

    @staticmethod
    def _results(requests: list[Request], rows: np.ndarray, prediction: np.ndarray, confidence: np.ndarray,
                 steps: np.ndarray) -> list[Outcome]:
        """Outcomes of the finished `rows` (indices into requests and the [B] arrays), one clock read for all."""
        now = time.perf_counter()
        return [(r, Result(p, c, t, now - r.submitted, now - r.admitted))
                for r, p, c, t in zip([requests[i] for i in rows], prediction[rows].tolist(),
                                      confidence[rows].tolist(), steps[rows].tolist())]


class SlotScheduler(Scheduler):
    """B fixed slots; refilled with `reset` set as soon as they free up.

    With an executor that can keep states on its device (`open_states`: ORT I/O binding,
    TensorRT ping-pong buffers), states never leave it: each step sends the new x rows and
    `reset` [B] and reads back `confidence` and `prediction` [B]. `device_states=False` keeps
    them on the host, fed back through `run`; None (the default) uses the device path when the
    executor runs on a GPU (`on_device`), where it saves copies, and not on the CPU, where binding
    costs more than it saves.
    """

    def __init__(self, *args, device_states: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        b = self.batch
        use_device = uses_device_states(self.step_executor, device_states)
        self.device = self.step_executor.open_states(b, self.manifest.states) if use_device else None
        self.rows: list[Request | None] = [None] * b
        shape = ((self.manifest.timesteps,) if self.event else ()) + tuple(self.manifest.step_input_shape)
        dtype = np.dtype(self.manifest.input.dtype)
        # Host copies of the slots' inputs: all of them on the host path and for events (a frame per
        # step); on the device path a static input goes to the device once, from `written`.
        keep_inputs = self.device is None or self.event
        self.inputs = np.zeros((b, *shape), dtype=dtype) if keep_inputs else None
        self.states = self._fresh_states(b) if self.device is None else {}
        self.written: dict[int, np.ndarray] = {}  # slot -> new x row, static inputs on the device path
        self.steps = np.zeros(b, dtype=np.int64)
        self.budget = np.ones(b, dtype=np.int64)
        self.reset = np.ones(b, dtype=np.bool_)

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    def tick(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        free = [i for i, r in enumerate(self.rows) if r is None]
        while free and self.pending:
            batch = self._take(len(free))
            admitted = self._admit(batch)
            if isinstance(admitted, list):
                outcomes += admitted
                continue
            inputs, budgets = admitted
            slots, free = free[: len(batch)], free[len(batch):]
            for slot, request in zip(slots, batch):
                self.rows[slot] = request
            if self.inputs is not None:
                self.inputs[slots] = inputs
            else:
                self.written.update(zip(slots, inputs))
            self.budget[slots] = budgets
            self.steps[slots] = 0
            self.reset[slots] = True
        occupied = np.fromiter((r is not None for r in self.rows), dtype=np.bool_, count=self.batch)
        if not occupied.any():
            return outcomes
        self.reset |= ~occupied  # empty slots restart every step, so their garbage stays bounded
        try:
            confidence, prediction = self._step()
        except Exception as exc:
            outcomes += [(r, exc) for r in self.rows if r is not None]
            self.rows = [None] * self.batch
            self.reset[:] = True
            self.written = {}
            return outcomes
        self.reset[:] = False
        self.steps += occupied
        done = np.flatnonzero(occupied & self.exit.exits(confidence, self.steps, self.budget))
        outcomes += self._results(self.rows, done, prediction, confidence, self.steps)
        for slot in done.tolist():
            self.rows[slot] = None
        return outcomes

    def _step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step of all B slots -> (confidence [B], prediction [B])."""
        if self.device is not None:
            rows = self._frame(self.inputs, self.steps) if self.event else (self.written or None)
            self.written = {}
            self.steps_run += 1
            return self.device.step(rows, self.reset)
        out = self._run(self._frame(self.inputs, self.steps), self.reset, self.states)
        self.states = self._next_states(out)
        return out[CONFIDENCE], out[PREDICTION]

    def close(self) -> None:
        if self.device is not None:
            self.device.close()


class CompactScheduler(Scheduler):
    """Rows leave when they exit; new samples join at the end, up to B rows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clear()

    def _clear(self) -> None:
        self.rows: list[Request] = []
        self.inputs: np.ndarray | None = None
        self.states: dict[str, np.ndarray] = {}
        self.steps = np.zeros(0, dtype=np.int64)
        self.budget = np.zeros(0, dtype=np.int64)
        self.reset = np.zeros(0, dtype=np.bool_)

    @property
    def active(self) -> int:
        return len(self.rows)

    def _join(self, batch: list[Request], inputs: np.ndarray, budgets: np.ndarray) -> None:
        n = len(batch)
        fresh = self._fresh_states(n)
        if self.rows:
            self.inputs = np.concatenate([self.inputs, inputs])
            self.states = {k: np.concatenate([v, fresh[k]]) for k, v in self.states.items()}
        else:
            self.inputs, self.states = inputs, fresh
        self.rows += batch
        self.steps = np.concatenate([self.steps, np.zeros(n, dtype=np.int64)])
        self.budget = np.concatenate([self.budget, budgets])
        self.reset = np.concatenate([self.reset, np.ones(n, dtype=np.bool_)])

    def _admit_up_to(self, room: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while room > 0 and self.pending:
            batch = self._take(room)
            admitted = self._admit(batch)
            if isinstance(admitted, list):
                outcomes += admitted
                continue
            self._join(batch, *admitted)
            room -= len(batch)
        return outcomes

    def tick(self) -> list[Outcome]:
        outcomes = self._admit_up_to(self.batch - len(self.rows))
        if not self.rows:
            return outcomes
        try:
            out = self._run(self._frame(self.inputs, self.steps), self.reset, self.states)
        except Exception as exc:
            outcomes += [(r, exc) for r in self.rows]
            self._clear()
            return outcomes
        self.steps += 1
        self.reset[:] = False
        done = self.exit.exits(out[CONFIDENCE], self.steps, self.budget)
        outcomes += self._results(self.rows, np.flatnonzero(done), out[PREDICTION], out[CONFIDENCE], self.steps)
        if done.all():
            self._clear()
        elif done.any():
            keep = ~done
            self.rows = [r for r, k in zip(self.rows, keep) if k]
            self.inputs = self.inputs[keep]
            self.states = {k: v[keep] for k, v in self._next_states(out).items()}
            self.steps, self.budget, self.reset = self.steps[keep], self.budget[keep], self.reset[keep]
        else:
            self.states = self._next_states(out)
        return outcomes


class NaiveScheduler(CompactScheduler):
    """Waves of B samples; a wave runs until its slowest sample exits (finished rows keep computing)."""

    def tick(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        if not self.rows:
            outcomes += self._admit_up_to(self.batch)
            self.finished = np.zeros(len(self.rows), dtype=np.bool_)
        if not self.rows:
            return outcomes
        try:
            out = self._run(self._frame(self.inputs, self.steps), self.reset, self.states)
        except Exception as exc:
            outcomes += [(r, exc) for r, finished in zip(self.rows, self.finished) if not finished]
            self._clear()
            return outcomes
        self.steps += 1
        self.reset[:] = False
        self.states = self._next_states(out)
        done = ~self.finished & self.exit.exits(out[CONFIDENCE], self.steps, self.budget)
        outcomes += self._results(self.rows, np.flatnonzero(done), out[PREDICTION], out[CONFIDENCE], self.steps)
        self.finished |= done
        if self.finished.all():  # budgets are <= T_max, so every wave ends
            self._clear()
        return outcomes


class SerialScheduler(Scheduler):
    """Batch 1, states on the host: each tick runs the next sample to its exit.

    With one row, slot, compact and naive mode schedule the same steps; what is left to save is
    the bookkeeping per step, which at batch 1 costs as much as a small graph's step. Results are
    those of the other schedulers at batch 1, bit for bit (same graph, same feeds).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.batch != 1:
            raise InternalError(f"SerialScheduler runs batch 1, not {self.batch}")
        self.first = np.ones(1, dtype=np.bool_)
        self.later = np.zeros(1, dtype=np.bool_)
        self.carry = [(s.name, s.output) for s in self.manifest.states]  # state input <- its output
        self.current: Request | None = None  # the sample inside tick(), for held() if tick() is interrupted

    @property
    def active(self) -> int:
        return 0  # a sample never stays between ticks

    def held(self) -> list[Request]:
        return [self.current] if self.current is not None else []

    def tick(self) -> list[Outcome]:
        if not self.pending:
            return []
        request = self.current = self.pending.popleft()
        admitted = self._admit([request])
        if isinstance(admitted, list):
            self.current = None
            return admitted
        try:
            outcome = self._run_to_exit(request, *admitted)
        except Exception as exc:  # the step, or the exit policy on this sample's outputs
            outcome = exc
        self.current = None
        return [(request, outcome)]

    def _run_to_exit(self, request: Request, inputs: np.ndarray, budgets: np.ndarray) -> Result:
        # One feed dict per sample, updated in place: at batch 1 the dict building costs what a step's tail does.
        feeds = {X: inputs[:, 0] if self.event else inputs, RESET: self.first, **self._fresh_states(1)}
        run, exits, budget, steps = self.step_executor.run, self.exit.exits, int(budgets[0]), 0
        while True:
            self.steps_run += 1
            out = run(feeds, check=self.steps_run == 1)
            steps += 1
            confidence = float(out[CONFIDENCE][0])
            if exits(confidence, steps, budget):  # Python scalars: the policies' array code, without array overhead
                now = time.perf_counter()
                return Result(int(out[PREDICTION][0]), confidence, steps, now - request.submitted,
                              now - request.admitted)
            for name, output in self.carry:
                feeds[name] = out[output]
            feeds[RESET] = self.later
            if self.event:
                feeds[X] = inputs[:, steps]


SCHEDULERS: dict[str, type[Scheduler]] = {"slots": SlotScheduler, "compact": CompactScheduler, "naive": NaiveScheduler}


def make_scheduler(mode: str, manifest: Manifest, step: Executor, exit_policy: ExitPolicy, batch: int,
                   encoder: Executor | None = None, device_states: bool | None = None) -> Scheduler:
    """The scheduler for `mode`; `device_states` applies to slot mode (the others reshape states on the host).

    Batch 1 with host states runs serially (the modes coincide there); slot mode with device
    states keeps its slot, the fixed shape a captured CUDA graph needs.
    """
    if mode not in SCHEDULERS:
        raise UserError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "slots" and uses_device_states(step, device_states):
        return SlotScheduler(manifest, step, exit_policy, batch, encoder, device_states=True)
    if batch == 1:
        return SerialScheduler(manifest, step, exit_policy, batch, encoder)
    kwargs = {"device_states": False} if mode == "slots" else {}
    return SCHEDULERS[mode](manifest, step, exit_policy, batch, encoder, **kwargs)


def uses_device_states(step: Executor, device_states: bool | None) -> bool:
    """Whether slot mode keeps the states on the executor's device: asked for (True), or by default on a GPU."""
    if not hasattr(step, "open_states"):
        return False
    return bool(getattr(step, "on_device", False)) if device_states is None else device_states
