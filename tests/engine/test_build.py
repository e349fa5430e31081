"""`seenn-deploy build`: clean refusals without TensorRT and for bad options, the precision rules of
TensorRT 10 and 11, the builder's calls and files against a stand-in for tensorrt, INT8 calibration
feeds, and, marked gpu, real fp32 / fp16 engines that predict as ONNX Runtime does.
"""

from __future__ import annotations

import enum
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from seenn_deploy.engine import BuildOptions, build_engines, network_mode
from seenn_deploy.engine.calibration import calibration_feeds
from seenn_deploy.engine.trt_builder import CALIBRATED_INT8, STRONG, WEAK_FP16, graph_has_qdq
from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.files import file_sha256
from seenn_deploy.runtime.engine_meta import ENGINES_DIR, find_engine, meta_path, read_engine_meta
from seenn_deploy.runtime.manifest import MANIFEST, RESET, X, read_manifest


@pytest.fixture
def bundle(digits_bundle, tmp_path):
    return shutil.copytree(digits_bundle, tmp_path / "digits.seenn")


def test_build_without_tensorrt_says_what_to_install(bundle, run_cli, no_tensorrt):
    line = run_cli("build", bundle).error()
    assert "tensorrt is not installed" in line and "pip install 'seenn-deploy[trt-cu12]'" in line
    assert not (bundle / ENGINES_DIR).exists()


@pytest.mark.parametrize("args, fragment", [
    (["--max-batch", "0"], "'--max-batch': 0 is not in the range x>=1"),
    (["--max-batch", "1000"], "above the bundle's 256"),
    (["--opt-batch", "0"], "'--opt-batch': 0 is not in the range x>=1"),
    (["--max-batch", "8", "--opt-batch", "9"], "--opt-batch 9 is outside 1..8"),
    (["--workspace", "0"], "'--workspace': 0 is not in the range x>=1"),
    (["--precision", "int8"], "needs --calib-data"),
    (["--precision", "int8", "--calib-data", "mnist"], "unknown data spec 'mnist'"),
    (["--calib-data", "digits"], "--calib-data goes with --precision int8"),
    (["--timing-cache", "/no/such/dir/cache"], "folder /no/such/dir does not exist"),
])
def test_bad_options_are_refused_before_tensorrt(bundle, args, fragment, monkeypatch, run_cli):
    def tensorrt_needed(*_):
        raise AssertionError("tensorrt was imported before the options were checked")

    monkeypatch.setattr("seenn_deploy.runtime.executors.trt.load_tensorrt", tensorrt_needed)
    assert fragment in run_cli("build", bundle, *args).error()
    assert not (bundle / ENGINES_DIR).exists()


def test_a_directory_that_is_not_a_bundle_and_an_fp32_engine_of_an_fp16_bundle_are_refused(bundle, tmp_path,
                                                                                            run_cli, no_tensorrt):
    assert "not a seenn-deploy bundle" in run_cli("build", tmp_path).error()
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "precision": "fp16"}))
    line = run_cli("build", bundle, "--precision", "fp32").error()
    assert "fp16 bundle" in line and "--precision fp32" in line


def test_precision_rules_of_tensorrt_10_and_11():
    for major in (10, 11):
        assert network_mode("fp32", "fp32", False, major) == STRONG
        assert network_mode("fp16", "fp16", False, major) == STRONG  # the strongly typed fp16 export
        assert network_mode("int8", "fp32", True, major) == STRONG  # explicit Q/DQ
    assert network_mode("fp16", "fp32", False, 10) == WEAK_FP16
    assert network_mode("int8", "fp32", False, 10) == CALIBRATED_INT8
    with pytest.raises(UserError, match="TensorRT 11 removed BuilderFlag.FP16.*--precision fp16"):
        network_mode("fp16", "fp32", False, 11)
    with pytest.raises(UserError, match="TensorRT 11 removed implicit INT8.*Q/DQ.*--precision int8"):
        network_mode("int8", "fp32", False, 11)


