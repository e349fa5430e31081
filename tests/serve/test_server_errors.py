"""`seenn-deploy serve` on bad input without a real Triton: a relative --tritonserver, a file that is not a
program, an address that does not resolve or is not this machine's each end in one line naming the option, with
the scratch folder and the server's log closed and gone; IPv6 endpoints print as URLs clients parse."""

import os
import socket
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.serve.server import Installation, Ports, TritonServer, resolve_ports

FREE_PORTS = ("--http-port", 0, "--grpc-port", 0, "--metrics-port", 0, "--address", "127.0.0.1")


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """Where serve's scratch folders go during the test (tempfile's folder), to see that none is left behind."""
    root = tmp_path / "scratch"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def open_paths() -> list[str]:
    """What this process's file descriptors point at (Linux)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used, gone already
            pass
    return paths


def executable(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def assert_nothing_left(scratch_root):
    assert list(scratch_root.iterdir()) == []  # the scratch repository and log are removed
    if sys.platform == "linux":
        assert [p for p in open_paths() if str(scratch_root) in p] == []  # and the log file is closed


def test_a_relative_tritonserver_runs_from_the_current_folder(run_cli, digits_bundle, tmp_path, monkeypatch,
                                                               scratch_root):
    # a stand-in server that fails as Triton does: so it is found and run (not looked for in the scratch folder)
    executable(tmp_path / "fake-tritonserver", b"#!/bin/sh\necho 'error: fake server ran with' \"$1\"\nexit 3\n")
    monkeypatch.chdir(tmp_path)
    error = run_cli("serve", digits_bundle, "--tritonserver", "fake-tritonserver", *FREE_PORTS).error()
    assert "tritonserver exited with code 3 while starting; its log says: fake server ran with --model-repository=" \
        in error, error
    assert_nothing_left(scratch_root)


def test_a_file_that_is_not_a_program_names_the_option(run_cli, digits_bundle, tmp_path, scratch_root):
    binary = executable(tmp_path / "tritonserver", b"not a program\n")  # executable bit, no ELF header, no #!
    error = run_cli("serve", digits_bundle, "--tritonserver", binary, *FREE_PORTS).error()
    assert f"tritonserver {binary} cannot be run (Exec format error)" in error and "--tritonserver FILE" in error
    assert_nothing_left(scratch_root)


def test_a_server_that_failed_to_start_closes_its_log_on_stop(tmp_path):
    binary = executable(tmp_path / "tritonserver", b"not a program\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    server = TritonServer(Installation(binary, str(binary)), tmp_path, ["m"], Ports(1, 2, 3), workdir)
    with pytest.raises(UserError, match="--tritonserver FILE"):
        server.start()
    assert server.stop() is None and not server.alive
    if sys.platform == "linux":
        assert [p for p in open_paths() if str(workdir) in p] == []


@pytest.mark.parametrize("port", [0, 18123])
def test_an_address_that_does_not_resolve_names_the_address(port):
    for address in ("no-such-host.invalid", "bad..name"):
        with pytest.raises(UserError, match=rf"--address '{address}' cannot be resolved") as caught:
            resolve_ports(port, 0, 0, address)
        assert "--http-port" not in str(caught.value)


def test_an_address_of_another_machine_names_the_address_not_the_port():
    for port in (0, 18123):
        with pytest.raises(UserError, match=r"--address 192\.0\.2\.1 cannot be listened on") as caught:
            resolve_ports(port, 0, 0, "192.0.2.1")  # TEST-NET-1: no interface of this machine has it
        assert "--http-port" not in str(caught.value)


def test_ipv6_endpoints_are_urls_with_the_address_in_brackets(tmp_path):
    server = TritonServer(Installation(tmp_path / "tritonserver", "test"), tmp_path, ["m"], Ports(18000, 18001, 18002),
                          tmp_path, address="::1")
    endpoints = server.endpoints()
    assert endpoints == {"http": "http://[::1]:18000", "grpc": "[::1]:18001", "metrics": "http://[::1]:18002/metrics"}
    for url in (endpoints["http"], endpoints["metrics"]):
        parsed = urllib.parse.urlsplit(url)
        assert (parsed.hostname, parsed.port) == ("::1", int(url.split("]:")[1].split("/")[0]))
    ipv4 = TritonServer(Installation(tmp_path / "tritonserver", "test"), tmp_path, ["m"], Ports(1, 2, 3), tmp_path,
                        address="10.1.2.3")
    assert ipv4.endpoints()["http"] == "http://10.1.2.3:1"


def test_ports_resolve_on_an_ipv6_address():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    ports = resolve_ports(0, 0, 0, "::1")
    assert len({ports.http, ports.grpc, ports.metrics}) == 3 and 0 not in (ports.http, ports.grpc, ports.metrics)
