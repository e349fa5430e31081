"""INT8 calibration for TensorRT 10's implicit quantization: the inputs each graph meets, and the calibrator.

The step graph is stateful, so its calibration batches are what it sees in a run: the bundle's ONNX
Runtime step loop over the calibration samples yields x, reset and every state at each timestep
t = 1..T_max, so the ranges TensorRT measures cover early and late membranes alike. As in the slot
scheduler, the first step starts from zeroed states with `reset` set and the graph writes the
initial values. The encoder and policy graphs take the normalised samples.

`calibration_feeds` needs numpy and onnxruntime only; `make_calibrator` needs tensorrt (its class
derives from `trt.IInt8EntropyCalibrator2`, so it is defined when tensorrt is at hand).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np

from seenn_deploy.errors import InternalError
from seenn_deploy.files import write_atomic
from seenn_deploy.runtime.loop import NUMPY_DTYPES, check_samples, normalise, open_bundle_graphs
from seenn_deploy.runtime.manifest import RESET, X, Manifest

CALIB_SAMPLES = 512  # samples of the --calib-data train split
CALIB_BATCH = 32  # rows per calibration batch (the calibration profile's fixed batch)
CACHE_SUFFIX = ".calib"


def calibration_feeds(bundle: Path, manifest: Manifest, role: str, x: np.ndarray,
                      batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Input feeds of `batch` rows for graph `role` from raw samples x [N, ...] (a last partial batch is dropped).

    encoder / policy: {x: normalised rows}. step: for each batch of samples, one feed per timestep
    {x, reset [B], every state}, made by running the bundle's graphs with ONNX Runtime.
    """
    check_samples(manifest, x)
    starts = range(0, len(x) - batch + 1, batch)
    if role != "step":
        for start in starts:
            yield {X: normalise(manifest, x[start : start + batch])}
        return
    step, encoder = open_bundle_graphs(bundle, manifest)
    with step, (encoder or contextlib.nullcontext()):
        for start in starts:
            xb = normalise(manifest, x[start : start + batch])
            static = encoder.run({X: xb})["encoded"] if encoder is not None else xb
            states = {s.name: np.zeros((batch, *s.shape), NUMPY_DTYPES[s.dtype]) for s in manifest.states}
            for t in range(manifest.timesteps):
                feed = {X: xb[:, t] if manifest.input.kind == "event" else static,
                        RESET: np.full(batch, t == 0, np.bool_), **states}
                yield feed
                out = step.run(feed)
                states = {s.name: out[s.output] for s in manifest.states}


def cache_path(engines: Path, role: str, onnx_sha256: str, data_spec: str, samples: int) -> Path:
    """`engines/<role>.int8.<key>.calib`: the key changes with the graph, the data and the sample count."""
    key = hashlib.sha256(f"{onnx_sha256}|{data_spec}|{samples}".encode()).hexdigest()[:12]
    return Path(engines) / f"{role}.int8.{key}{CACHE_SUFFIX}"


def make_calibrator(trt, cuda, feeds: Iterator[dict[str, np.ndarray]], cache: Path):
    """A `trt.IInt8EntropyCalibrator2` that copies each feed to the GPU; `cache` (read, then written) skips
    calibration on the next build. `cuda`: a CudaCalls. Call `free()` after the build; a failure while feeding
    TensorRT (it calls get_batch from C++) is kept in `.error` and ends calibration early."""
    to_device = cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the base initialised
            self.feeds = feeds
            self.buffers: dict[str, tuple[int, int]] = {}  # input name -> (device pointer, bytes)
            self.batches = 0
            self.error: BaseException | None = None

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the calibration profile's shapes carry the batch

        def get_batch(self, names):
            try:
                feed = next(self.feeds, None)
                if feed is None:
                    return None
                self.batches += 1
                return [self._upload(name, feed) for name in names]
            except Exception as exc:  # raised again by the builder after TensorRT returns
                self.error = exc
                return None

        def _upload(self, name: str, feed: dict[str, np.ndarray]) -> int:
            if name not in feed:
                raise InternalError(f"the calibration feed has no input {name} (it has {', '.join(feed)})")
            array = np.ascontiguousarray(feed[name])
            pointer, size = self.buffers.get(name, (0, 0))
            if size < array.nbytes:
                if pointer:
                    cuda("cudaFree", pointer)
                pointer = int(cuda("cudaMalloc", array.nbytes))
                self.buffers[name] = (pointer, array.nbytes)
            cuda("cudaMemcpy", pointer, array.ctypes.data, array.nbytes, to_device)
            return pointer

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            if self.error is not None or self.batches == 0:  # a table from partial data would be reused as if whole
                cache.unlink(missing_ok=True)
                return
            blob = bytes(data)
            write_atomic(cache, lambda tmp: tmp.write_bytes(blob))

        def free(self) -> None:
            for pointer, _ in self.buffers.values():
                cuda.rt.cudaFree(pointer)
            self.buffers.clear()
            close = getattr(self.feeds, "close", None)
            if close is not None:
                close()

    return EntropyCalibrator()