# -- the builder against a stand-in for tensorrt ---------------------------------------------------
class FakeCudart(types.ModuleType):
    """The cuda-python runtime calls a build makes; device memory is a counter."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = 1
        self.copies: list[int] = []
        self.live: set[int] = set()
        self.allocated = 0

    def cudaGetDeviceCount(self):
        return self.cudaError_t.cudaSuccess, self.devices

    def cudaGetDeviceProperties(self, device):
        return self.cudaError_t.cudaSuccess, types.SimpleNamespace(name=b"Fake GPU", major=8, minor=7)

    def cudaSetDevice(self, device):
        return (self.cudaError_t.cudaSuccess,)

    def cudaMalloc(self, nbytes):
        self.allocated += 1
        pointer = 4096 * self.allocated
        self.live.add(pointer)
        return self.cudaError_t.cudaSuccess, pointer

    def cudaMemcpy(self, dst, src, nbytes, kind):
        assert dst in self.live and kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.copies.append(nbytes)
        return (self.cudaError_t.cudaSuccess,)

    def cudaFree(self, pointer):
        self.live.remove(pointer)
        return (self.cudaError_t.cudaSuccess,)


def fake_tensorrt(version: str, fail: str | None = None) -> types.ModuleType:
    """The TensorRT builder API of `version` (11 has no FP16 / INT8 flags, calibrators or calibration profiles);
    a 'plan' is the ONNX bytes. Every network, config and profile is kept in `trt.built` for the test to read.
    As TensorRT 10 does, a build of a strongly typed network with a precision flag (FP16, BF16, INT8) fails."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []
    ten = version.startswith("10.")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("Flag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if ten
                                                     else {"STRONGLY_TYPED": 0})
    trt.BuilderFlag = enum.Enum("BuilderFlag", ["TF32", "VERSION_COMPATIBLE", *(["FP16", "BF16", "INT8"] if ten else [])])
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            pass

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.path = flags, [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            session = ort.InferenceSession(path)
            self.network.path = path
            self.network.inputs = [types.SimpleNamespace(name=i.name, shape=[d if isinstance(d, int) else -1
                                                                             for d in i.shape])
                                   for i in session.get_inputs()]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timings"

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.pools, self.profiles = set(), set(), {}, []
            self.cache = self.calibration_profile = None

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def clear_flag(self, flag):
            self.cleared.add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        if ten:
            int8_calibrator = None

            def set_calibration_profile(self, profile):
                self.calibration_profile = profile

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            strongly_typed = ten and network.flags & 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            if strongly_typed and config.flags & {"FP16", "BF16", "INT8"}:
                return None  # "precision flags are not allowed on a strongly typed network" in TensorRT's log
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is not None and calibrator.read_calibration_cache() is None:
                names = [t.name for t in network.inputs]
                while calibrator.get_batch(names) is not None:  # as TensorRT does: until the data runs out
                    pass
                calibrator.write_calibration_cache(memoryview(b"calibration table"))
            if fail and network.path.endswith(fail):
                return None
            return memoryview(open(network.path, "rb").read())

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    if ten:
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


@pytest.fixture
def fake_build(monkeypatch):
    """Installs the stand-ins: (version, fail=graph file name) -> (fake tensorrt, FakeCudart)."""

    def install(version: str = "10.3.0", fail: str | None = None):
        trt, cudart = fake_tensorrt(version, fail), FakeCudart()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
        monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
        return trt, cudart

    return install


def quiet(_: str) -> None:
    pass


def test_fp32_build_writes_a_plan_and_record_per_graph(bundle, fake_build, tmp_path):
    trt, _ = fake_build("10.3.0")
    cache = tmp_path / "timing.cache"
    engines = build_engines(bundle, BuildOptions(max_batch=32, opt_batch=8, workspace_mb=64, timing_cache=cache), quiet)
    manifest = read_manifest(bundle)
    assert [e.meta.role for e in engines] == list(manifest.graphs) == ["step", "encoder"]
    for engine, (network, config) in zip(engines, trt.built):
        assert network.flags == 1 << 1  # STRONGLY_TYPED on TensorRT 10
        assert config.flags == set() and config.cleared == {"TF32"} and config.pools == {"WORKSPACE": 64 << 20}
        (profile,) = config.profiles
        assert set(profile.shapes) == {t.name for t in network.inputs}
        for name, (low, opt, high) in profile.shapes.items():
            assert (low[0], opt[0], high[0]) == (1, 8, 32) and low[1:] == opt[1:] == high[1:]
        meta = read_engine_meta(meta_path(engine.plan))
        assert meta == engine.meta and engine.plan.name == "{}.fp32.fake-gpu.trt10.3.0.plan".format(meta.role)
        assert (meta.precision, meta.gpu_name, meta.compute_capability) == ("fp32", "Fake GPU", "8.7")
        assert meta.profile == {"min": 1, "opt": 8, "max": 32} and meta.build["network"] == STRONG
        assert meta.onnx_sha256 == file_sha256(bundle / manifest.graphs[meta.role])
        assert engine.plan.read_bytes() == (bundle / manifest.graphs[meta.role]).read_bytes()
    assert RESET in trt.built[0][1].profiles[0].shapes and X in trt.built[1][1].profiles[0].shapes
    assert find_engine(bundle, manifest, "step", trt_version="10.3.0", gpu_name="Fake GPU",
                       compute_capability="8.7") == engines[0].plan
    assert cache.read_bytes() == b"+timings"
    trt, _ = fake_build("10.3.0")
    build_engines(bundle, BuildOptions(timing_cache=cache), quiet)
    assert trt.built[0][1].cache.blob == b"+timings"  # read back, shared by the graphs, saved again
    assert trt.built[1][1].cache is trt.built[0][1].cache and cache.read_bytes() == b"+timings+timings"


def test_tensorrt_11_builds_strongly_typed_without_flags_and_refuses_fp16_from_fp32(bundle, fake_build):
    trt, _ = fake_build("11.0.1")
    (engine, _) = build_engines(bundle, BuildOptions(version_compatible=True), quiet)
    network, config = trt.built[0]
    assert network.flags == 0 and config.flags == {"VERSION_COMPATIBLE"} and engine.meta.version_compatible
    shutil.rmtree(bundle / ENGINES_DIR)
    with pytest.raises(UserError, match="--precision fp16"):
        build_engines(bundle, BuildOptions(precision="fp16"), quiet)
    assert not (bundle / ENGINES_DIR).exists()


def test_an_fp16_bundle_builds_strongly_typed_without_precision_flags(bundle, fake_build):
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "precision": "fp16"}))  # the stand-in reads no graph types
    for version in ("10.3.0", "11.0.1"):
        trt, _ = fake_build(version)
        (engine, _) = build_engines(bundle, BuildOptions(), quiet)
        network, config = trt.built[0]
        assert config.flags == set() and engine.meta.precision == "fp16" and engine.meta.build["network"] == STRONG
        assert network.flags == (1 << 1 if version.startswith("10.") else 0)


