"""`train-ann` then `convert`, and the converted checkpoint through export, verify, calibrate and run like any other."""

from __future__ import annotations

import json

from seenn_deploy.snn.checkpoint import read_config


def test_train_ann_convert_and_deploy_on_digits(run_cli, tmp_path):
    ann, snn, bundle = tmp_path / "ann", tmp_path / "snn", tmp_path / "b.seenn"
    trained = run_cli("train-ann", "--arch", "spiking_cnn", "--data", "digits", "--epochs", "3", "--batch-size", "32",
                      "--levels", "4", "--lambda-init", "4", "--out", ann, "--quiet")
    assert trained.code == 0, trained.err
    assert "an ANN with qcfs activations" in trained.out and "val T=1" in trained.out
    ann_config = read_config(ann)
    assert ann_config.timesteps == 1 and ann_config.model["neuron"]["kind"] == "qcfs"
    assert ann_config.model["neuron"]["levels"] == 4
    ann_accuracy = ann_config.metrics["validation"]["accuracy_per_timestep"][0]
    assert ann_accuracy > 0.7, ann_accuracy

    report = tmp_path / "convert.json"
    converted = run_cli("convert", ann, "--out", snn, "-T", "16", "--json", report)
    assert converted.code == 0, converted.err
    config = read_config(snn)
    assert config.timesteps == 16 and config.validation == ann_config.validation
    assert config.model["fold_bn"] is True and config.model["neuron"]["kind"] == "if"
    thresholds = json.loads(report.read_text())["thresholds"]
    assert config.model["neurons"] == {k: {"v_threshold": v, "v_init": v / 2} for k, v in thresholds.items()}

    evaluated = run_cli("evaluate", snn, "--split", "val", "--quiet", "--json", tmp_path / "eval.json")
    assert evaluated.code == 0, evaluated.err
    per_t = json.loads((tmp_path / "eval.json").read_text())["accuracy_per_timestep"]
    assert per_t[-1] > ann_accuracy - 0.05, (per_t, ann_accuracy)  # T = 16 = 4 L is close to the ANN
    assert per_t[-1] > per_t[0]

    assert run_cli("export", snn, "--out", bundle).code == 0
    verified = run_cli("verify", bundle, "--data", "digits", "--samples", "64")
    assert verified.code == 0, verified.out + verified.err
    calibrated = run_cli("calibrate", bundle, "--target-drop", "1", "--no-plots", "--quiet", "--json",
                         tmp_path / "calib.json")
    assert calibrated.code == 0, calibrated.err
    calib = json.loads((tmp_path / "calib.json").read_text())
    assert calib["choice"]["samples"] == 144  # the ANN's validation slice of digits' 1,437 training rows
    ran = run_cli("run", bundle, "--data", "digits", "--samples", "64")
    assert ran.code == 0, ran.err


def test_convert_refuses_an_snn_and_a_relu_network_without_relu(run_cli, tmp_path):
    snn, relu = tmp_path / "snn", tmp_path / "relu"
    common = ("--arch", "spiking_cnn", "--data", "digits", "--epochs", "1", "--max-steps", "1", "--quiet")
    assert run_cli("train", *common, "-T", "2", "--out", snn).code == 0
    assert "already an SNN" in run_cli("convert", snn, "--out", tmp_path / "x").error()
    assert run_cli("train-ann", *common, "--activation", "relu", "--out", relu).code == 0
    assert "pass --relu" in run_cli("convert", relu, "--out", tmp_path / "y").error()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert run_cli("convert", relu, "--out", tmp_path / "y", "--relu", "--samples", "100").code == 0
