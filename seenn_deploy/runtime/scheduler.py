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

Work is done in bulk, per step rather than per sample: samples queue as `Requests` blocks
(arrays, one row per sample), enter their rows with one array write per field, and leave as one
`Answered` block of arrays per step. No Python object is built per sample inside a tick: a
sample costs the scheduler a few tenths of a microsecond (benchmarks/runtime_early_exit.py), and
its `Result` is built by whoever delivers it (infer, a future).
"""

from __future__ import annotations

import time

import numpy as np

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.exit import ExitPolicy
from seenn_deploy.runtime.manifest import CONFIDENCE, PREDICTION, RESET, X, Manifest
from seenn_deploy.runtime.requests import Answered, Claim, RequestQueue, Requests, Result, Settled

MODES = ("slots", "compact", "naive")

class Scheduler:
    """Shared machinery: the queue, admission (claim, encoder, exit budgets), one step, results.

    `tick()` admits what fits, runs one step and returns what it settled. A failure of the
    step, the encoder or the exit policy fails the samples it concerns and no others.
    """

    def __init__(self, manifest: Manifest, step: Executor, exit_policy: ExitPolicy, batch: int,
                 encoder: Executor | None = None, claim: Claim | None = None) -> None:
        if batch < 1 or batch > manifest.max_batch:
            raise UserError(f"--batch {batch} is outside 1..{manifest.max_batch} (the bundle's max batch)")
        self.manifest = manifest
        self.step_executor = step
        self.encoder = encoder
        self.exit = exit_policy
        self.batch = batch
        self.claim = claim
        self.event = manifest.input.kind == "event"
        self.pending = RequestQueue()
        self.admitting: np.ndarray | list | None = None  # keys taken from the queue that hold no row yet
        self.steps_run = 0  # step calls, for statistics
        self.admissions = 0
        self._placeholders: dict[int, dict[str, np.ndarray]] = {}

    # -- queue -----------------------------------------------------------------------------
    def add(self, requests: Requests) -> None:
        self.pending.add(requests)

    @property
    def idle(self) -> bool:
        return not self.pending and self.active == 0

    @property
    def active(self) -> int:
        """Samples holding a batch row."""
        raise NotImplementedError

    def tick(self) -> Settled:
        """Admit what fits, run one step, return the samples that finished (or failed) in it."""
        raise NotImplementedError

    def held(self) -> list:
        """Keys of the samples admitted and not answered: what a failure inside tick() concerns."""
        return self._held_keys() + ([] if self.admitting is None else list(self.admitting))

    def _held_keys(self) -> list:
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the scheduler holds on the executor's device."""

    # -- helpers ---------------------------------------------------------------------------
    def _take(self, n: int) -> Requests:
        """Up to n queued samples that are still wanted (`claim`), in order; may be empty."""
        block = self.pending.take(n)
        self.admitting = block.keys
        if self.claim is not None:
            wanted = self.claim(block.keys.tolist())
            if not wanted.all():
                block = block.select(wanted)
                self.admitting = block.keys
        return block

    def _admit(self, x: np.ndarray, settled: Settled) -> tuple[np.ndarray, np.ndarray, float] | None:
        """For the `admitting` samples x [n, ...]: (step inputs [n, ...], or all T_max frames [n, T, ...]
        for events; budgets [n]; admission time), or None when the encoder or the exit policy failed
        them (then in `settled`)."""
        now = time.perf_counter()
        self.admissions += 1
        try:
            budgets = self.exit.budgets(x, self.manifest.timesteps)
            inputs = self.encoder.run({X: x}, check=self.admissions == 1)["encoded"] if self.encoder is not None else x
        except Exception as exc:  # a failing policy or encoder fails these requests only
            settled.fail(list(self.admitting), exc)
            self.admitting = None
            return None
        return inputs, budgets, now

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


