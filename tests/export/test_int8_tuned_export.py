"""`export --int8-weights tuned`: single INT8 weights chosen on the train split's calibration samples, recorded in
the bundle, run alike by ONNX Runtime and the torch layout (which reads them back from the graph), and the options
refused where they do not apply."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from seenn_deploy.data import parse_data_spec
from seenn_deploy.errors import UserError
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.export.precision import for_precision
from seenn_deploy.export.int8 import quantized_layers
from seenn_deploy.runtime import Runtime
from seenn_deploy.snn.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tuned_bundle(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "digits.tuned.seenn"
    export_checkpoint(digits_checkpoint, out, ExportOptions(precision="int8", int8_weights="tuned", calib_samples=256))
    return out


def test_tuned_weights_are_single_weights_recorded_with_their_calibration(tuned_bundle, digits_checkpoint):
    manifest = json.loads((tuned_bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["fp16_weights"] == "single"
    tuning = manifest["provenance"]["int8_tuning"]
    assert tuning["data"] == "digits" and tuning["split"] == "train" and tuning["samples"] == 256
    assert tuning["held_out"] and tuning["flip_rate_after"] <= tuning["flip_rate_before"]
    assert set(tuning["layers"]) == {"body.layers.2", "body.layers.7", "body.layers.9"}
    model, _ = load_checkpoint(digits_checkpoint)
    max_abs = {q.name: q.q_weight.numpy() for q in quantized_layers(for_precision(model, "int8", (), "single"))}
    graph = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tuned_bundle / "step.onnx")).graph.initializer}
    conv = graph["body.layers.2.weight_int8"]
    assert not np.array_equal(conv, max_abs["body.layers.2"])  # the conv's rounding moved off max-abs
    assert np.abs(conv.astype(int) - max_abs["body.layers.2"]).max() <= 3


def test_onnx_runtime_and_the_torch_layout_run_the_same_tuned_weights(tuned_bundle):
    x = parse_data_spec("digits").load("test").x[:64]
    results = {}
    for backend in ("ort", "torch"):
        with Runtime.from_bundle(tuned_bundle, backend=backend, exit="fixed:4", batch=32) as runtime:
            results[backend] = runtime.infer(x)
    for ort_result, torch_result in zip(results["ort"], results["torch"]):
        assert ort_result.prediction == torch_result.prediction
        assert ort_result.confidence == pytest.approx(torch_result.confidence, abs=1e-4)


def test_cli_tunes_on_the_given_data_and_refuses_options_that_do_not_apply(digits_checkpoint, tmp_path, run_cli):
    out = tmp_path / "cli.seenn"
    result = run_cli("export", digits_checkpoint, "--out", out, "--precision", "int8", "--int8-weights", "tuned",
                     "--calib-data", "digits", "--calib-samples", "64")
    assert result.code == 0, result.err
    assert "INT8 weights tuned on 64 samples of digits (train split)" in result.out
    for args, message in [
        (("--precision", "int8", "--calib-data", "digits"), "--calib-data go with --int8-weights tuned"),
        (("--precision", "int8", "--int8-weights", "single", "--calib-samples", "9"),
         "--calib-samples go with --int8-weights tuned"),
        (("--precision", "fp16", "--int8-weights", "tuned"), "--int8-weights tuned applies to --precision int8"),
    ]:
        result = run_cli("export", digits_checkpoint, "--out", tmp_path / "refused.seenn", *args)
        assert result.code == 2 and message in result.error(), result.err
    assert not (tmp_path / "refused.seenn").exists()


def test_calibration_data_of_another_shape_is_refused_and_nothing_is_written(digits_checkpoint, tmp_path):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.random.default_rng(0).random((40, 3, 8, 8), dtype=np.float32), y=np.zeros(40, np.int64))
    with pytest.raises(UserError, match=r"samples of shape \[3, 8, 8\], the model takes \[1, 8, 8\]"):
        export_checkpoint(digits_checkpoint, tmp_path / "x.seenn", ExportOptions(
            precision="int8", int8_weights="tuned", calib_data=f"npz:{rgb}", calib_samples=8))
    assert not (tmp_path / "x.seenn").exists()


def test_verify_names_the_pair_when_single_weights_fall_short(tuned_bundle, digits_checkpoint):
    from seenn_deploy.data import Normalisation
    from seenn_deploy.export.verify import verify_bundle
    from seenn_deploy.runtime.manifest import read_manifest

    model, config = load_checkpoint(digits_checkpoint)
    data = parse_data_spec("digits").load("test").subset(64)
    norm = Normalisation.from_dict(config.normalisation)
    manifest = read_manifest(tuned_bundle)
    short = verify_bundle(tuned_bundle, manifest, model, data, norm, min_agreement=1.01)  # a floor nothing meets
    assert not short.passed and "tuned single INT8 weights keep 8 bits: export with --int8-weights pair" in short.hint
    assert verify_bundle(tuned_bundle, manifest, model, data, norm, min_agreement=0.5).hint is None


def test_the_validation_slice_stays_out_of_calibration_under_any_spelling_of_the_data(digits_checkpoint, tmp_path,
                                                                                       monkeypatch):
    from seenn_deploy.data.validation import ValidationSlice, validation_rows
    from seenn_deploy.export import int8_rounding
    from seenn_deploy.export.exporter import ExportSource, export_bundle

    digits = parse_data_spec("digits").load("all")
    np.savez(tmp_path / "digits.npz", x=digits.x, y=digits.y)
    monkeypatch.chdir(tmp_path)
    train = parse_data_spec("npz:digits.npz").load("train")
    held_out = ValidationSlice("npz:digits.npz", 0.25, 0, len(train))
    rows = {tuple(train.x[i].ravel()): i for i in range(len(train))}
    slice_rows = set(validation_rows(len(train), 0.25, 0)[1].tolist())
    seen = []
    real = int8_rounding.calibration_set
    monkeypatch.setattr(int8_rounding, "calibration_set", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model, config = load_checkpoint(digits_checkpoint)
    for spelling in ("npz:digits.npz", f"npz:{tmp_path}/digits.npz", "npz:./digits.npz"):
        source = ExportSource(model=model, timesteps=4, classes=config.classes,
                              normalisation=None, provenance={"data": "npz:digits.npz", "validation": held_out.to_dict()})
        manifest = export_bundle(source, tmp_path / "b.seenn", ExportOptions(
            precision="int8", int8_weights="tuned", calib_data=spelling, calib_samples=64, force=True))
        assert manifest.provenance["int8_tuning"]["held_out"] == held_out.describe()
        calibrated = {rows[tuple(x.ravel())] for x in seen[-1].x}
        assert len(calibrated) == 64 and not calibrated & slice_rows, spelling
