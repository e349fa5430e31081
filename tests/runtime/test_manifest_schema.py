"""manifest.json is checked when read: the shipped JSON Schema (types, ranges, lengths), the cross-field rules,
strict JSON; each failure a UserError naming the field and the bad value, never a traceback or a silent load."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from seenn_deploy.errors import UserError
from seenn_deploy.runtime.manifest import (
    ACCUMULATIONS, MANIFEST, MAX_BATCH, MAX_TIMESTEPS, PRECISIONS, Manifest, read_manifest, write_manifest,
)
from seenn_deploy.runtime.schema import ENGINE_SCHEMA, MANIFEST_SCHEMA, schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def valid(digits_bundle) -> dict:
    return json.loads((digits_bundle / MANIFEST).read_text())


@pytest.fixture
def bundle(digits_bundle, tmp_path):
    return shutil.copytree(digits_bundle, tmp_path / "b.seenn")


def edited(d: dict, path: str, value) -> dict:
    """A deep copy of d with d[path] = value; path like 'input.std' or 'states.0.shape'."""
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    target = d
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return d


def test_the_schemas_are_valid_shipped_and_agree_with_the_code():
    for name in (MANIFEST_SCHEMA, ENGINE_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema(name))
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(dep.startswith("jsonschema") for dep in pyproject["project"]["dependencies"])
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    assert "*.schema.json" in package_data["seenn_deploy.runtime"]
    properties = schema(MANIFEST_SCHEMA)["properties"]
    assert tuple(properties["exit"]["properties"]["accumulate"]["enum"]) == ACCUMULATIONS
    assert tuple(properties["precision"]["enum"]) == PRECISIONS
    assert (properties["timesteps"]["maximum"], properties["max_batch"]["maximum"]) == (MAX_TIMESTEPS, MAX_BATCH)


def test_optional_fields_take_the_schema_defaults(valid):
    minimal = {k: v for k, v in valid.items() if k in schema(MANIFEST_SCHEMA)["required"]}
    minimal["exit"] = {}
    manifest = Manifest.from_dict(minimal)
    assert (manifest.precision, manifest.fp16_weights, manifest.max_batch, manifest.arch) == ("fp32", "single", 256, "")
    assert (manifest.exit.kind, manifest.exit.alpha, manifest.exit.t_cap, manifest.exit.candidates) == \
        ("confidence", None, None, [])
    assert json.loads(json.dumps(Manifest.from_dict(valid).to_dict())) == valid  # and a full one round-trips


def test_t_cap_is_read_and_bounded_by_timesteps(valid):
    assert Manifest.from_dict(edited(valid, "exit.t_cap", 3)).exit.t_cap == 3
    assert Manifest.from_dict(valid).exit.t_cap is None
    with pytest.raises(UserError, match=r"exit\.t_cap 5 is above timesteps 4"):
        Manifest.from_dict(edited(valid, "exit.t_cap", 5))
    with pytest.raises(UserError, match=r"exit\.t_cap: 0 is less than the minimum of 1"):
        Manifest.from_dict(edited(valid, "exit.t_cap", 0))


# (field, bad value, what the message says): each loaded silently or raised something else before
BAD_VALUES = [
    ("input.std", [0], r"input\.std\[0\]: 0 is less than the minimum"),
    ("input.std", [-1.0], r"input\.std\[0\]: -1\.0 is less than the minimum"),
    ("input.shape", "1x8x8", r"input\.shape: '1x8x8' is not of type 'array'"),
    ("input.shape", [1, -8, 8], r"input\.shape\[1\]: -8 is less than the minimum of 1"),
    ("input.shape", [1, 8.5, 8], r"input\.shape\[1\]: 8\.5 is not of type 'integer'"),
    ("input.mean", [0.1, 0.2], r"input\.mean has 2 values and input\.std 1 for the 1 channels"),
    ("input.dtype", "float64", r"input\.dtype: 'float64' is not one of"),
    ("input.layout", "TCHW", r"input\.kind 'static', input\.layout 'TCHW' and input\.shape \[1, 8, 8\] disagree"),
    ("timesteps", 1e12, r"timesteps: 1000000000000\.0 is greater than the maximum of 4096"),
    ("timesteps", 0, r"timesteps: 0 is less than the minimum of 1"),
    ("timesteps", "4", r"timesteps: '4' is not of type 'integer'"),
    ("timesteps", True, r"timesteps: True is not of type 'integer'"),
    ("timesteps", float("nan"), r"timesteps is nan, not a finite number"),
    ("max_batch", 10 ** 9, r"max_batch: 1000000000 is greater than the maximum of 65536"),
    ("exit.alpha", "0.9", r"exit\.alpha: '0\.9' is not of type 'number', 'null'"),
    ("exit.alpha", 1.0, r"exit\.alpha: 1\.0 is greater than or equal to the maximum of 1"),
    ("exit.kind", "policy", r"exit\.kind is 'policy' but graphs has no policy graph"),
    ("exit.candidates", [2, 9], r"exit\.candidates \[2, 9\] go above timesteps 4"),
    ("exit.temperature", 0, r"exit\.temperature: 0 is less than the minimum"),
    ("num_classes", 11, r"classes has 10 names for num_classes 11"),
    ("states.1.name", "body.layers.0.v", r"states name the graph tensors \['body\.layers\.0\.v'"),
    ("states.0.name", "logits", r"states name the graph tensors \['logits'\]"),
    ("states.0.shape", [16, 8, 0], r"states\[0\]\.shape\[2\]: 0 is less than the minimum of 1"),
    ("states.0.shape", [1 << 20, 1 << 20], r"states\[0\]\.shape \[1048576, 1048576\] has more than 268435456 elements"),
    ("states.0.init", None, r"states\[0\]\.init: None is not of type 'number'"),
    ("states.0.dtype", "int8", r"states\[0\]\.dtype: 'int8' is not one of"),
    ("states", {}, r"states: \{\} is not of type 'array'"),
    ("graphs.step", "/etc/passwd", r"graphs\.step '/etc/passwd' is not a relative path inside the bundle"),
    ("graphs.step", "../other.seenn/step.onnx", r"graphs\.step '\.\./other\.seenn/step\.onnx' is not a relative path"),
    ("graphs.encoder", "step.onnx", r"graphs .* name one file for two roles"),
    ("precision", "int4", r"precision: 'int4' is not one of \['fp32', 'fp16', 'int8', 'int8\+fp16'\]"),
    ("provenance", [], r"provenance: \[\] is not of type 'object'"),
    ("arch", 7, r"arch: 7 is not of type 'string'"),
    ("extra_field", 1, r"Additional properties are not allowed \('extra_field' was unexpected\)"),
]


@pytest.mark.parametrize("path, value, message", BAD_VALUES, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_field_and_the_fix(valid, path, value, message):
    with pytest.raises(UserError, match=message) as info:
        Manifest.from_dict(edited(valid, path, value))
    assert str(info.value).endswith("re-export the bundle") and "\n" not in str(info.value)


# (text of manifest.json, or a function of the valid text, and what the message says)
BAD_FILES = [
    (lambda text: text.replace('"timesteps": 4', '"timesteps": 1e400'), r"timesteps is inf, not a finite number"),
    (lambda text: text.replace('"timesteps": 4', '"timesteps": NaN'), r"not valid JSON \(NaN is not a JSON number"),
    (lambda text: text.replace('"timesteps": 4', '"timesteps": -Infinity'), r"not valid JSON \(-Infinity is not"),
    (lambda text: text.replace('"timesteps": 4', '"timesteps": ' + "9" * 5000), r"not valid JSON"),
    (lambda text: text.replace('"history": []', '"history": ' + "[" * 100_000 + "]" * 100_000),
     r"nests objects and arrays too deeply to read"),
    (lambda text: text.replace('"history": []', '"history": [' + "[" * 40 + "]" * 40 + "]"),
     r"nests objects and arrays more than 32 deep \(at history"),
    (lambda text: text.replace('"history": []', '"history": "' + "x" * (17 << 20) + '"'), r"larger than 16 MiB"),
    (lambda text: "[1, 2]", r"is not a JSON object"),
    (lambda text: text[: len(text) // 2], r"is not valid JSON"),
]


@pytest.mark.parametrize("mutate, message", BAD_FILES, ids=["1e400", "NaN", "-Infinity", "huge-int", "deep-parse",
                                                            "deep", "huge-file", "not-object", "truncated"])
def test_a_bad_manifest_file_is_refused(bundle, mutate, message):
    path = bundle / MANIFEST
    path.write_text(mutate(path.read_text()))
    with pytest.raises(UserError, match=message):
        read_manifest(bundle)


def test_a_manifest_is_checked_before_it_is_written(bundle):
    manifest = read_manifest(bundle)
    before = (bundle / MANIFEST).read_text()
    manifest.exit.alpha = 1.5
    with pytest.raises(UserError, match=r"exit\.alpha: 1\.5 is greater than or equal to the maximum of 1"):
        write_manifest(bundle, manifest)
    assert (bundle / MANIFEST).read_text() == before
