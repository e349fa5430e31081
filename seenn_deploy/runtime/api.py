"""`Runtime`: a bundle, a backend, an exit policy and a scheduler behind `infer` and `submit`.

`infer(batch)` runs a private scheduler in the calling thread. `submit(x)` hands one sample to
a worker thread that owns a streaming scheduler; it is safe from several threads.

The promise of `submit`: every future gets exactly one result or one exception, also when
`close()` comes first. Futures behave as `concurrent.futures` ones: `cancel()` succeeds until
the sample takes a batch row (it is then skipped), and nothing a caller does to a future (cancel
it, settle it by hand, raise in or close the runtime from a done-callback) stops the worker. A
failure inside the worker fails the samples it concerns (the step fails the batch in flight);
if the worker itself cannot go on, every pending and every later future gets `WorkerFailed`
at once.

Inputs: a sample holding NaN or Inf is refused (its future gets a UserError; `infer` raises
naming the rows, or with errors="return" answers the others); a static input outside [0, 1],
the raw range the bundle's normalisation assumes, warns once per Runtime.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Sequence

import numpy as np

from seenn_deploy.errors import InternalError, UserError
from seenn_deploy.runtime.bundle import open_executors
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.exit import ExitPolicy, parse_exit
from seenn_deploy.runtime.loop import check_samples, normalise
from seenn_deploy.runtime.manifest import Manifest, read_manifest
from seenn_deploy.runtime.requests import Claim, Requests, Result, Settled
from seenn_deploy.runtime.scheduler import Scheduler, make_scheduler

ERRORS = ("raise", "return")
NONFINITE_SAMPLE = "the sample holds NaN or Inf values: repair or drop it; the model has no answer for it"
RANGE_SLACK = 0.1  # raw static inputs may stray this far outside [0, 1] (resampling overshoot) without a warning
_STOP = object()


class RuntimeClosed(UserError):
    """submit() after close()."""


class WorkerFailed(InternalError):
    """The streaming worker stopped on an error it could not contain; the Runtime answers nothing more."""


class Runtime:
    """Early-exit inference over a bundle. Use as a context manager, or call close()."""

    def __init__(self, manifest: Manifest, step: Executor, encoder: Executor | None, exit_policy: ExitPolicy,
                 mode: str = "slots", batch: int = 1, policy: Executor | None = None, device_states: bool | None = None) -> None:
        exit_policy.check(manifest.timesteps)  # now, not at the first sample
        self.manifest = manifest
        self.step = step
        self.encoder = encoder
        self.policy = policy
        self.exit = exit_policy
        self.mode = mode
        self.batch = batch
        self.device_states = device_states
        self.new_scheduler().close()  # validates mode and batch now, not at the first request
        self._lock = threading.Lock()
        self._inbox: deque = deque()  # (x, submitted, future) from submit(), _STOP from close()
        self._wake = threading.Event()
        self._closed = False
        self._failure: WorkerFailed | None = None
        self._worker: threading.Thread | None = None
        self._released = False
        self._range_checked = False

    @classmethod
    def from_bundle(cls, path: Path | str, backend: str = "ort", exit: str | ExitPolicy | None = None,
                    mode: str = "slots", batch: int = 1, providers: Sequence[str] | None = None,
                    threads: int | None = None, device_states: bool | None = None, **backend_options) -> "Runtime":
        """Open a bundle. backend 'ort' (providers, threads), 'torch' (device=, checkpoint=) or 'trt'.

        device_states: in slot mode, keep the states where the graph runs (ORT I/O binding, torch
        tensors, TensorRT buffers) instead of passing them through the host every step. None
        (the default) does so on a GPU and, above batch 1, with ONNX Runtime on the CPU, whose
        buffers are bound once and written in place.
        """
        manifest = read_manifest(Path(path))
        graphs = open_executors(Path(path), manifest, backend, providers, threads, **backend_options)
        try:
            policy_exit = exit if isinstance(exit, ExitPolicy) else parse_exit(exit, manifest, graphs.policy)
            return cls(manifest, graphs.step, graphs.encoder, policy_exit, mode, batch, graphs.policy, device_states)
        except BaseException:
            graphs.close()
            raise

    # -- inputs ----------------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Check raw samples [N, ...] against the bundle and normalise them; events keep T_max frames."""
        return normalise(self.manifest, self._fit(x))

    def _fit(self, x: np.ndarray) -> np.ndarray:
        """Raw samples [N, ...] checked for dtype and shape (UserError naming the expected one); events cut to T_max frames."""
        x = np.asarray(x)
        if x.dtype == np.float32 and x.shape[1:] == self.manifest.input.shape:
            return x  # the usual case, without the checks' cost (a submit() each sample pays it)
        frames = self.manifest.input.shape[0]
        check_samples(self.manifest, x, min_frames=frames)
        return x[:, :frames] if self.manifest.input.kind == "event" else x

    def _screen(self, raw: np.ndarray) -> np.ndarray:
        """bool [N]: which raw samples [N, ...] hold NaN or Inf. Warns, once per Runtime, when static
        inputs range outside [0, 1], the raw range the bundle's normalisation was fitted for."""
        bad = np.zeros(len(raw), dtype=np.bool_)
        if not raw.size:
            return bad
        lo, hi = float(raw.min()), float(raw.max())  # NaN propagates through both: the clean case costs two reductions
        if lo - lo != 0 or hi - hi != 0:  # NaN or Inf somewhere
            flat = raw.reshape(len(raw), -1)
            bad = ~np.isfinite(flat).all(axis=1)
            lo, hi = (float(flat[~bad].min()), float(flat[~bad].max())) if not bad.all() else (0.0, 1.0)
        if not self._range_checked and self.manifest.input.kind == "static" and (
                lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK):
            self._range_checked = True
            warnings.warn(self._range_message(lo, hi), UserWarning, stacklevel=3)
        return bad

    def _range_message(self, lo: float, hi: float) -> str:
        info = self.manifest.input
        cause = ("they look like 0..255 pixel values: divide them by 255" if hi > 2 and lo >= -RANGE_SLACK else
                 "they look normalised already: pass raw values in [0, 1], the runtime applies mean and std itself")
        return (f"samples range over [{lo:.3g}, {hi:.3g}], but the bundle normalises with mean {list(info.mean)} and "
                f"std {list(info.std)} fitted on raw values in [0, 1]; {cause} (answers for such inputs are unreliable; "
                "this warning is given once per Runtime)")

    @staticmethod
    def _nonfinite_error(rows: np.ndarray) -> UserError:
        if len(rows) == 1:
            return UserError(f"sample {rows[0]} holds NaN or Inf values: repair or drop it; the model has no answer for it")
        shown = ", ".join(map(str, rows[:8].tolist())) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
        return UserError(f"{len(rows)} samples hold NaN or Inf values (rows {shown}): repair or drop them; "
                         "the model has no answer for them")

    # -- batch inference -------------------------------------------------------------------
    def new_scheduler(self, claim: Claim | None = None) -> Scheduler:
        """A scheduler over this runtime's graphs, exit policy, mode and batch (what infer and the worker drive)."""
        return make_scheduler(self.mode, self.manifest, self.step, self.exit, self.batch, self.encoder,
                              device_states=self.device_states, claim=claim)

    def infer(self, x: np.ndarray, errors: str = "raise") -> list:
        """Results for samples x [N, ...] in order.

        errors="raise" (the default): a sample with NaN or Inf raises a UserError naming its rows
        before anything runs, and a failure while running raises after every sample ran.
        errors="return": the list holds, in place of each failed sample's Result, the exception
        that failed it (a UserError for NaN or Inf), and the other samples are answered.
        Not to be called while another thread closes the runtime.
        """
        if self._closed:
            raise RuntimeClosed("the runtime is closed: infer before close(), or open a new one")
        if errors not in ERRORS:
            raise UserError(f"errors={errors!r} is not one of {', '.join(ERRORS)}")
        raw = self._fit(x)
        bad = self._screen(raw)
        answers: list = [None] * len(raw)
        keys = None
        if bad.any():
            rows = np.flatnonzero(bad)
            if errors == "raise":
                raise self._nonfinite_error(rows)
            for row in rows.tolist():
                answers[row] = self._nonfinite_error(np.array([row]))
            keys = np.flatnonzero(~bad)
            raw = raw[keys]
        scheduler = self.new_scheduler()
        scheduler.add(Requests.of(normalise(self.manifest, raw), keys))
        failed = 0
        try:
            while not scheduler.idle:
                settled = scheduler.tick()
                for key, answer in zip(settled.keys, settled.answers):
                    answers[key] = answer
                failed += settled.failed
        finally:
            scheduler.close()
        if failed and errors == "raise":
            raise next(a for a in answers if isinstance(a, BaseException))
        return answers

    # -- streaming -------------------------------------------------------------------------
    def submit(self, x: np.ndarray) -> Future:
        """Queue one raw sample (the bundle's input shape, no batch dim); the future gets its Result.

        A wrong shape or dtype raises here. The sample is copied (the caller may reuse its buffer);
        the worker checks and normalises what arrived in bulk, so a sample with NaN or Inf gets a
        future that fails with a UserError. After a worker failure every future holds WorkerFailed.
        """
        raw = self._fit(np.asarray(x)[None])[0]
        future: Future = Future()
        request = (np.array(raw, dtype=np.float32), time.perf_counter(), future)  # float32: normalise's own first step
        with self._lock:
            if self._closed:
                raise RuntimeClosed("the runtime is closed: submit before close(), or open a new one")
            failure = self._failure
            if failure is None:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._serve, name="seenn-runtime", daemon=True)
                    self._worker.start()
                self._inbox.append(request)
        if failure is not None:  # outside the lock: a done-callback may call submit()
            future.set_exception(failure)
        elif not self._wake.is_set():
            self._wake.set()
        return future

    def _serve(self) -> None:
        """The worker: take what arrived, tick, deliver; until close() and nothing is left."""
        scheduler: Scheduler | None = None
        try:
            scheduler = self.new_scheduler(claim=claim_futures)
            stopping = False
            while True:
                stopping = self._collect(scheduler, wait=scheduler.idle and not stopping) or stopping
                if scheduler.idle:
                    if stopping:
                        return
                    continue
                try:
                    settled = scheduler.tick()
                except Exception as exc:  # a bug in the scheduler: fail what it held, go on with a fresh one
                    settled, scheduler = self._recover(scheduler, exc)
                self._deliver(settled)
        except BaseException as exc:  # the worker cannot go on: answer everything now, refuse the rest
            self._fail_all(scheduler, exc)
        finally:
            if scheduler is not None:
                try:
                    scheduler.close()
                except Exception:
                    pass
            if self._closed:
                self._release()

    def _collect(self, scheduler: Scheduler, wait: bool) -> bool:
        """Move what submit() queued into the scheduler as one block (blocking while `wait` and
        nothing came); True when close() asked to stop."""
        if wait:
            self._wake.clear()
            if not self._inbox:
                self._wake.wait()
        with self._lock:
            items, self._inbox = self._inbox, deque()
        stop = bool(items) and items[-1] is _STOP  # close() queues nothing after it
        if stop:
            items.pop()
        if items:
            xs, submitted, futures = zip(*items)
            keys = np.empty(len(futures), dtype=object)
            keys[:] = futures
            refused = Settled()
            try:
                raw, submitted = np.stack(xs), np.array(submitted)
                bad = self._screen(raw)
                if bad.any():
                    refused.fail(keys[bad].tolist(), UserError(NONFINITE_SAMPLE))
                    raw, keys, submitted = raw[~bad], keys[~bad], submitted[~bad]
                scheduler.add(Requests(normalise(self.manifest, raw), keys, submitted))
            except Exception as exc:  # out of memory, a warning made an error: these samples fail, the worker goes on
                refused.fail(keys.tolist(), exc)
            self._deliver(refused)
        return stop

    @staticmethod
    def _deliver(settled: Settled) -> None:
        """Hand each answer to its future; one settled or cancelled by its caller is left as it is."""
        for future, answer in zip(settled.keys, settled.answers):
            try:
                if type(answer) is Result:
                    future.set_result(answer)
                else:
                    future.set_exception(answer)
            except InvalidStateError:
                pass
            except BaseException:  # a done-callback raising SystemExit (Future logs the Exceptions): the rest still go
                pass

    def _recover(self, scheduler: Scheduler, exc: Exception) -> tuple[Settled, Scheduler]:
        """After tick() raised: fail the samples it held and carry its queue over to a fresh scheduler
        (if it held none, the queue fails too, so a failure that repeats still ends)."""
        settled = Settled()
        held = scheduler.held()
        settled.fail(held, exc)
        fresh = self.new_scheduler(claim=claim_futures)
        if held:
            fresh.pending = scheduler.pending
        else:
            settled.fail(scheduler.pending.keys(), exc)
        try:
            scheduler.close()
        except Exception:
            pass
        return settled, fresh

    def _fail_all(self, scheduler: Scheduler | None, exc: BaseException) -> None:
        error = WorkerFailed(f"the runtime's worker stopped on {type(exc).__name__}: {exc}; "
                             "open a new Runtime (this one answers nothing more)")
        error.__cause__ = exc
        with self._lock:
            self._failure = error
            items, self._inbox = self._inbox, deque()
        futures = [item[2] for item in items if item is not _STOP]
        if scheduler is not None:
            try:
                futures = scheduler.held() + scheduler.pending.keys() + futures
            except Exception:  # the scheduler is too broken to list them; the futures it held stay unanswered
                pass
        for future in futures:
            try:
                future.set_exception(error)
            except BaseException:  # settled already, or a callback that raises: the others still get the error
                pass

    def close(self) -> None:
        """Answer every request submitted so far, then stop the worker and free the executors.

        From any thread: from the worker itself (a future's done-callback) it returns at once, and
        the worker answers the rest and frees the executors when it stops.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._inbox.append(_STOP)
        if worker is not None:
            self._wake.set()
            if worker is threading.current_thread():
                return
            worker.join()
        self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        for executor in (self.step, self.encoder, self.policy):
            if executor is not None:
                executor.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def claim_futures(futures: list[Future]) -> np.ndarray:
    """bool [n]: mark each future running as its sample takes a row; False for those cancelled (or settled by hand)."""
    return np.fromiter(map(_claim, futures), dtype=np.bool_, count=len(futures))


def _claim(future: Future) -> bool:
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # its caller settled it already: nothing left to answer
        return False