@pytest.fixture(scope="module")
def int8_bundle(digits_checkpoint, tmp_path_factory):
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("int8") / "digits.int8.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8", encoder_split="on", max_batch=64))
    return out


def test_an_int8_bundle_builds_strongly_typed_without_a_flag_or_calibrator(int8_bundle, fake_build, tmp_path):
    bundle = shutil.copytree(int8_bundle, tmp_path / "b")
    assert graph_has_qdq(bundle / "step.onnx") and not graph_has_qdq(bundle / "encoder.onnx")
    for version in ("10.3.0", "11.0.1"):
        trt, cudart = fake_build(version)  # the stand-in fails a strongly typed build that sets INT8
        engines = build_engines(bundle, BuildOptions(), quiet)
        assert [e.meta.role for e in engines] == ["step", "encoder"] and cudart.copies == []  # nothing calibrated
        for engine, (network, config) in zip(engines, trt.built):
            assert network.flags == (1 << 1 if version.startswith("10.") else 0) and config.flags == set()
            assert engine.meta.precision == "int8" and engine.meta.build["network"] == STRONG
            assert engine.plan.name.startswith(f"{engine.meta.role}.int8.") and config.calibration_profile is None
        shutil.rmtree(bundle / ENGINES_DIR)


def test_an_int8_bundle_builds_int8_only_and_needs_its_qdq_nodes(int8_bundle, bundle, tmp_path, run_cli, no_tensorrt):
    copy = shutil.copytree(int8_bundle, tmp_path / "b")
    for precision in ("fp32", "fp16"):
        line = run_cli("build", copy, "--precision", precision).error()
        assert "is an int8 bundle" in line and "build int8 engines only" in line
    assert "--calib-data goes with" in run_cli("build", copy, "--calib-data", "digits").error()
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "precision": "int8"}))  # an fp32 graph called int8
    assert "carry no Q/DQ nodes" in run_cli("build", bundle).error()
    assert not (copy / ENGINES_DIR).exists() and not (bundle / ENGINES_DIR).exists()


@pytest.fixture(scope="module")
def int8_fp16_bundle(digits_checkpoint, tmp_path_factory):
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("int8fp16") / "digits.int8fp16.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8+fp16", encoder_split="on", max_batch=64))
    return out


