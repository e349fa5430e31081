"""Exit codes a script can rely on: 0 done, 1 a check failed, 2 bad input (one line), 130 interrupted
(one line, nothing half-written), 3 a bug (its traceback)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from seenn_deploy.files import lock_path


@pytest.mark.parametrize("command, args, fragment", [
    ("verify", ["--samples", "-5"], "'--samples': -5 is not in the range x>=1"),
    ("verify", ["--samples", "0"], "'--samples': 0 is not in the range x>=1"),
    ("verify", ["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
    ("verify", ["--min-agreement", "1.5"], "'--min-agreement': 1.5 is not in the range 0<=x<=1"),
    ("verify", ["--max-flip-rate", "nan"], "'--max-flip-rate': 'nan' is not a finite number"),
    ("export", ["--opset", "3"], "'--opset': 3 is not in the range 17<=x<=21"),
    ("export", ["--max-batch", "0"], "'--max-batch': 0 is not in the range x>=1"),
    ("export", ["--temperature", "0"], "'--temperature': 0.0 is not in the range x>0"),
    ("export", ["--temperature", "inf"], "'--temperature': 'inf' is not a finite number"),
    ("export", ["--timesteps", "0"], "'--timesteps' / '-T': 0 is not in the range x>=1"),
    ("build", ["--workspace", "-1"], "'--workspace': -1 is not in the range x>=1"),
    ("verify", ["--no-such-option"], "No such option '--no-such-option'"),
])
def test_out_of_range_options_are_one_line_and_exit_2(command, args, fragment, digits_bundle, tmp_path, run_cli):
    target = ["--out", tmp_path / "b"] if command == "export" else ["--data", "digits"] if command == "verify" else []
    line = run_cli(command, digits_bundle, *target, *args).error()
    assert fragment in line and line.endswith(f"(see `seenn-deploy {command} --help`)"), line
    assert list(tmp_path.iterdir()) == []


def test_verify_on_a_corrupt_graph_is_bad_input_not_a_failed_check(digits_bundle, tmp_path, run_cli):
    bundle = shutil.copytree(digits_bundle, tmp_path / "b.seenn")
    step = bundle / "step.onnx"
    step.write_bytes(step.read_bytes()[: step.stat().st_size // 2])
    line = run_cli("verify", bundle, "--data", "digits").error()
    assert f"{step} is not a valid ONNX graph" in line and "re-export" in line


def test_a_bug_exits_3_with_its_traceback(digits_bundle, monkeypatch, run_cli):
    def broken(bundle):
        raise RuntimeError("a broken invariant")

    monkeypatch.setattr("seenn_deploy.runtime.manifest.read_manifest", broken)
    result = run_cli("verify", digits_bundle, "--data", "digits")
    assert result.code == 3 and "Traceback" in result.err and "RuntimeError: a broken invariant" in result.err
    assert result.err.strip().splitlines()[-1].startswith("internal error: a bug in seenn-deploy")


def test_an_interrupt_that_a_library_wraps_still_ends_as_interrupted(digits_bundle, monkeypatch, run_cli):
    """torch.export catches what a SIGINT interrupts and raises its own error: still exit 130, one line."""
    def interrupted(bundle):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as exc:
            raise RuntimeError("Failed to export the model") from exc

    monkeypatch.setattr("seenn_deploy.runtime.manifest.read_manifest", interrupted)
    result = run_cli("verify", digits_bundle, "--data", "digits")
    assert (result.code, result.err.strip()) == (130, "interrupted")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("after_s", [0.0, 1.0])
def test_sigint_during_export_exits_130_in_one_line_and_leaves_nothing(digits_checkpoint, tmp_path, after_s):
    out = tmp_path / "b.seenn"
    proc = subprocess.Popen([sys.executable, "-m", "seenn_deploy.cli", "export", digits_checkpoint, "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in tmp_path.iterdir()):  # the export has begun writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.strip()) == (130, "interrupted")
    assert list(tmp_path.iterdir()) == [], "no bundle, staging folder or lock file may remain"
    assert not lock_path(out).exists()


PROBE = """
import os, signal, sys, time
from pathlib import Path
from seenn_deploy.cli import cli, main
from seenn_deploy.data.progress import progress_bar
from seenn_deploy.files import write_atomic

class SignalsInDel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100000):  # the handler runs here, inside __del__, whose exceptions Python ignores
            pass

@cli.command("probe")
def probe():
    SignalsInDel()
    if sys.argv[2] == "write":
        write_atomic(Path(sys.argv[1]), lambda p: p.write_text("done"))
    else:  # long work with a progress bar and no write: it must stop at the next update, not run to its end
        bar = progress_bar(100, "working")
        for _ in range(100):
            time.sleep(0.1)
            bar.update()
        bar.close()
        Path(sys.argv[1]).write_text("ran to its end")

main(["probe"])
"""


@pytest.mark.parametrize("work", ["write", "progress"])
def test_sigint_that_python_would_ignore_in_a_callback_still_interrupts(tmp_path, work):
    out = tmp_path / "out.txt"
    proc = subprocess.run([sys.executable, "-c", PROBE, out, work], capture_output=True, text=True, timeout=60)
    last = proc.stderr.strip().splitlines()[-1] if work == "progress" else proc.stderr.strip()  # after the bar
    assert (proc.returncode, last) == (130, "interrupted")
    assert list(tmp_path.iterdir()) == [], "the interrupted command writes nothing"


LIBRARY_INTERRUPT = """
import ctypes
from seenn_deploy.cli import cli, main

@cli.command("probe")
def probe():  # a library runs code through PyRun_* and a SIGINT lands there (as inside torch.export)
    run = ctypes.pythonapi.PyRun_String
    run.restype, run.argtypes = ctypes.py_object, [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
    run(b"raise KeyboardInterrupt", 257, {}, {})

main(["probe"])
"""


def test_an_interrupt_inside_code_a_library_runs_through_python_still_exits_130(tmp_path):
    (tmp_path / "library_interrupt.py").write_text(LIBRARY_INTERRUPT)  # run with -m, as `python -m seenn_deploy.cli`
    proc = subprocess.run([sys.executable, "-m", "library_interrupt"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (proc.returncode, proc.stderr.strip()) == (130, "interrupted"), "not death by SIGINT (-2)"
