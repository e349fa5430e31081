"""`seenn-deploy export FILE.nir --input-shape C,H,W -T T [--dt DT] [--classes ...]`: the CLI route to export_nir."""

import numpy as np
import pytest

from seenn_deploy.runtime.manifest import read_manifest

nir = pytest.importorskip("nir", reason="nir is not installed: pip install 'seenn-deploy[nir]'")


def write_graph(path) -> None:
    """Input [3] -> Affine -> LIF [2] -> Output, as every NIR exporter writes it."""
    ones = np.ones(2, dtype=np.float32)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])),
               "fc": nir.Affine(weight=np.full((2, 3), 0.7, np.float32), bias=np.zeros(2, np.float32)),
               "lif": nir.LIF(tau=ones * 2.0, r=ones * 2.0, v_leak=0 * ones, v_threshold=ones, v_reset=0 * ones),
               "output": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)
    nir.write(str(path), graph)


def test_a_nir_file_exports_with_its_options(run_cli, tmp_path):
    write_graph(tmp_path / "net.nir")
    result = run_cli("export", tmp_path / "net.nir", "--input-shape", "1,1,3", "-T", "3", "--dt", "1",
                     "--classes", "left,right", "--max-batch", "8", "--out", tmp_path / "b")
    assert result.code == 0, result.err
    manifest = read_manifest(tmp_path / "b")
    assert manifest.classes == ["left", "right"] and manifest.timesteps == 3
    assert manifest.input.shape == (1, 1, 3)


@pytest.mark.parametrize("args, fragment", [
    (["-T", "3"], "a .nir file needs --input-shape C,H,W and --timesteps T"),
    (["--input-shape", "1,1,3", "-T", "3", "--readout", "membrane"], "--readout do not apply to a NIR graph"),
    (["--input-shape", "1,1,3", "-T", "3", "--factory", "m:f"], "--factory do not apply to a NIR graph"),
])
def test_options_a_nir_file_does_not_take_are_refused(args, fragment, run_cli, tmp_path):
    write_graph(tmp_path / "net.nir")
    result = run_cli("export", tmp_path / "net.nir", *args, "--out", tmp_path / "b")
    assert fragment in result.error()
    assert not (tmp_path / "b").exists()
