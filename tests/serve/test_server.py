"""`seenn-deploy serve` with a real Triton Inference Server (the one nvidia-pytriton ships): 2,000 requests from 8
concurrent tritonclient clients over HTTP and gRPC answered as the local runtime answers them, counted by Triton's
metrics, and a clean stop on SIGTERM and SIGINT (the server gone, no port left bound)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.serve.server import find_installation, port_free

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http,grpc] (the triton extra)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[http,grpc] (the triton extra)")
try:
    find_installation()
except UserError as exc:
    pytest.skip(f"no tritonserver to run: {exc}", allow_module_level=True)

REQUESTS, CLIENTS, EXIT = 2000, 8, "confidence:0.9"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "triton_client.py"


def start_serve(bundle, tmp_path, *options):
    """`seenn-deploy serve BUNDLE` in a child process on free ports; (process, its --json summary once ready)."""
    summary = tmp_path / "serve.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "seenn_deploy.cli", "serve", str(bundle), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--address", "127.0.0.1", "--json", str(summary), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not summary.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"serve did not come up (code {process.returncode}):\n{out}\n{err}")
        time.sleep(0.1)
    return process, json.loads(summary.read_text())


def end(process):
    """After a failure: the orderly stop if it comes quickly (the scratch folder goes too), else SIGKILL (the
    server dies with serve)."""
    process.terminate()
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def stop_serve(process, summary, sig):
    """Send `sig`; the command ends with code 0, the server's process is gone and every port is free."""
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, (out, err)
    assert "stopped: tritonserver exited and its ports are free" in out
    with pytest.raises(ProcessLookupError):
        os.kill(summary["pid"], 0)
    assert not Path(summary["repository"]).exists()  # the scratch repository went with the server
    for port in summary["ports"].values():
        assert port_free(port, "127.0.0.1"), port


def one_client(protocol, url, images):
    """Send each image as its own request, one after another; (prediction, confidence, timesteps) per image."""
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url)
    answers = []
    try:
        for image in images:
            tensor = module.InferInput("x", [1, *image.shape], "FP32")
            tensor.set_data_from_numpy(image[None])
            result = client.infer("seenn", [tensor])
            answers.append((int(result.as_numpy("prediction")[0, 0]), float(result.as_numpy("confidence")[0, 0]),
                            int(result.as_numpy("timesteps")[0, 0])))
    finally:
        client.close()
    return answers


def metric(url, name, model="seenn"):
    """The Prometheus counter `name` of `model` summed over its other labels (None: not reported)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = [float(v) for labels, v in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE)
              if f'model="{model}"' in labels]
    return sum(values) if values else None


def test_serve_answers_2000_concurrent_requests_as_the_local_runtime(digits_bundle, tmp_path):
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.runtime.api import Runtime

    pool = parse_data_spec("digits").load("test").x
    images = pool[np.arange(REQUESTS) % len(pool)]
    with Runtime.from_bundle(digits_bundle, exit=EXIT, mode="slots", batch=8) as runtime:
        local = runtime.infer(pool)
    assert len({r.timesteps for r in local}) > 1  # the early exit is exercised, not a fixed T

    process, summary = start_serve(digits_bundle, tmp_path, "--max-batch", "8", "--instances", "2", "--exit", EXIT)
    try:
        endpoints = summary["endpoints"]
        urls = {"http": endpoints["http"].removeprefix("http://"), "grpc": endpoints["grpc"]}
        shares = [(("http", "grpc")[c % 2], np.arange(c, REQUESTS, CLIENTS)) for c in range(CLIENTS)]
        with ThreadPoolExecutor(CLIENTS) as clients:
            answers = list(clients.map(lambda share: one_client(share[0], urls[share[0]], images[share[1]]), shares))
        served = {}
        for (_, rows), got in zip(shares, answers):
            served.update(zip(rows.tolist(), got))
        assert len(served) == REQUESTS
        for row, (prediction, confidence, timesteps) in served.items():
            expected = local[row % len(pool)]
            assert (prediction, timesteps) == (expected.prediction, expected.timesteps), row
            assert confidence == pytest.approx(expected.confidence, rel=1e-5, abs=1e-6), row

        deadline = time.monotonic() + 10
        while metric(endpoints["metrics"], "nv_inference_request_success") != REQUESTS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(endpoints["metrics"], "nv_inference_request_success") == REQUESTS
        assert metric(endpoints["metrics"], "nv_inference_count") == REQUESTS  # one sample per request
        assert metric(endpoints["metrics"], "nv_inference_request_failure") in (0, None)  # 2.51 reports none
        assert metric(endpoints["metrics"], "nv_inference_exec_count") <= REQUESTS
    except BaseException:
        end(process)
        raise
    stop_serve(process, summary, signal.SIGTERM)


def test_the_client_example_a_request_of_several_samples_and_a_stop_on_ctrl_c(digits_bundle, tmp_path):
    from seenn_deploy.data import parse_data_spec
    from seenn_deploy.runtime.api import Runtime

    process, summary = start_serve(digits_bundle, tmp_path, "--max-batch", "4")
    try:
        images = parse_data_spec("digits").load("test").x[:3]
        client = httpclient.InferenceServerClient(summary["endpoints"]["http"].removeprefix("http://"))
        tensor = httpclient.InferInput("x", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("seenn", [tensor])
        with Runtime.from_bundle(digits_bundle, mode="slots", batch=4) as runtime:
            local = runtime.infer(images)
        assert result.as_numpy("prediction").tolist() == [[r.prediction] for r in local]
        assert result.as_numpy("timesteps").tolist() == [[r.timesteps] for r in local]
        for protocol in ("http", "grpc"):
            url = summary["endpoints"][protocol].removeprefix("http://")
            example = subprocess.run([sys.executable, str(EXAMPLE), "--protocol", protocol, "--url", url,
                                      "--samples", "3"], capture_output=True, text=True, timeout=60)
            assert example.returncode == 0, example.stderr
            assert re.search(r"^sample 2: prediction \d \(label \d\), confidence 0\.\d+, \d timesteps$",
                             example.stdout, re.MULTILINE), example.stdout
    except BaseException:
        end(process)
        raise
    stop_serve(process, summary, signal.SIGINT)


def test_a_port_in_use_is_refused_before_anything_starts(run_cli, digits_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = run_cli("serve", digits_bundle, "--address", "127.0.0.1", "--http-port", port).error()
    assert f"--http-port {port} is in use" in error


def test_a_missing_server_names_what_to_install(run_cli, digits_bundle, tmp_path, monkeypatch):
    error = run_cli("serve", digits_bundle, "--tritonserver", tmp_path / "tritonserver").error()
    assert "is not an executable file" in error
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # as if nvidia-pytriton were not installed
    with pytest.raises(UserError, match=r"seenn-deploy\[triton\]"):
        find_installation()


def test_a_model_triton_cannot_load_ends_serve_with_its_reason(run_cli, digits_bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken.seenn"
    shutil.copytree(digits_bundle, broken)
    (broken / "step.onnx").write_bytes(b"not an onnx graph")
    error = run_cli("serve", broken, "--http-port", 0, "--grpc-port", 0, "--metrics-port", 0).error()
    assert "tritonserver exited with code" in error and "INVALID_PROTOBUF" in error, error
    scratch = re.search(r"(/\S+/seenn-triton-[^/\s]+)/", error).group(1)
    assert not Path(scratch).exists()  # the scratch repository is gone with the server
