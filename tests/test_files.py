"""Outputs: refused before the work when they cannot be written, strict JSON, one writer per bundle.

Locks are tested across real processes: flock excludes open files, and the point is that another
process, or a crashed one, behaves.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from seenn_deploy.cli.options import emit_json
from seenn_deploy.errors import UserError
from seenn_deploy.files import (
    BUNDLE, FILE, FOLDER, bundle_lock, check_writable, interrupts_deferred, json_text, lock_path, write_json_atomic,
)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can create files in. Root ignores mode bits, so as root it is made immutable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", folder], capture_output=True).returncode:
        pytest.skip("running as root, where only an immutable folder (chattr +i) refuses writes, and chattr fails here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)


def strict_loads(text):
    """json.loads as strict parsers (JavaScript, Go, jq) read: no NaN, Infinity or -Infinity."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- writability, checked before the work --------------------------------------------------------

def test_writable_locations_pass_and_leave_nothing(tmp_path):
    assert check_writable(tmp_path / "report.json", "--json", FILE) == tmp_path / "report.json"
    check_writable(tmp_path / "runs" / "a" / "b", "--out", FOLDER)  # created with its parents later
    check_writable(tmp_path / "model.seenn", "--out", BUNDLE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, kind, fragment", [
    ("folder", FILE, "--opt {path} is a folder: give a file name"),
    ("file/report.json", FILE, "{tmp}/file is a file, not a folder"),
    ("missing/report.json", FILE, "folder {tmp}/missing does not exist"),
    ("file", FOLDER, "--opt {path} is a file, not a folder"),
    ("file/plots", FOLDER, "{tmp}/file is a file, not a folder"),
    ("file", BUNDLE, "--opt {path} is a file, not a folder"),
    ("missing/model.seenn", BUNDLE, "folder {tmp}/missing does not exist"),
])
def test_impossible_locations_are_refused_with_the_option_named(tmp_path, name, kind, fragment):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    path = tmp_path / name
    with pytest.raises(UserError, match="^--opt ") as info:
        check_writable(path, "--opt", kind)
    assert fragment.format(path=path, tmp=tmp_path) in str(info.value)


@pytest.mark.parametrize("name, kind", [("r.json", FILE), ("plots/latency", FOLDER), (".", FOLDER), ("b.seenn", BUNDLE)])
def test_a_read_only_folder_is_refused(read_only_dir, name, kind):
    with pytest.raises(UserError, match=f"cannot write in {read_only_dir}"):
        check_writable(read_only_dir / name, "--opt", kind)


def test_a_write_no_check_saw_first_still_fails_in_one_line(read_only_dir):
    with pytest.raises(UserError, match=f"cannot write {read_only_dir}/state.json .*: choose a writable location"):
        write_json_atomic(read_only_dir / "state.json", {"epoch": 1})


def test_json_to_a_read_only_folder_fails_before_verify_runs(digits_bundle, read_only_dir, run_cli):
    result = run_cli("verify", digits_bundle, "--data", "digits", "--json", read_only_dir / "verify.json")
    assert "--json" in result.error() and "cannot write in" in result.error()
    assert result.out == ""  # refused before the comparison, not after it


def test_export_to_a_read_only_folder_fails_before_the_export(digits_checkpoint, read_only_dir, run_cli):
    line = run_cli("export", digits_checkpoint, "--out", read_only_dir / "b.seenn").error()
    assert "--out" in line and "cannot write in" in line
    assert list(read_only_dir.iterdir()) == []


# --- strict JSON ---------------------------------------------------------------------------------

def test_non_finite_numbers_are_written_as_null():
    data = {"alpha": -math.inf, "curve": (math.nan, 0.5), "np": np.float32("inf"), "array": np.array([1.0, np.inf]),
            "count": np.int64(3), "nested": [{"x": math.inf}], "text": "Infinity"}
    assert strict_loads(json_text(data)) == {"alpha": None, "curve": [None, 0.5], "np": None, "array": [1.0, None],
                                             "count": 3, "nested": [{"x": None}], "text": "Infinity"}


def test_reports_and_records_are_strict_json(tmp_path, capsys):
    report = {"table": [{"alpha": -math.inf, "accuracy": 0.9}]}
    write_json_atomic(tmp_path / "record.json", report)
    emit_json(tmp_path / "report.json", report)
    emit_json("-", report)
    expected = {"table": [{"alpha": None, "accuracy": 0.9}]}
    assert strict_loads((tmp_path / "record.json").read_text()) == expected
    assert strict_loads((tmp_path / "report.json").read_text()) == expected
    assert strict_loads(capsys.readouterr().out) == expected


# --- one writer per bundle -----------------------------------------------------------------------

HOLD = """
import sys, time
from seenn_deploy.files import bundle_lock
with bundle_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_by_another_process(bundle, command="export"):
    """A separate process holding `bundle`'s lock until the block ends (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(bundle), command], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_writer_fails_at_once_naming_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    bundle = tmp_path / "model.seenn"
    with lock_held_by_another_process(bundle) as holder:
        with pytest.raises(UserError, match=rf"model.seenn is being written by another seenn-deploy process "
                                            rf"\(pid {holder.pid}, export\); wait for it to finish$"):
            with bundle_lock(bundle, "build"):
                pass
        assert lock_path(bundle).exists()  # the loser leaves the holder's file alone
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with bundle_lock(tmp_path / "elsewhere" / ".." / "model.seenn", "build") as lock:  # the same lock
            assert lock == lock_path(bundle) and lock.read_text() == f"{os.getpid()} build\n"
    assert list(tmp_path.iterdir()) == []  # released and removed


def test_export_and_build_refuse_a_bundle_another_process_writes(digits_checkpoint, digits_bundle, tmp_path, run_cli,
                                                                 no_tensorrt):
    out = tmp_path / "b.seenn"
    with lock_held_by_another_process(out) as holder:
        line = run_cli("export", digits_checkpoint, "--out", out).error()
        assert f"is being written by another seenn-deploy process (pid {holder.pid}, export)" in line
        assert line.endswith("wait for it or choose another --out")
        assert [p.name for p in tmp_path.iterdir()] == [lock_path(out).name]
    bundle = shutil.copytree(digits_bundle, tmp_path / "built.seenn")
    with lock_held_by_another_process(bundle, "calibrate") as holder:
        line = run_cli("build", bundle).error()
        assert f"(pid {holder.pid}, calibrate); wait for it to finish" in line
        assert not (bundle / "engines").exists()


def test_an_interrupt_during_the_bundle_swap_is_delivered_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("both renames")
    assert done == ["both renames"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_swap_that_fails_halfway_puts_the_old_folder_back(tmp_path, monkeypatch):
    from pathlib import Path

    from seenn_deploy.files import staged_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    rename = Path.rename

    def failing(self, target):  # the new folder cannot take the name (e.g. another process made `out` meanwhile)
        if self.name.startswith(".out.partial-"):
            raise OSError(39, "Directory not empty")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        with staged_folder(out) as staging:
            (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging or old folder is left beside it"
    assert (out / "old.txt").read_text() == "old" and not (out / "new.txt").exists()
