"""Commands that serve a bundle past one process: `triton` (a model repository) and `serve` (a running Triton)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import COUNT, POSITIVE, echo, emit_json, json_option, writable_bundle
from seenn_deploy.errors import UserError

PORT = click.IntRange(0, 65535)
EXIT_METAVAR = "fixed:T|confidence[:A][@T_CAP]|policy|policy+confidence[:A]"


def repository_options(function):
    """The options `triton` and `serve` share: how the repository serves the bundle."""
    options = [
        click.option("--max-batch", type=COUNT, default=32, show_default=True,
                     help="Triton's max_batch_size for every model, and the runtime's slots in the Python model."),
        click.option("--instances", type=COUNT, default=1, show_default=True,
                     help="Instances per model (each Python-model instance runs its own runtime)."),
        click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
                     help="ort: CPU instances on ONNX Runtime. trt: GPU instances, the Python model on the bundle's "
                          "TensorRT engines, the step model on ONNX Runtime's TensorRT execution provider."),
        click.option("--exit", "exit_spec", default=None, metavar=EXIT_METAVAR,
                     help="The Python model's exit policy (default: the bundle's)."),
        click.option("--threads", type=COUNT, default=None,
                     help="ONNX Runtime threads per Python-model instance (default: ONNX Runtime's)."),
        click.option("--name", default="seenn", show_default=True,
                     help="Model name of the Python model; the step model is NAME_step, the encoder NAME_encoder."),
        click.option("--step-model/--no-step-model", default=True, show_default=True,
                     help="Also the stateful step model (and the encoder's) for Triton's ONNX Runtime backend; serve "
                          "loads it only where the server has that backend."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _options(name, max_batch, instances, backend, exit_spec, threads, step_model=True):
    from seenn_deploy.serve.model_repository import RepositoryOptions

    return RepositoryOptions(name=name, max_batch=max_batch, instances=instances, backend=backend, exit=exit_spec,
                             threads=threads, step_model=step_model)


@cli.command("triton")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, callback=writable_bundle,
              help="Model repository folder to write.")
@repository_options
@click.option("--force", is_flag=True, help="Replace a model repository seenn-deploy wrote at --out.")
@json_option
def triton_cmd(bundle, out, max_batch, instances, backend, exit_spec, threads, name, step_model, force,
               json_path) -> None:
    """Write a Triton model repository for a bundle: a Python-backend model running the runtime, and the step
    graph as a stateful model (sequence batcher, implicit state)."""
    from seenn_deploy.serve.model_repository import write_model_repository

    options = _options(name, max_batch, instances, backend, exit_spec, threads, step_model)
    repository = write_model_repository(bundle, out, options, force=force)
    roles = [f"{repository.python_model} (python: one request per sample)"]
    if repository.step_model:
        roles.append(f"{repository.step_model} (onnxruntime: one timestep per request, sequence batcher)")
    if repository.encoder_model:
        roles.append(f"{repository.encoder_model} (onnxruntime: encoder, once per sample)")
    echo(f"model repository written to {out}: {'; '.join(roles)}")
    echo(f"run it: tritonserver --model-repository {out} (the server's Python needs seenn-deploy installed), "
         f"or `seenn-deploy serve {bundle}`")
    emit_json(json_path, {"repository": str(out), "models": repository.models, "python_model": repository.python_model,
                          "step_model": repository.step_model, "encoder_model": repository.encoder_model,
                          "bundle": repository.bundle})


@cli.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--http-port", type=PORT, default=8000, show_default=True, help="HTTP endpoint (0: a free port).")
@click.option("--grpc-port", type=PORT, default=8001, show_default=True, help="gRPC endpoint (0: a free port).")
@click.option("--metrics-port", type=PORT, default=8002, show_default=True,
              help="Prometheus metrics endpoint (0: a free port).")
@click.option("--address", default="0.0.0.0", show_default=True, help="Address the endpoints listen on.")
@repository_options
@click.option("--tritonserver", "binary", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The tritonserver binary (default: one on PATH, else the one nvidia-pytriton ships).")
@click.option("--timeout", type=POSITIVE, default=120.0, show_default=True,
              help="Seconds to wait for the server and its models to be ready.")
@json_option
def serve_cmd(bundle, http_port, grpc_port, metrics_port, address, max_batch, instances, backend, exit_spec, threads,
              name, step_model, binary, timeout, json_path) -> None:
    """Serve a bundle with Triton Inference Server until SIGINT (Ctrl-C) or SIGTERM.

    Writes the model repository to a scratch folder, starts tritonserver on it, waits until every model is
    ready, prints the endpoints (and writes them with --json once ready), and on the signal stops the server
    and removes the scratch folder.
    """
    from seenn_deploy.serve.launch import serve_bundle
    from seenn_deploy.serve.server import find_installation, resolve_ports, wait_ports_free

    installation = find_installation(binary)
    ports = resolve_ports(http_port, grpc_port, metrics_port, address)
    options = _options(name, max_batch, instances, backend, exit_spec, threads, step_model)
    stop = threading.Event()
    with _stopping_on_signals(stop):
        with serve_bundle(bundle, options, installation, ports, address, timeout, cancel=stop) as served:
            summary = served.summary()
            for note in served.notes:
                echo(f"note: {note}")
            echo(f"tritonserver ({installation.source}) serves {bundle}: models {', '.join(served.server.models)}")
            for kind, url in summary["endpoints"].items():
                echo(f"  {kind:8s} {url}")
            echo("stop it with Ctrl-C or SIGTERM")
            emit_json(json_path, summary)
            while not stop.wait(0.5):
                if not served.server.alive:
                    raise UserError(f"tritonserver exited on its own (code {served.server.process.returncode}); "
                                    f"its log says: {served.server.log_tail()}")
    bound = wait_ports_free(ports, address)
    if bound:
        raise UserError(f"tritonserver exited but ports {', '.join(map(str, bound))} are still bound: something else "
                        "holds them now")
    echo("stopped: tritonserver exited and its ports are free")


class _stopping_on_signals:
    """Within the block, SIGINT and SIGTERM set `event` (the server then stops in order) instead of ending the
    process; the previous handlers come back after. Further signals change nothing: the stop is under way, and
    bounded (SIGTERM, then SIGKILL after server.STOP_TIMEOUT_S), and cutting it short would orphan the server."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not self.event.is_set():
            self.event.set()
            click.echo("stopping tritonserver (it finishes what is in flight)", err=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup, a background job: the caller's choice
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