def test_an_int8_fp16_bundle_builds_strongly_typed_and_as_itself_only(int8_fp16_bundle, bundle, fake_build, tmp_path,
                                                                      run_cli):
    """FP16 scales and FP16 float side in the graph: strongly typed on TensorRT 10 and 11, no flag (the stand-in fails
    a strongly typed build with one); int8+fp16 engines only, and never from a bundle of another precision."""
    copy = shutil.copytree(int8_fp16_bundle, tmp_path / "b")
    for version in ("10.3.0", "11.0.1"):
        trt, cudart = fake_build(version)
        engines = build_engines(copy, BuildOptions(), quiet)
        assert [e.meta.role for e in engines] == ["step", "encoder"] and cudart.copies == []
        for engine, (network, config) in zip(engines, trt.built):
            assert network.flags == (1 << 1 if version.startswith("10.") else 0) and config.flags == set()
            assert engine.meta.precision == "int8+fp16" and engine.meta.build["network"] == STRONG
            assert config.calibration_profile is None
        shutil.rmtree(copy / ENGINES_DIR)
    for precision in ("fp32", "fp16", "int8"):
        line = run_cli("build", copy, "--precision", precision).error()
        assert "is an int8+fp16 bundle" in line and "build int8+fp16 engines only" in line
    line = run_cli("build", bundle, "--precision", "int8+fp16").error()
    assert "is an fp32 bundle" in line and "--precision int8+fp16" in line
    assert not (copy / ENGINES_DIR).exists() and not (bundle / ENGINES_DIR).exists()


def test_the_stand_in_fails_a_precision_flag_on_a_strongly_typed_network(fake_build):
    trt, _ = fake_build("10.3.0")
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    network.path = "x.onnx"
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None


def test_fp16_from_fp32_on_tensorrt_10_is_weakly_typed(bundle, fake_build):
    trt, _ = fake_build("10.3.0")
    logged = []
    (engine, _) = build_engines(bundle, BuildOptions(precision="fp16"), logged.append)
    network, config = trt.built[0]
    assert network.flags == 0 and config.flags == {"FP16"} and config.cleared == {"TF32"}
    assert engine.plan.name.startswith("step.fp16.") and engine.meta.build["network"] == WEAK_FP16
    assert any("weakly typed" in line for line in logged)


def test_build_without_a_gpu_says_so(bundle, fake_build):
    _, cudart = fake_build("10.3.0")
    cudart.devices = 0
    with pytest.raises(UserError, match="no CUDA device.*building TensorRT engines needs an NVIDIA GPU"):
        build_engines(bundle, BuildOptions(), quiet)
    assert not (bundle / ENGINES_DIR).exists()


def test_a_failed_build_writes_nothing(bundle, fake_build, tmp_path):
    fake_build("10.3.0", fail="encoder.onnx")
    with pytest.raises(UserError, match="could not build .*encoder.onnx.*nothing was written"):
        build_engines(bundle, BuildOptions(timing_cache=tmp_path / "timing.cache"), quiet)
    assert not (bundle / ENGINES_DIR).exists() and not (tmp_path / "timing.cache").exists()


def test_int8_calibrates_every_graph_on_tensorrt_10_and_caches_the_table(bundle, fake_build):
    trt, cudart = fake_build("10.3.0")
    engines = build_engines(bundle, BuildOptions(precision="int8", calib_data="digits", max_batch=64), quiet)
    manifest = read_manifest(bundle)
    samples = len(parse_data_spec("digits").load("train").subset(512).x)
    step_batches, encoder_batches = samples // 32 * manifest.timesteps, samples // 32
    step_inputs = 2 + len(manifest.states)
    assert len(cudart.copies) == step_batches * step_inputs + encoder_batches and not cudart.live  # all freed
    for engine, (_, config) in zip(engines, trt.built):
        assert config.flags == {"INT8"} and engine.meta.build["network"] == CALIBRATED_INT8
        assert {shape[0][0] for shape in config.calibration_profile.shapes.values()} == {32}
    tables = sorted(p.name for p in (bundle / ENGINES_DIR).glob("*.calib"))
    assert [t.split(".")[0] for t in tables] == ["encoder", "step"]
    trt, cudart = fake_build("10.3.0")
    build_engines(bundle, BuildOptions(precision="int8", calib_data="digits"), quiet)
    assert cudart.copies == []  # the cached tables: no calibration the second time
    with pytest.raises(UserError, match="removed implicit INT8"):
        fake_build("11.0.1")
        build_engines(bundle, BuildOptions(precision="int8", calib_data="digits"), quiet)


