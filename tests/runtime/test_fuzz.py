"""Seeded fuzzing of what a bundle holds: manifest.json, calib/profile.npz and engine records.

Every mutation (type swaps, deletions, out-of-range, huge and non-finite numbers, strings, deep nesting,
NaN/Infinity tokens, wrong-length lists, truncated or garbled bytes) must either load or raise UserError:
never another exception. A manifest that loads is checked against the bundle's graphs too, and a few
hundred go all the way: read_manifest, open with ONNX Runtime, one inference.
"""

from __future__ import annotations

import copy
import json
import shutil
import zipfile
from collections import Counter

import numpy as np
import pytest

from seenn_deploy.calib.profile import TimestepProfile
from seenn_deploy.errors import UserError
from seenn_deploy.runtime.api import Runtime
from seenn_deploy.runtime.bundle import check_graph, open_executors
from seenn_deploy.runtime.engine_meta import EngineMeta, read_engine_meta
from seenn_deploy.runtime.exit import parse_exit
from seenn_deploy.runtime.manifest import MANIFEST, Manifest, read_manifest

SEED = 20_251_128
MANIFESTS, MANIFEST_FILES, PROFILES, RECORDS, RECORD_FILES = 2000, 300, 500, 500, 100

VALUES = [None, True, False, 0, 1, -1, 2, 3, 4096, 4097, 65537, 2 ** 31, 2 ** 63, 10 ** 400, 0.5, -0.0, 1e-9, 1.5,
          1e12, 1e308, float("nan"), float("inf"), float("-inf"), "", "x", "1x8x8", "float64", "float16", "fp16",
          "TCHW", "event", "policy", "../step.onnx", "/etc/passwd", "encoder.onnx", [], {}, [1, 2, 3], [0], [-1],
          [0.5, 0.5], {"a": 1}, "ab" * 32]


def outcome(call) -> str:
    try:
        call()
    except UserError:
        return "UserError"
    except Exception as exc:  # what the test counts: anything but UserError fails it
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def assert_only_ok_or_user_errors(counts: Counter, total: int, what: str) -> None:
    print(f"\n{what}: {dict(counts)}")  # the figures the report quotes (pytest -s)
    assert sum(counts.values()) == total
    assert set(counts) <= {"ok", "UserError"}, {k: v for k, v in counts.items() if k not in ("ok", "UserError")}


# -- a generic mutator of JSON-like data -------------------------------------------------------
def nested(depth: int):
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def locations(data, max_depth: int = 8) -> list[tuple]:
    """Paths to every value below the root, down to max_depth and into containers of at most 64 entries
    (iterative: the data may nest deeply)."""
    found, stack = [], [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) >= max_depth or (isinstance(value, (dict, list)) and len(value) > 64):
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found.append((*path, key))
            stack.append(((*path, key), item))
    return found


def tweak(rng: np.random.Generator, value):
    """A change of one value that keeps something of it: sign, scale, off by one, type."""
    if isinstance(value, (dict, list)):
        return [[value], {"v": value}, None, "x"][rng.integers(4)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [str(value), [value], {"v": value}, None][rng.integers(4)]
    return [-value, value + 1, value - 1, value * 1000, value + 0.5, value * 1e300, str(value), float(value)][rng.integers(8)]


def mutate(rng: np.random.Generator, data, max_nesting: int = 3000):
    """A deep copy of `data` with 1 to 3 random mutations."""
    data = copy.deepcopy(data)
    if rng.random() < 0.01:
        return VALUES[rng.integers(len(VALUES))]  # not an object at all
    for _ in range(rng.integers(1, 4)):
        paths = locations(data)
        if not paths:
            break
        *parents, key = paths[rng.integers(len(paths))]
        parent = data
        for p in parents:
            parent = parent[p]
        value, kind = parent[key], rng.integers(7)
        if kind == 0:
            del parent[key]
        elif kind == 1:
            parent[key] = copy.deepcopy(VALUES[rng.integers(len(VALUES))])
        elif kind == 2:
            parent[key] = tweak(rng, value)
        elif kind == 3 and isinstance(value, list):
            choice = rng.integers(4)
            if choice == 0:
                value.append(copy.deepcopy(value[rng.integers(len(value))]) if value else 1)
            elif choice == 1 and value:
                value.pop(rng.integers(len(value)))
            elif choice == 2:
                value.extend(copy.deepcopy(value))
            else:
                parent[key] = value[::-1] + [VALUES[rng.integers(len(VALUES))]]
        elif kind == 3 and isinstance(value, dict):
            if value and rng.random() < 0.5:
                old = list(value)[rng.integers(len(value))]
                value[old + "_"] = value.pop(old)
            else:
                value["unknown"] = VALUES[rng.integers(len(VALUES))]
        elif kind == 4:
            parent[key] = nested([5, 31, 40, int(max_nesting)][rng.integers(4)])
        elif kind == 5:
            parent[key] = ["x" * 100_000, [1] * 5000, list(range(300))][rng.integers(3)]  # past every list limit
        else:
            parent[key] = tweak(rng, value)
    return data


def garble_text(rng: np.random.Generator, text: str) -> bytes:
    """Text-level damage json.dumps cannot make: tokens that are not JSON, truncation, bytes that are not UTF-8."""
    choice = rng.integers(6)
    if choice == 0:
        return text[: rng.integers(len(text))].encode()
    if choice == 1:
        token = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, "0x10", "01"][rng.integers(8)]
        return text.replace(": 4,", f": {token},", 1).replace(": 1.0", f": {token}", 1).encode()
    if choice == 2:
        at = rng.integers(len(text))
        return text[:at].encode() + bytes(rng.integers(0, 256, 8, dtype=np.uint8)) + text[at:].encode()
    if choice == 3:
        depth = [100, 1000, 100_000][rng.integers(3)]
        return text.replace('"history": []', '"history": ' + "[" * depth + "]" * depth, 1).encode()
    if choice == 4:
        return text.replace("{", "[", 1).encode()
    return (text + text).encode()  # trailing data


