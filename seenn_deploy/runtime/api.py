"""`Runtime`: a bundle, a backend, an exit policy and a scheduler behind `infer` and `submit`.

`infer(batch)` runs a private scheduler in the calling thread. `submit(x)` hands one sample to
a worker thread that owns a streaming scheduler; it is safe from several threads, and every
request gets exactly one result or one exception, also when `close()` comes first.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence

import numpy as np

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.executors.base import Executor
from seenn_deploy.runtime.exit import ExitPolicy, parse_exit
from seenn_deploy.runtime.loop import normalise
from seenn_deploy.runtime.manifest import Manifest, read_manifest
from seenn_deploy.runtime.scheduler import Request, Result, Scheduler, make_scheduler

BACKENDS = ("ort", "torch", "trt")
_STOP = object()


class RuntimeClosed(UserError):
    """submit() after close()."""


class Runtime:
    """Early-exit inference over a bundle. Use as a context manager, or call close()."""

    def __init__(self, manifest: Manifest, step: Executor, encoder: Executor | None, exit_policy: ExitPolicy,
                 mode: str = "slots", batch: int = 1, policy: Executor | None = None, device_states: bool | None = None) -> None:
        self.manifest = manifest
        self.step = step
        self.encoder = encoder
        self.policy = policy
        self.exit = exit_policy
        self.mode = mode
        self.batch = batch
        self.device_states = device_states
        self._new_scheduler().close()  # validates mode and batch now, not at the first request
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._worker: threading.Thread | None = None

    @classmethod
    def from_bundle(cls, path: Path | str, backend: str = "ort", exit: str | ExitPolicy | None = None,
                    mode: str = "slots", batch: int = 1, providers: Sequence[str] | None = None,
                    threads: int | None = None, device_states: bool | None = None, **backend_options) -> "Runtime":
        """Open a bundle. backend 'ort' (providers, threads), 'torch' (device=, checkpoint=) or 'trt'.

        device_states: in slot mode, keep the states where the graph runs (ORT I/O binding, torch
        tensors, TensorRT buffers) instead of passing them through the host every step. None
        (the default) does so when the graph runs on a GPU; on the CPU the host path is faster.
        """
        bundle = Path(path)
        manifest = read_manifest(bundle)
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if backend == "ort":
            from seenn_deploy.runtime.executors.ort import OrtExecutor

            def open_graph(role: str) -> Executor:
                return OrtExecutor(bundle / manifest.graphs[role], providers, threads)
        elif backend == "torch":
            from seenn_deploy.runtime.executors.torch_executor import open_torch_graphs

            open_graph = open_torch_graphs(bundle, manifest, **backend_options)
        else:
            from seenn_deploy.runtime.executors.trt import open_trt_graphs

            open_graph = open_trt_graphs(bundle, manifest, **backend_options)
        step = open_graph("step")
        encoder = open_graph("encoder") if manifest.has_encoder else None
        policy = open_graph("policy") if "policy" in manifest.graphs else None
        policy_exit = exit if isinstance(exit, ExitPolicy) else parse_exit(exit, manifest, policy)
        return cls(manifest, step, encoder, policy_exit, mode, batch, policy, device_states)

    # -- inputs ----------------------------------------------------------------------------
    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Check raw samples [N, ...] against the bundle and normalise them; events keep T_max frames."""
        x = np.asarray(x)
        expected = self.manifest.input.shape
        shape_text = f"[N, {', '.join(map(str, expected))}] ({self.manifest.input.layout})"
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"samples are {x.dtype.name}; the bundle takes floats in [0, 1] of shape {shape_text} "
                            "(divide uint8 images by 255)")
        event = self.manifest.input.kind == "event"
        fits = x.ndim == len(expected) + 1 and (
            tuple(x.shape[1:]) == tuple(expected)
            or (event and x.shape[1] >= expected[0] and tuple(x.shape[2:]) == tuple(expected[1:]))
        )
        if not fits:
            raise UserError(f"samples of shape {list(x.shape)} do not fit the bundle: it takes {shape_text}")
        if event:
            x = x[:, : expected[0]]
        return normalise(self.manifest, x)

    # -- batch inference -------------------------------------------------------------------
    def _new_scheduler(self) -> Scheduler:
        return make_scheduler(self.mode, self.manifest, self.step, self.exit, self.batch, self.encoder,
                              device_states=self.device_states)

    def infer(self, x: np.ndarray) -> list[Result]:
        """Results for samples x [N, ...] in order; raises the first failure after all samples ran."""
        prepared = self.prepare(x)
        scheduler = self._new_scheduler()
        now = time.perf_counter()  # submitted together
        requests = [Request(sample, now) for sample in prepared]
        scheduler.add(requests)
        answers: dict[int, Result | BaseException] = {}
        try:
            while not scheduler.idle:
                for request, outcome in scheduler.tick():
                    answers[id(request)] = outcome
        finally:
            scheduler.close()
        results = [answers[id(r)] for r in requests]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        return results  # type: ignore[return-value]

    # -- streaming -------------------------------------------------------------------------
    def submit(self, x: np.ndarray) -> Future:
        """Queue one raw sample (the bundle's input shape, no batch dim); the future gets its Result."""
        prepared = self.prepare(np.asarray(x)[None])[0]
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeClosed("the runtime is closed: submit before close(), or open a new one")
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="seenn-runtime", daemon=True)
                self._worker.start()
            self._inbox.put(Request(prepared, future=future))
        return future

    def _serve(self) -> None:
        scheduler = self._new_scheduler()
        stopping = False
        while True:
            if scheduler.idle:
                if stopping:
                    scheduler.close()
                    return
                item = self._inbox.get()  # nothing to do: block
                stopping = self._accept(item, scheduler) or stopping
            while True:  # take everything that has arrived
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                stopping = self._accept(item, scheduler) or stopping
            try:
                outcomes = scheduler.tick()
            except BaseException as exc:  # a bug in the scheduler: fail what it held, keep serving
                outcomes = [(r, exc) for r in list(scheduler.pending) + scheduler.held()]
                scheduler.close()
                scheduler = self._new_scheduler()
            for request, outcome in outcomes:
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    @staticmethod
    def _accept(item, scheduler: Scheduler) -> bool:
        if item is _STOP:
            return True
        scheduler.add([item])
        return False

    def close(self) -> None:
        """Answer every request submitted so far, then stop the worker and free the executors."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            if worker is not None:
                self._inbox.put(_STOP)
        if worker is not None:
            worker.join()
        for executor in (self.step, self.encoder, self.policy):
            if executor is not None:
                executor.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