def test_a_calibration_that_fails_midway_leaves_no_table(bundle, fake_build, monkeypatch):
    import seenn_deploy.engine.calibration as calibration

    feeds = calibration.calibration_feeds

    def failing(*args, **kwargs):
        source = feeds(*args, **kwargs)
        yield next(source)
        raise RuntimeError("the data went away")

    monkeypatch.setattr(calibration, "calibration_feeds", failing)
    fake_build("10.3.0")
    with pytest.raises(RuntimeError, match="the data went away"):
        build_engines(bundle, BuildOptions(precision="int8", calib_data="digits", max_batch=64), quiet)
    assert list((bundle / ENGINES_DIR).glob("*.calib")) == [] if (bundle / ENGINES_DIR).exists() else True


def test_qdq_is_read_from_op_types_not_from_names(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def graph(op: str, name: str) -> Path:
        nodes = [helper.make_node(op, ["x", "s", "z"] if "Linear" in op else ["x"], ["y"], name=name)]
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "s")]
        z = [helper.make_tensor_value_info("z", TensorProto.INT8, [1])] if "Linear" in op else []
        model = helper.make_model(helper.make_graph(nodes, "g", inputs + z, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
        path = tmp_path / f"{op}-{name}.onnx"
        onnx.save(model, str(path))
        return path

    assert graph_has_qdq(graph("QuantizeLinear", "q")) and graph_has_qdq(graph("DequantizeLinear", "dq"))
    assert not graph_has_qdq(graph("Relu", "QuantizeLinear_like_name"))


def test_calibration_feeds_follow_the_step_loop(digits_bundle):
    manifest = read_manifest(digits_bundle)
    x = parse_data_spec("digits").load("train").x[:40]
    feeds = list(calibration_feeds(digits_bundle, manifest, "step", x, batch=16))
    assert len(feeds) == 2 * manifest.timesteps  # two full batches of 16; the last 8 samples are dropped
    step = ort.InferenceSession(str(digits_bundle / manifest.graphs["step"]))
    names = [o.name for o in step.get_outputs()]
    for t, feed in enumerate(feeds[: manifest.timesteps]):
        assert set(feed) == {X, RESET, *(s.name for s in manifest.states)}
        assert feed[RESET].tolist() == [t == 0] * 16 and len(feed[X]) == 16
        if t + 1 < manifest.timesteps:
            out = dict(zip(names, step.run(None, feed)))
            for state in manifest.states:
                np.testing.assert_array_equal(feeds[t + 1][state.name], out[state.output])
    (encoder_feed, *_) = calibration_feeds(digits_bundle, manifest, "encoder", x, batch=16)
    assert set(encoder_feed) == {X} and encoder_feed[X].shape == (16, *manifest.input.shape)


# -- on a GPU with TensorRT ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    """(tensorrt, GPU name), or skip where TensorRT or a GPU is absent (before any model is trained). TensorRT and a
    GPU without a working cuda-python fail: a broken install, not a machine without the hardware."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: the real build needs "
                              "pip install 'seenn-deploy[trt-cu12]' and a CUDA GPU")
    from seenn_deploy.runtime.executors.cuda_runtime import gpu_info, load_cudart

    cudart = load_cudart()  # MissingDependency here fails the test
    try:
        name, _ = gpu_info(cudart)
    except UserError as exc:
        if "no CUDA device" not in str(exc):
            raise
        pytest.skip(f"needs a CUDA GPU: {exc}")
    return trt, name


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int8+fp16"])
def test_real_engines_predict_as_onnx_runtime(gpu, precision, request, run_cli, tmp_path):
    from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
    from seenn_deploy.runtime import Runtime

    checkpoint = request.getfixturevalue("digits_checkpoint")  # trained only once the GPU is known to be there
    bundle = tmp_path / f"digits.{precision}.seenn"
    export_checkpoint(checkpoint, bundle, ExportOptions(precision=precision, max_batch=64))
    engines = build_engines(bundle, BuildOptions(max_batch=64, opt_batch=16), quiet)
    assert {e.meta.role for e in engines} == {"step", "encoder"}
    x = parse_data_spec("digits").load("test").x
    results = {}
    for backend in ("ort", "trt"):
        with Runtime.from_bundle(bundle, backend=backend, exit="fixed:4", batch=16) as runtime:
            results[backend] = np.array([r.prediction for r in runtime.infer(x)])
    agreement = float(np.mean(results["trt"] == results["ort"]))
    assert agreement >= (0.995 if precision == "fp32" else 0.98), agreement  # 360 samples: 1 or 7 flips at most
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--engine", engines[0].plan, "--data", "digits", "--exit", "fixed:4", "--batch", "16",
                     "--iterations", "1", "--warmup-ms", "0", "--power", "none", "--json", out)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    assert report["backend"] == "trt" and report["runs"][0]["samples"] == len(x)