class SlotScheduler(Scheduler):
    """B fixed slots; refilled with `reset` set as soon as they free up.

    With an executor that can keep states on its device (`open_states`: ORT I/O binding,
    TensorRT ping-pong buffers, torch tensors), states never leave it: each step sends the new x
    rows (one array of rows and one of slots) and `reset` [B] and reads back `confidence` and
    `prediction` [B]. `device_states=False` keeps them on the host, fed back through `run`; None
    (the default) uses the device path on a GPU (`on_device`), where it saves copies, and with ONNX
    Runtime on the CPU, whose buffers are bound once and written in place (no allocation, no
    output dict, no copy per step: on the digits model about 45 us of a 600 us step).
    """

    def __init__(self, *args, device_states: bool | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        b = self.batch
        use_device = uses_device_states(self.step_executor, device_states, b)
        self.device = self.step_executor.open_states(b, self.manifest.states) if use_device else None
        shape = ((self.manifest.timesteps,) if self.event else ()) + tuple(self.manifest.step_input_shape)
        dtype = np.dtype(self.manifest.input.dtype)
        # Host copies of the slots' inputs: all of them on the host path and for events (a frame per
        # step); on the device path a static input goes to the device once, from `written`.
        keep_inputs = self.device is None or self.event
        self.inputs = np.zeros((b, *shape), dtype=dtype) if keep_inputs else None
        self.states = self._fresh_states(b) if self.device is None else {}
        self.written: list[tuple[np.ndarray, np.ndarray]] = []  # (slots [k], x rows [k, ...]): static inputs, device path
        self.keys = np.empty(b, dtype=object)  # each slot's owner key, None when free
        self.occupied = np.zeros(b, dtype=np.bool_)
        self.count = 0
        self.submitted = np.zeros(b)
        self.admitted = np.zeros(b)
        self.steps = np.zeros(b, dtype=np.int64)
        self.budget = np.ones(b, dtype=np.int64)
        self.reset = np.ones(b, dtype=np.bool_)

    @property
    def active(self) -> int:
        return self.count

    def _held_keys(self) -> list:
        return self.keys[self.occupied].tolist()

    def tick(self) -> Settled:
        settled = Settled()
        if self.count < self.batch and self.pending:
            self._fill(settled)
        if not self.count:
            return settled
        occupied = self.occupied
        self.reset |= ~occupied  # empty slots restart every step, so their garbage stays bounded
        try:
            confidence, prediction = self._step()
            self.reset[:] = False
            self.steps += occupied
            done = np.flatnonzero(occupied & self.exit.exits(confidence, self.steps, self.budget))
        except Exception as exc:  # the step or the exit policy: the samples in the batch fail
            rows = np.flatnonzero(occupied)
            settled.fail(self.keys[rows].tolist(), exc)
            self._free(rows)
            self.reset[:] = True
            self.written = []
            return settled
        if done.size:
            now = time.perf_counter()
            settled.answer(Answered(self.keys[done], prediction[done], confidence[done], self.steps[done],
                                    now - self.submitted[done], now - self.admitted[done]))
            self._free(done)
        return settled

    def _fill(self, settled: Settled) -> None:
        """Admit queued samples into the free slots: one array write per field for each block taken."""
        free = np.flatnonzero(~self.occupied)
        while free.size and self.pending:
            block = self._take(free.size)
            if not len(block):
                continue
            admitted = self._admit(block.x, settled)
            if admitted is None:
                continue
            inputs, budgets, now = admitted
            slots, free = free[: len(block)], free[len(block):]
            if self.inputs is not None:
                self.inputs[slots] = inputs
            else:
                self.written.append((slots, inputs))
            self.keys[slots] = block.keys
            self.submitted[slots] = block.submitted
            self.admitted[slots] = now
            self.budget[slots] = budgets
            self.steps[slots] = 0
            self.reset[slots] = True
            self.occupied[slots] = True
            self.count += len(slots)
            self.admitting = None

    def _free(self, rows: np.ndarray) -> None:
        self.keys[rows] = None
        self.occupied[rows] = False
        self.count -= len(rows)

    def _step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step of all B slots -> (confidence [B], prediction [B])."""
        if self.device is not None:
            self.steps_run += 1
            if self.event:
                return self.device.step(self._frame(self.inputs, self.steps), self.reset)
            written, self.written = self.written, []
            if not written:
                return self.device.step(None, self.reset)
            slots, rows = written[0] if len(written) == 1 else map(np.concatenate, zip(*written))
            return self.device.step(rows, self.reset, slots)
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
        self.keys = np.empty(0, dtype=object)
        self.inputs: np.ndarray | None = None
        self.states: dict[str, np.ndarray] = {}
        self.submitted = np.zeros(0)
        self.admitted = np.zeros(0)
        self.steps = np.zeros(0, dtype=np.int64)
        self.budget = np.zeros(0, dtype=np.int64)
        self.reset = np.zeros(0, dtype=np.bool_)

    @property
    def active(self) -> int:
        return len(self.keys)

    def _held_keys(self) -> list:
        return self.keys.tolist()

    def _join(self, block: Requests, inputs: np.ndarray, budgets: np.ndarray, now: float) -> None:
        n = len(block)
        fresh = self._fresh_states(n)
        if len(self.keys):
            self.inputs = np.concatenate([self.inputs, inputs])
            self.states = {k: np.concatenate([v, fresh[k]]) for k, v in self.states.items()}
        else:
            self.inputs, self.states = inputs, fresh
        self.keys = np.concatenate([self.keys, block.keys.astype(object, copy=False)])
        self.submitted = np.concatenate([self.submitted, block.submitted])
        self.admitted = np.concatenate([self.admitted, np.full(n, now)])
        self.steps = np.concatenate([self.steps, np.zeros(n, dtype=np.int64)])
        self.budget = np.concatenate([self.budget, budgets])
        self.reset = np.concatenate([self.reset, np.ones(n, dtype=np.bool_)])
        self.admitting = None

    def _admit_up_to(self, room: int, settled: Settled) -> None:
        while room > 0 and self.pending:
            block = self._take(room)
            if not len(block):
                continue
            admitted = self._admit(block.x, settled)
            if admitted is not None:
                self._join(block, *admitted)
                room -= len(block)

    def _step_and_decide(self, settled: Settled, live: np.ndarray | None = None) -> tuple[dict, np.ndarray] | None:
        """Run one step of every row; (outputs, exits [n]), or None when it failed the `live` rows (default all)."""
        try:
            out = self._run(self._frame(self.inputs, self.steps), self.reset, self.states)
            self.steps += 1
            self.reset[:] = False
            return out, self.exit.exits(out[CONFIDENCE], self.steps, self.budget)
        except Exception as exc:
            settled.fail((self.keys if live is None else self.keys[live]).tolist(), exc)
            self._clear()
            return None

    def _answer(self, settled: Settled, done: np.ndarray, out: dict[str, np.ndarray]) -> None:
        rows = np.flatnonzero(done)
        if rows.size:
            now = time.perf_counter()
            settled.answer(Answered(self.keys[rows], out[PREDICTION][rows], out[CONFIDENCE][rows], self.steps[rows],
                                    now - self.submitted[rows], now - self.admitted[rows]))

    def tick(self) -> Settled:
        settled = Settled()
        self._admit_up_to(self.batch - len(self.keys), settled)
        if not len(self.keys):
            return settled
        stepped = self._step_and_decide(settled)
        if stepped is None:
            return settled
        out, done = stepped
        self._answer(settled, done, out)
        if done.all():
            self._clear()
        elif done.any():
            keep = ~done
            self.keys, self.inputs = self.keys[keep], self.inputs[keep]
            self.states = {k: v[keep] for k, v in self._next_states(out).items()}
            self.submitted, self.admitted = self.submitted[keep], self.admitted[keep]
            self.steps, self.budget, self.reset = self.steps[keep], self.budget[keep], self.reset[keep]
        else:
            self.states = self._next_states(out)
        return settled


class NaiveScheduler(CompactScheduler):
    """Waves of B samples; a wave runs until its slowest sample exits (finished rows keep computing)."""

    def _clear(self) -> None:
        super()._clear()
        self.finished = np.zeros(0, dtype=np.bool_)

    def _join(self, *args) -> None:
        super()._join(*args)
        self.finished = np.zeros(len(self.keys), dtype=np.bool_)

    def _held_keys(self) -> list:
        return self.keys[~self.finished].tolist()

    def tick(self) -> Settled:
        settled = Settled()
        if not len(self.keys):
            self._admit_up_to(self.batch, settled)
        if not len(self.keys):
            return settled
        stepped = self._step_and_decide(settled, live=~self.finished)
        if stepped is None:
            return settled
        out, exits = stepped
        self.states = self._next_states(out)
        done = ~self.finished & exits
        self._answer(settled, done, out)
        self.finished |= done
        if self.finished.all():  # budgets are <= T_max, so every wave ends
            self._clear()
        return settled


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

    @property
    def active(self) -> int:
        return 0  # a sample never stays between ticks

    def _held_keys(self) -> list:
        return []  # the sample inside tick() is `admitting` until answered

    def tick(self) -> Settled:
        settled = Settled()
        while self.pending:  # one sample at a time, without building blocks: at batch 1 that costs what a step does
            x, key, submitted = self.pending.pop()
            if self.claim is None or self.claim([key])[0]:
                break
        else:
            return settled
        self.admitting = [key]
        admitted = self._admit(x, settled)
        if admitted is None:
            return settled
        inputs, budgets, now = admitted
        try:
            result = self._run_to_exit(inputs, int(budgets[0]), submitted, now)
        except Exception as exc:  # the step, or the exit policy on this sample's outputs
            settled.fail([key], exc)
        else:
            settled.answer(Answered.one(key, result))
        self.admitting = None
        return settled

    def _run_to_exit(self, inputs: np.ndarray, budget: int, submitted: float, admitted: float) -> Result:
        # One feed dict per sample, updated in place: at batch 1 the dict building costs what a step's tail does.
        feeds = {X: inputs[:, 0] if self.event else inputs, RESET: self.first, **self._fresh_states(1)}
        run, exits, steps = self.step_executor.run, self.exit.exits, 0
        while True:
            self.steps_run += 1
            out = run(feeds, check=self.steps_run == 1)
            steps += 1
            confidence = float(out[CONFIDENCE][0])
            if exits(confidence, steps, budget):  # Python scalars: the policies' array code, without array overhead
                now = time.perf_counter()
                return Result(int(out[PREDICTION][0]), confidence, steps, now - submitted, now - admitted)
            for name, output in self.carry:
                feeds[name] = out[output]
            feeds[RESET] = self.later
            if self.event:
                feeds[X] = inputs[:, steps]


SCHEDULERS: dict[str, type[Scheduler]] = {"slots": SlotScheduler, "compact": CompactScheduler, "naive": NaiveScheduler}


def make_scheduler(mode: str, manifest: Manifest, step: Executor, exit_policy: ExitPolicy, batch: int,
                   encoder: Executor | None = None, device_states: bool | None = None,
                   claim: Claim | None = None) -> Scheduler:
    """The scheduler for `mode`; `device_states` applies to slot mode (the others reshape states on the host).

    Batch 1 with host states runs serially (the modes coincide there); slot mode with device
    states keeps its slot, the fixed shape a captured CUDA graph needs.
    """
    if mode not in SCHEDULERS:
        raise UserError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "slots" and uses_device_states(step, device_states, batch):
        return SlotScheduler(manifest, step, exit_policy, batch, encoder, claim, device_states=True)
    if batch == 1:
        return SerialScheduler(manifest, step, exit_policy, batch, encoder, claim)
    kwargs = {"device_states": False} if mode == "slots" else {}
    return SCHEDULERS[mode](manifest, step, exit_policy, batch, encoder, claim, **kwargs)


def uses_device_states(step: Executor, device_states: bool | None, batch: int | None = None) -> bool:
    """Whether slot mode keeps the states with the executor: asked for (True), or by default on a GPU, and
    above batch 1 with an executor that binds host states in place (`binds_states_in_place`: ONNX Runtime
    on the CPU, where that saves an allocation and a copy of every state each step; at batch 1 the serial
    scheduler is cheaper still)."""
    if not hasattr(step, "open_states"):
        return False
    if device_states is not None:
        return device_states
    return bool(getattr(step, "on_device", False)) or (batch != 1 and bool(getattr(step, "binds_states_in_place", False)))
