"""The README's two commands stay true: CI runs the test command, and the main job works."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command_word_for_word():
    _, tests = readme_commands()
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_the_main_job_trains_exports_and_runs_with_early_exit(tmp_path):
    main, _ = readme_commands()
    steps = [shlex.split(part) for part in main.split(" && ") if part.startswith("seenn-deploy ")]
    assert [s[1] for s in steps] == ["train", "export", "run"]
    for step in steps:
        result = subprocess.run([sys.executable, "-m", "seenn_deploy.cli", *step[1:]], cwd=tmp_path,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"accuracy\s+([\d.]+)%", result.stdout).group(1))
    average_t = float(re.search(r"average timesteps ([\d.]+)", result.stdout).group(1))
    assert accuracy > 90.0 and average_t < 4.0, result.stdout
