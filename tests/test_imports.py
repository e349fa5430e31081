"""Without the optional heavy packages, every module imports and the CLI helps and fails cleanly."""

import pkgutil
import subprocess
import sys

import seenn_deploy

BLOCKED = ["torch", "tensorrt", "cuda", "pynvml", "spikingjelly", "snntorch", "onnx", "onnxscript", "onnxruntime",
           "safetensors", "tqdm", "PIL", "matplotlib"]

BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True)


def torch_free_modules() -> list[str]:
    """Modules that must import without torch: everything outside the torch-side packages."""
    torch_side = ("seenn_deploy.snn", "seenn_deploy.train", "seenn_deploy.export", "seenn_deploy.convert",
                  "seenn_deploy.profile.energy")
    names = [m.name for m in pkgutil.walk_packages(seenn_deploy.__path__, "seenn_deploy.")]
    return [n for n in names if not n.startswith(torch_side) and not n.endswith(".__main__")]


def test_modules_import_without_heavy_packages():
    modules = torch_free_modules()
    assert {"seenn_deploy.cli", "seenn_deploy.data", "seenn_deploy.runtime.api"} <= set(modules)
    result = run_blocked("import importlib\nfor m in %r: importlib.import_module(m)\nprint('ok')" % modules)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_cli_help_and_a_clear_error_without_torch():
    result = run_blocked("from seenn_deploy.cli import main\nmain(['--help'])")
    assert result.returncode == 0 and "train" in result.stdout, result.stderr
    result = run_blocked(
        "from seenn_deploy.cli import main\n"
        "main(['train', '--arch', 'spiking_cnn', '--data', 'digits', '-T', '2', '--epochs', '1', '--out', 'x'])"
    )
    assert result.returncode == 2, result.stderr
    assert "torch is not installed" in result.stderr and "pip install torch==2.13.0" in result.stderr
    assert "Traceback" not in result.stderr
