"""`seenn-deploy triton`: the generated repository parses as Triton's ModelConfig, names every manifest state with
its initial value, and its stateful step graph computes what the bundle's step loop computes."""

import json
import shutil

import numpy as np
import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.manifest import RESET, read_manifest
from seenn_deploy.serve.model_repository import (
    CONFIG, INITIAL_STATE_DIR, MARKER, RepositoryOptions, write_model_repository,
)
from seenn_deploy.serve.step_graph import READY, START

onnx = pytest.importorskip("onnx", reason="writing the step model needs onnx (the torch extra)")
ort = pytest.importorskip("onnxruntime", reason="the step graph parity runs on ONNX Runtime")


def parse_config_text(text):
    """config.pbtxt's text -> Triton's ModelConfig protobuf (what the server itself parses)."""
    text_format = pytest.importorskip("google.protobuf.text_format", reason="needs protobuf (tritonclient[grpc])")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the triton extra)")
    return text_format.Parse(text, pb2.ModelConfig())


def parse_config(path):
    return parse_config_text(path.read_text())


@pytest.fixture(scope="module")
def warm_bundle(digits_bundle, tmp_path_factory):
    """The digits bundle with one state starting away from zero (as IF neurons of converted models do)."""
    bundle = tmp_path_factory.mktemp("warm") / "warm.seenn"
    shutil.copytree(digits_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["states"][0]["init"] = 0.5
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="module")
def repository(warm_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    return write_model_repository(warm_bundle, out, RepositoryOptions(max_batch=8, instances=2))


def test_every_config_parses_as_triton_model_config(repository):
    configs = sorted(repository.path.glob(f"*/{CONFIG}"))
    assert [c.parent.name for c in configs] == sorted(repository.models) == ["seenn", "seenn_encoder", "seenn_step"]
    for path in configs:
        config = parse_config(path)
        assert config.name == path.parent.name and config.max_batch_size == 8
        assert [g.count for g in config.instance_group] == [2]


def test_python_model_batches_dynamically_and_answers_per_sample(repository, warm_bundle):
    config = parse_config(repository.path / "seenn" / CONFIG)
    manifest = read_manifest(warm_bundle)
    assert config.backend == "python" and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", list(manifest.input.shape))]
    assert [o.name for o in config.output] == ["prediction", "confidence", "timesteps"]
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["slots"] == "8" and params["backend"] == "ort" and params["exit"] == ""
    copied = repository.path / "seenn" / "1" / params["bundle"]
    assert read_manifest(copied) == manifest  # the bundle travels with the repository
    assert "seenn_deploy.serve.triton_model" in (repository.path / "seenn" / "1" / "model.py").read_text()


def test_step_model_names_every_state_with_its_initial_value(repository, warm_bundle):
    config = parse_config(repository.path / "seenn_step" / CONFIG)
    manifest = read_manifest(warm_bundle)
    batcher = config.sequence_batching
    assert batcher.HasField("direct") and not batcher.iterative_sequence
    controls = {c.name: [k.kind for k in c.control] for c in batcher.control_input}
    kind = type(batcher).Control.Kind.Value
    assert controls == {START: [kind("CONTROL_SEQUENCE_START")], READY: [kind("CONTROL_SEQUENCE_READY")]}
    states = {s.input_name: s for s in batcher.state}
    assert set(states) == {s.name for s in manifest.states}
    for info in manifest.states:
        state = states[info.name]
        assert state.output_name == info.output
        assert list(state.dims) == (list(info.shape) or [1])
        (initial,) = state.initial_state
        assert list(initial.dims) == list(state.dims)
        if initial.zero_data:
            value = np.zeros(1, np.float32)
        else:
            raw = (repository.path / "seenn_step" / INITIAL_STATE_DIR / initial.data_file).read_bytes()
            value = np.frombuffer(raw, "<f4")
            assert value.size == max(1, int(np.prod(state.dims)))
        assert np.all(value == info.init), (info.name, info.init)
    assert any(s.init == 0.5 for s in manifest.states)  # the test covers a data_file too


def _initial(manifest, batch, scalar_as_column):
    return {s.name: np.full((batch, *(s.shape or ((1,) if scalar_as_column else ()))), s.init, np.float32)
            for s in manifest.states}


def test_step_graph_runs_as_the_sequence_batcher_feeds_it(repository, digits_bundle):
    """The adapted graph, fed as Triton feeds it (START/READY [B, 1], scalar states [B, 1]), gives the bundle's
    step loop's outputs; a slot that is not READY keeps its states at their initial values."""
    manifest = read_manifest(digits_bundle)
    original = ort.InferenceSession(str(digits_bundle / manifest.graphs["step"]))
    adapted = ort.InferenceSession(str(repository.path / "seenn_step" / "1" / "model.onnx"))
    encoder = ort.InferenceSession(str(digits_bundle / manifest.graphs["encoder"]))
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.runtime.loop import normalise

    raw = parse_data_spec("digits").load("test").x[:6]
    x = encoder.run(None, {encoder.get_inputs()[0].name: normalise(manifest, raw)})[0]
    batch = len(x)
    ready = np.ones((batch, 1), bool)
    ready[-1] = False  # an idle slot
    mine, theirs = _initial(manifest, batch, False), _initial(manifest, batch, True)
    names = [o.name for o in original.get_outputs()]
    idle = None  # the idle slot's outputs at the first step: it starts afresh every step
    for t in range(manifest.timesteps):
        out = dict(zip(names, original.run(None, {"x": x, RESET: np.full(batch, t == 0), **mine})))
        got = dict(zip(names, adapted.run(None, {"x": x, START: np.full((batch, 1), t == 0), READY: ready, **theirs})))
        for name in ("confidence", "prediction", "logits"):
            np.testing.assert_array_equal(got[name][:-1], out[name][:-1])
        for s in manifest.states:
            np.testing.assert_array_equal(got[s.output][:-1].reshape(out[s.output][:-1].shape), out[s.output][:-1])
        idle = idle or {name: value[-1] for name, value in got.items()}
        for name, value in got.items():
            np.testing.assert_array_equal(value[-1], idle[name])  # not READY: reset before every step
        mine = {s.name: out[s.output] for s in manifest.states}
        theirs = {s.name: got[s.output] for s in manifest.states}


def test_triton_command_writes_and_refuses(run_cli, digits_bundle, tmp_path):
    out = tmp_path / "repo"
    result = run_cli("triton", str(digits_bundle), "--out", str(out), "--max-batch", "4", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["models"] == ["seenn", "seenn_encoder", "seenn_step"]
    assert (out / MARKER).is_file()
    assert "exists: pass --force" in run_cli("triton", str(digits_bundle), "--out", str(out)).error()
    assert run_cli("triton", str(digits_bundle), "--out", str(out), "--force", "--name", "digits").code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["digits", "digits_encoder", "digits_step"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not a model repository" in run_cli("triton", str(digits_bundle), "--out", str(other)).error()
    assert (other / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 2  # nothing half-written
    error = run_cli("triton", str(digits_bundle), "--out", str(tmp_path / "big"), "--max-batch", "100000").error()
    assert "--max-batch 100000 is above" in error


def test_bad_options_are_refused(digits_bundle, tmp_path):
    with pytest.raises(UserError, match="TensorRT engines"):
        write_model_repository(digits_bundle, tmp_path / "r", RepositoryOptions(backend="trt"))
    with pytest.raises(UserError, match="--exit"):
        write_model_repository(digits_bundle, tmp_path / "r", RepositoryOptions(exit="policy"))
    with pytest.raises(UserError, match="model name"):
        write_model_repository(digits_bundle, tmp_path / "r", RepositoryOptions(name="a/b"))
    assert not (tmp_path / "r").exists()


def test_trt_configs_parse_with_gpu_instances_and_the_tensorrt_accelerator(warm_bundle):
    """--backend trt (whose repository needs engines, built on a GPU): its configs, written as fill_repository does."""
    from seenn_deploy.serve.model_repository import encoder_model_config, python_model_config, step_model_config
    from seenn_deploy.serve.pbtxt import to_pbtxt

    manifest = read_manifest(warm_bundle)
    manifest.precision = "fp16"
    options = RepositoryOptions(backend="trt", max_batch=16)
    texts = [to_pbtxt(python_model_config(manifest, options)), to_pbtxt(step_model_config(manifest, options, {})),
             to_pbtxt(encoder_model_config(manifest, options, {"x": "float32", "x.encoded": "float32"}))]
    python, step, encoder = (parse_config_text(t) for t in texts)
    for config in (python, step, encoder):
        assert [g.kind for g in config.instance_group] == [type(config.instance_group[0]).Kind.Value("KIND_GPU")]
    assert {k: v.string_value for k, v in python.parameters.items()}["backend"] == "trt"
    for config in (step, encoder):
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}