# -- manifests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(digits_bundle, tmp_path_factory):
    return shutil.copytree(digits_bundle, tmp_path_factory.mktemp("fuzz") / "b.seenn")


@pytest.fixture(scope="module")
def valid_manifest(bundle) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


@pytest.fixture(scope="module")
def graphs(bundle):
    with open_executors(bundle, read_manifest(bundle), "ort") as opened:
        yield opened


def test_mutated_manifests_load_or_raise_user_error(valid_manifest, graphs):
    """In memory: the validator, then (for what loads) the graph checks against the opened graphs."""
    rng = np.random.default_rng(SEED)
    counts: Counter = Counter()

    def load(data) -> None:
        manifest = Manifest.from_dict(data)
        for role in manifest.graphs:
            check_graph(getattr(graphs, role, None) or graphs.step, manifest, role)

    for _ in range(MANIFESTS):
        data = mutate(rng, valid_manifest)
        counts[outcome(lambda: load(data))] += 1
    assert_only_ok_or_user_errors(counts, MANIFESTS, "in-memory manifests")
    assert counts["UserError"] > MANIFESTS // 2 and counts["ok"] > 20  # the mutations reach both outcomes


def test_mutated_manifest_files_load_open_and_infer_or_raise_user_error(bundle, valid_manifest, tmp_path):
    """Through the file: read_manifest, open with ONNX Runtime, infer one sample with the bundle's default exit."""
    rng = np.random.default_rng(SEED + 1)
    work = shutil.copytree(bundle, tmp_path / "b.seenn")
    sample = np.random.default_rng(0).random((1, *valid_manifest["input"]["shape"]), dtype=np.float32)
    counts: Counter = Counter()

    def run() -> None:
        manifest = read_manifest(work)
        with open_executors(work, manifest, "ort") as opened:
            exit_policy = parse_exit(None, manifest, opened.policy)
            runtime = Runtime(manifest, opened.step, opened.encoder, exit_policy, mode="slots", batch=1,
                              policy=opened.policy)
            assert len(runtime.infer(sample)) == 1

    for i in range(MANIFEST_FILES):
        data = mutate(rng, valid_manifest, max_nesting=400)  # json.dumps below recurses too
        text = json.dumps(data, indent=2)
        (work / MANIFEST).write_bytes(garble_text(rng, text) if i % 3 == 0 else text.encode())
        counts[outcome(run)] += 1
    assert_only_ok_or_user_errors(counts, MANIFEST_FILES, "manifest files (read, open, infer)")
    assert counts["ok"] > 10


# -- profiles -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_profile() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    confidence = rng.random((4, 50))
    return {"score_confidence": confidence, "score_entropy": 1 - confidence,
            "prediction": rng.integers(0, 10, (4, 50)), "labels": rng.integers(0, 10, 50),
            "meta": np.array(json.dumps({"fingerprint": "ab" * 32, "data": "digits (test)"}))}


