"""Starting and stopping a real Triton Inference Server (`tritonserver`) on a model repository.

Where the binary comes from: `--tritonserver FILE`, else a `tritonserver` on PATH (a full install, e.g.
NVIDIA's container, with the ONNX Runtime and TensorRT backends), else the one the `nvidia-pytriton`
wheel ships (the Python backend only; its libraries in `nvidia_pytriton.libs/`).

The Python backend runs each model in a stub process that embeds a Python interpreter. The wheel ships
one stub per Python version; the stub finds its interpreter's home as `python3` does, through PATH, so
the server gets this interpreter's folder first on PATH (a venv's site-packages then come with it, as
pytriton does it) and the folder of its libpython first on LD_LIBRARY_PATH (the stub links libpython
dynamically; without that it loads the system's, whose standard library may differ).

The server runs in its own session: a Ctrl-C in the terminal reaches `serve`, which stops it with
SIGTERM (Triton drains what is in flight), then SIGKILLs the session's processes that are left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from seenn_deploy.errors import InternalError, UserError

INSTALL_HINT = ("pip install 'seenn-deploy[triton]' (the nvidia-pytriton wheel ships a tritonserver with the Python "
                "backend), or put a tritonserver on PATH (NVIDIA's tritonserver container), or pass --tritonserver FILE")
STOP_TIMEOUT_S = 20.0  # SIGTERM, then this long for Triton to drain and exit, then SIGKILL
LOG_TAIL_LINES = 25
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # readiness probes never go through a proxy


@dataclass(frozen=True)
class Installation:
    """A tritonserver binary and what it needs to run here.

    backends: folder of the backends to pass as --backend-directory (None: the binary's own default).
    libraries: folders to add to LD_LIBRARY_PATH. python_stub: this Python's backend stub, placed
    into a private backends folder beside the Python backend (pytriton's wheel keeps them apart).
    """

    binary: Path
    source: str
    backends: Path | None = None
    libraries: tuple[Path, ...] = ()
    python_stub: Path | None = None

    def backend_dir(self) -> Path | None:
        """Where the backends this server loads live (the default for a standard install)."""
        if self.backends is not None:
            return self.backends
        return self.binary.resolve().parent.parent / "backends"  # /opt/tritonserver/{bin,backends}

    def has_backend(self, name: str) -> bool:
        """Whether the server can load models of backend `name` ('python', 'onnxruntime', 'tensorrt')."""
        folder = self.backend_dir()
        return folder is not None and (folder / name).is_dir()


def _pytriton_installation() -> Installation | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise UserError(f"nvidia-pytriton ships Python backend stubs for Python {', '.join(shipped)}, not for this "
                        f"Python {version}: run seenn-deploy under one of those")
    libraries = tuple(p for p in (root.parent / "nvidia_pytriton.libs", dist / "external_libs") if p.is_dir())
    return Installation(binary=binary, source=f"nvidia-pytriton ({binary})", backends=dist / "backends",
                        libraries=libraries, python_stub=stub)


def find_installation(binary: Path | None = None) -> Installation:
    """The tritonserver to run: `binary`, else one on PATH, else nvidia-pytriton's; UserError naming the install."""
    if binary is not None:
        binary = Path(binary)
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise UserError(f"--tritonserver {binary} is not an executable file")
        binary = Path(os.path.abspath(binary))  # the server runs in its scratch folder: a relative path would not hold
        return Installation(binary=binary, source=str(binary))
    on_path = shutil.which("tritonserver")
    if on_path:
        return Installation(binary=Path(on_path), source=f"PATH ({on_path})")
    found = _pytriton_installation()
    if found is None:
        raise UserError(f"no Triton Inference Server found: {INSTALL_HINT}")
    return found


def libpython_folder() -> Path | None:
    """The folder holding this interpreter's shared libpython, where it has one (None: a static build)."""
    name = sysconfig.get_config_var("INSTSONAME") or ""
    folder = sysconfig.get_config_var("LIBDIR") or ""
    if name and folder and (Path(folder) / name).is_file():
        return Path(folder)
    return None


def check_libpython() -> None:
    """UserError unless the Python backend stub can load a libpython of this interpreter's version."""
    if libpython_folder() is not None:
        return
    import ctypes.util

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if ctypes.util.find_library(f"python{version}") is None:
        raise UserError(f"Triton's Python backend stub loads libpython{version}.so, and this Python has none (a "
                        f"static build): install it (Debian/Ubuntu: apt install libpython{version}) or use a Python "
                        "built with --enable-shared")


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    def items(self) -> list[tuple[str, int]]:
        return [("http", self.http), ("grpc", self.grpc), ("metrics", self.metrics)]


def address_family(address: str) -> socket.AddressFamily:
    """The socket family a server listening on `address` binds with; UserError naming --address where it does not
    resolve (a mistyped host name)."""
    try:
        found = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name no DNS label can spell ('a..b')
        why = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise UserError(f"--address {address!r} cannot be resolved ({why}): give an address of this machine, e.g. "
                        "0.0.0.0 (every interface), 127.0.0.1 (this machine only) or ::1") from None
    return found[0][0]


def _bind_probe(address: str, port: int) -> socket.socket:
    sock = socket.socket(address_family(address), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
    try:
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def port_free(port: int, address: str = "0.0.0.0") -> bool:
    """Whether a server could bind `port` on `address` now."""
    try:
        _bind_probe(address, port).close()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    return True


def resolve_ports(http: int, grpc: int, metrics: int, address: str = "0.0.0.0") -> Ports:
    """Ports to start on: 0 becomes a free port; a given port already bound is a UserError naming its option, an
    address that does not resolve or is not this machine's one naming --address."""
    address_family(address)  # a name that does not resolve is the address's fault, not a port's
    chosen: dict[str, int] = {}
    held = []
    try:
        for option, port in (("--http-port", http), ("--grpc-port", grpc), ("--metrics-port", metrics)):
            if port and port in chosen.values():
                raise UserError(f"{option} {port} is given to two endpoints: give each its own port (0: a free one)")
            try:
                sock = _bind_probe(address, port)
            except OSError as exc:
                if port == 0 or exc.errno == errno.EADDRNOTAVAIL:  # any port would fail: the address is at fault
                    raise UserError(f"--address {address} cannot be listened on ({exc.strerror}): give an address "
                                    "of this machine, e.g. 0.0.0.0 (every interface) or 127.0.0.1") from None
                why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
                raise UserError(f"{option} {port} {why} on {address}: stop what holds it, or choose another "
                                "port (0: a free one)") from None
            held.append(sock)  # held until all are chosen, so three free ports differ
            port = sock.getsockname()[1]
            chosen[option] = port
    finally:
        for sock in held:
            sock.close()
    return Ports(chosen["--http-port"], chosen["--grpc-port"], chosen["--metrics-port"])


class TritonServer:
    """One tritonserver process on a repository; start() then wait_ready(), stop() (or use it as a context manager).

    On Linux the server dies with the thread that called start() (so call it from one that outlives the server),
    also when this process is SIGKILLed; stop() is the orderly way.

    models: names to load (explicit model control); the server is ready once every one is.
    workdir: an empty folder for the log and the private backends folder (gone with the caller's cleanup).
    """

    def __init__(self, installation: Installation, repository: Path, models: list[str], ports: Ports,
                 workdir: Path, address: str = "0.0.0.0") -> None:
        self.installation = installation
        self.repository = Path(repository).resolve()
        self.models = list(models)
        self.ports = ports
        self.address = address
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self._log = None
        self._backends: Path | None = installation.backends

    # -- what it serves --------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The host part of the endpoints' URLs: an IPv6 address in brackets (RFC 3986), as clients parse it."""
        if self.address in ("0.0.0.0", "::", "127.0.0.1"):
            return "localhost"
        return f"[{self.address}]" if ":" in self.address else self.address

    def endpoints(self) -> dict[str, str]:
        """URLs of the HTTP and gRPC inference endpoints and of the Prometheus metrics."""
        return {"http": f"http://{self.host}:{self.ports.http}", "grpc": f"{self.host}:{self.ports.grpc}",
                "metrics": f"http://{self.host}:{self.ports.metrics}/metrics"}

    # -- starting ----------------------------------------------------------------------------
    def _prepare_backends(self) -> None:
        """pytriton's layout: a backends folder in workdir with this Python's stub beside the Python backend."""
        inst = self.installation
        if inst.python_stub is None or inst.backends is None:
            return
        folder = self.workdir / "backends"
        for backend in inst.backends.iterdir():
            if backend.is_dir() and not backend.name.startswith("__"):
                (folder / backend.name).mkdir(parents=True)
                for item in backend.iterdir():
                    if not item.name.startswith("__"):
                        (folder / backend.name / item.name).symlink_to(item)
        (folder / "python" / "triton_python_backend_stub").symlink_to(inst.python_stub)
        self._backends = folder

    def command(self) -> list[str]:
        args = [str(self.installation.binary), f"--model-repository={self.repository}",
                "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models),
                f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}", f"--http-address={self.address}",
                f"--grpc-address={self.address}", f"--metrics-address={self.address}",
                "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
                f"--exit-timeout-secs={int(STOP_TIMEOUT_S) - 5}",
                # a shared-memory prefix of our own: two servers on one machine must not share the stubs' regions
                f"--backend-config=python,shm-region-prefix-name=seenn{os.getpid()}x{self.ports.grpc}x"]
        if self._backends is not None:
            args.append(f"--backend-directory={self._backends}")
        return args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        python_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([python_bin, env.get("PATH", "")])  # the stub's interpreter finds its home here
        libpython = libpython_folder()
        libraries = [str(p) for p in ([libpython] if libpython else []) + list(self.installation.libraries)]
        if env.get("LD_LIBRARY_PATH"):
            libraries.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        return env

    def start(self) -> None:
        if self.process is not None:
            raise InternalError("TritonServer.start() called twice")
        if self.installation.python_stub is not None:
            check_libpython()
        self._prepare_backends()
        command = self.command()
        self._log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                            stderr=subprocess.STDOUT, env=self.environment(), cwd=self.workdir,
                                            start_new_session=True,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except BaseException as exc:
            self._close_log()
            if isinstance(exc, OSError):  # not a program (Exec format error), a missing interpreter, a noexec mount
                raise UserError(f"tritonserver {self.installation.binary} cannot be run ({exc.strerror or exc}): "
                                "pass a Triton Inference Server binary with --tritonserver FILE") from None
            raise

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """What the log says went wrong, on one line: from Triton's last `error:` line on, else its error lines
        (E...), else its last `lines` lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        last_error = max((i for i, line in enumerate(text) if line.startswith("error:")), default=None)
        if last_error is not None:
            text = text[last_error:last_error + lines]
            text[0] = text[0].removeprefix("error:")
        else:
            text = [line for line in text if re.match(r"E\d{4} ", line)][-lines:] or text[-lines:]
        return " ".join(" ".join(text).split())

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.http}/v2/health/ready" if self.host == "localhost" else \
            f"{self.endpoints()['http']}/v2/health/ready"
        try:
            with _DIRECT.open(url, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float, cancel: threading.Event | None = None) -> None:
        """Block until the server and every model in `models` is ready; UserError with the log's end if it exits
        or `timeout` seconds pass first, KeyboardInterrupt if `cancel` is set meanwhile (a signal while starting)."""
        deadline = time.monotonic() + timeout
        while True:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            code = self.process.poll() if self.process is not None else None
            if code is not None:
                raise UserError(f"tritonserver exited with code {code} while starting; its log says: {self.log_tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise UserError(f"tritonserver was not ready after {timeout:.0f} s (models {', '.join(self.models)}): "
                                f"give it longer with --timeout; its log says: {self.log_tail()}")
            time.sleep(0.2)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the server, wait for it, SIGKILL what is left of its session; the exit code (None: never started)."""
        process = self.process
        if process is None:  # never started, or its start failed: only the log to close
            self._close_log()
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            _end_group(process.pid)  # stubs the server left behind (it waits for them, unless it was killed)
        finally:
            self._close_log()
        return process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it ends (prctl PR_SET_PDEATHSIG), so a
    `serve` killed with SIGKILL leaves no server behind (its stubs follow: they watch the server)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_ports_free(ports: Ports, address: str = "0.0.0.0", timeout: float = 5.0) -> list[int]:
    """Wait until every port of `ports` can be bound again; the ports still bound after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        bound = [port for _, port in ports.items() if not port_free(port, address)]
        if not bound or time.monotonic() > deadline:
            return bound
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group `pgid` (the server's own session); False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pgid reused by another user's group: nothing of ours is left in it
        return False
    return True


def _end_group(pgid: int, grace: float = 3.0) -> None:
    """Wait up to `grace` s for the server's session to empty, then SIGKILL the rest."""
    deadline = time.monotonic() + grace
    while _signal_group(pgid, 0):
        if time.monotonic() > deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(0.1)
            return
        time.sleep(0.05)


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed when the block ends however it ends."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