def mutate_profile(rng: np.random.Generator, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = dict(arrays)
    for _ in range(rng.integers(1, 3)):
        name = list(arrays)[rng.integers(len(arrays))]
        value, choice = arrays[name], rng.integers(10)
        if choice == 0:
            del arrays[name]
        elif choice == 1:
            dtype = [np.float16, np.int8, np.bool_, np.complex64, "U3", np.uint64][rng.integers(6)]
            try:
                arrays[name] = value.astype(dtype)
            except ValueError:  # the meta string as a number
                arrays[name] = np.zeros(value.shape, dtype)
        elif choice == 2:
            flat = value.reshape(-1)
            arrays[name] = [value.T, value[None], flat, flat[:0], flat[:1], np.array(1.0)][rng.integers(6)]
        elif choice == 3 and value.dtype.kind == "f" and value.size:
            value = value.copy()
            value.flat[rng.integers(value.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
            arrays[name] = value
        elif choice == 4:
            meta = [json.dumps({"fingerprint": 1, "data": "x"}), json.dumps([1]), "{not json", '{"fingerprint": NaN}',
                    "[" * 100_000, json.dumps({"data": "x"}), ""][rng.integers(7)]
            arrays["meta"] = np.array(meta)
        elif choice == 5:
            arrays[name] = np.array([object()], dtype=object)  # saved with pickle, which load refuses
        elif choice == 6:
            arrays[name] = np.zeros((4, 51)) if value.ndim == 2 else np.zeros(49, np.int64)
        else:
            arrays[f"score_{['extra', 'entropy'][rng.integers(2)]}"] = value
    return arrays


def garble_bytes(rng: np.random.Generator, raw: bytes) -> bytes:
    choice = rng.integers(4)
    if choice == 0:
        return raw[: rng.integers(len(raw))]
    if choice == 1:
        data = bytearray(raw)
        for at in rng.integers(0, len(data), 8):
            data[at] = rng.integers(256)
        return bytes(data)
    if choice == 2:
        return bytes(rng.integers(0, 256, 256, dtype=np.uint8))
    return b""


def test_mutated_profiles_load_or_raise_user_error(valid_profile, tmp_path):
    rng = np.random.default_rng(SEED + 2)
    path = tmp_path / "profile.npz"
    counts: Counter = Counter()
    for i in range(PROFILES):
        save_profile(path, mutate_profile(rng, valid_profile) if i % 4 else valid_profile)
        if i % 4 == 0 and i % 8 == 0:
            path.write_bytes(garble_bytes(rng, path.read_bytes()))
        counts[outcome(lambda: TimestepProfile.load(path))] += 1
    assert_only_ok_or_user_errors(counts, PROFILES, "profiles")
    assert counts["UserError"] > PROFILES // 2 and counts["ok"] > 10


def save_profile(path, arrays) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def nan_scores(arrays):
    scores = arrays["score_confidence"].copy()
    scores[1, 7] = np.nan
    return {**arrays, "score_confidence": scores}


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:100]), r"is not a readable timestep profile \(BadZipFile"),
    (lambda path: zipfile.ZipFile(path, "w").writestr("prediction.npy", b"\x93NUMPY garbage"),
     r"is not a readable timestep profile \(ValueError"),
    (lambda path: save_profile(path, {**np.load(path), "prediction": np.zeros(200, np.int64)}),
     r"has prediction of shape \[200\] int64, not \[T, N\] integers"),
    (lambda path: save_profile(path, nan_scores(dict(np.load(path)))),
     r"has score_confidence of shape \[4, 50\] float64, not finite floats"),
    (lambda path: save_profile(path, {**np.load(path), "labels": np.zeros(49, np.int64)}),
     r"has labels of shape \[49\] int64, not \[50\] integers"),
    (lambda path: save_profile(path, {**np.load(path), "meta": np.array('{"fingerprint": NaN}')}),
     r"\(meta\) is not valid JSON \(NaN is not a JSON number"),
], ids=["truncated", "garbage-member", "prediction-1d", "nan-score", "labels-short", "meta-nan"])
def test_a_corrupt_profile_names_the_problem_and_the_fix(valid_profile, tmp_path, damage, message):
    path = tmp_path / "profile.npz"
    save_profile(path, valid_profile)
    assert TimestepProfile.load(path).samples == 50
    damage(path)
    with pytest.raises(UserError, match=f"{message}.*delete it and calibrate again"):
        TimestepProfile.load(path)


# -- engine records -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_record() -> dict:
    return EngineMeta(role="step", plan="step.fp16.orin.trt10.3.0.plan", tensorrt_version="10.3.0", gpu_name="Orin",
                      compute_capability="8.7", precision="fp16", profile={"min": 1, "opt": 32, "max": 64},
                      created="2025-01-01T00:00:00+00:00", onnx_sha256="ab" * 32,
                      build={"network": "strong", "workspace_mb": None}).to_dict()


def test_mutated_engine_records_load_or_raise_user_error(valid_record, tmp_path):
    rng = np.random.default_rng(SEED + 3)
    counts: Counter = Counter()
    for _ in range(RECORDS):
        data = mutate(rng, valid_record)
        counts[outcome(lambda: EngineMeta.from_dict(data, "record"))] += 1
    path = tmp_path / "step.plan.json"
    for i in range(RECORD_FILES):
        text = json.dumps(mutate(rng, valid_record, max_nesting=400))
        path.write_bytes(garble_text(rng, text) if i % 2 else text.encode())
        counts[outcome(lambda: read_engine_meta(path))] += 1
    assert_only_ok_or_user_errors(counts, RECORDS + RECORD_FILES, "engine records")
    assert counts["UserError"] > RECORDS // 2 and counts["ok"] > 10
