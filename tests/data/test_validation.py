"""The validation slice: disjoint from the rows trained on, the same rows in every run and on every machine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from seenn_deploy.data import ArrayDataset, ValidationSlice, load_validation, parse_data_spec, split_validation
from seenn_deploy.data.validation import rank_order, sample_rows, validation_rows
from seenn_deploy.errors import UserError


def numbered(n: int) -> ArrayDataset:
    """n samples whose single pixel is their row index."""
    return ArrayDataset(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n) % 3, ["a", "b", "c"], "rows")


def rows_of(data: ArrayDataset) -> np.ndarray:
    return data.x.ravel().astype(int)


@pytest.mark.parametrize("n, fraction, expected", [(10, 0.1, 1), (1437, 0.1, 144), (50000, 0.1, 5000), (7, 0.3, 2)])
def test_slice_is_disjoint_covering_and_sized(n, fraction, expected):
    fit, val = split_validation(numbered(n), ValidationSlice("x", fraction, 0))
    assert len(val) == expected and len(fit) == n - expected
    assert not set(rows_of(fit)) & set(rows_of(val))
    np.testing.assert_array_equal(np.sort(np.concatenate([rows_of(fit), rows_of(val)])), np.arange(n))
    np.testing.assert_array_equal(fit.y, rows_of(fit) % 3)  # labels travel with their rows


def splitmix64(seed: int, row: int) -> int:
    """The reference hash in plain Python integers (Steele et al. 2014), independent of numpy."""
    mask = 2**64 - 1
    z = (seed + (row + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_rows_are_fixed_by_n_fraction_and_seed_alone():
    # A change of numpy, platform or code that moved the rows would silently put trained-on rows in old
    # checkpoints' slices, so the order is checked against plain-integer splitmix64, and pinned.
    for n, seed in ((1, 0), (50, 0), (97, 12345), (64, -1)):
        expected = sorted(range(n), key=lambda row: splitmix64(seed % 2**64, row))
        assert rank_order(n, seed).tolist() == expected
    assert validation_rows(20, 0.25, 0)[1].tolist() == [2, 4, 6, 8, 18]
    assert validation_rows(20, 0.25, 7)[1].tolist() == [1, 5, 8, 10, 17]
    code = ("from seenn_deploy.data.validation import validation_rows; "
            "print(validation_rows(1000, 0.1, 3)[1].sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == int(validation_rows(1000, 0.1, 3)[1].sum())  # another process, the same rows
    assert not np.array_equal(validation_rows(1000, 0.1, 3)[1], validation_rows(1000, 0.1, 4)[1])


def test_sample_rows_are_distinct_sorted_and_seeded():
    rows = sample_rows(1000, 50, 0)
    assert len(set(rows.tolist())) == 50 and np.all(np.diff(rows) > 0) and rows.max() < 1000
    np.testing.assert_array_equal(rows, sample_rows(1000, 50, 0))
    assert not np.array_equal(rows, sample_rows(1000, 50, 1))


def test_load_validation_rebuilds_the_slice_of_the_train_split():
    vs = ValidationSlice("digits", 0.1, 0, train_rows=1437)
    fit, val = split_validation(parse_data_spec("digits").load("train"), vs)
    again = load_validation(ValidationSlice.from_dict(vs.to_dict(), "test"))
    np.testing.assert_array_equal(again.x, val.x)
    np.testing.assert_array_equal(again.y, val.y)
    assert again.name == "digits (validation slice, 10% of train, seed 0)"
    test = parse_data_spec("digits").load("test")
    assert not {r.tobytes() for r in test.x} >= {r.tobytes() for r in val.x}  # not the test split


def test_a_changed_train_split_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 4, 4), np.uint8), y=np.zeros(30, int))
    vs = ValidationSlice(f"npz:{tmp_path / 'd.npz'}", 0.2, 0, train_rows=40)
    with pytest.raises(UserError, match="has 27 samples but had 40") as exc:
        load_validation(vs)
    assert "\n" not in str(exc.value)


def test_data_without_a_train_split_gets_a_clear_message(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "imgs" / "test" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "test" / "cat" / "0.png")
    with pytest.raises(UserError, match=r"validation slice is 10% of the train split.*no train/ folder.*held-out"):
        load_validation(ValidationSlice(f"imagefolder:{tmp_path / 'imgs'}", 0.1, 0))


def test_too_small_a_split_is_refused():
    with pytest.raises(UserError, match="leaves none to train on"):
        split_validation(numbered(1), ValidationSlice("x", 0.5, 0))


@pytest.mark.parametrize("record, match", [
    ([0.1], "not a mapping"),
    ({"data": "digits", "fraction": 0.1}, "no seed"),
    ({"data": "digits", "fraction": 0.1, "seed": 0, "rows": [1, 2]}, "unknown keys"),
    ({"data": "digits", "fraction": 1.5, "seed": 0}, r"not in \(0, 1\)"),
    ({"data": "digits", "fraction": "0.1", "seed": 0}, r"not in \(0, 1\)"),
    ({"data": "digits", "fraction": 0.1, "seed": 0.5}, "not an integer"),
    ({"data": "", "fraction": 0.1, "seed": 0}, "not a data spec"),
    ({"data": "digits", "fraction": 0.1, "seed": 0, "train_rows": -3}, "train_rows"),
    ({"data": "digits", "fraction": 0.1, "seed": 0, "method": "numpy-permutation"}, "upgrade seenn-deploy"),
])
def test_bad_records_are_one_line_user_errors(record, match):
    with pytest.raises(UserError, match=match) as exc:
        ValidationSlice.from_dict(record, "ckpt/config.json")
    message = str(exc.value)
    assert message.startswith("ckpt/config.json") and "\n" not in message and ": " in message


def test_record_round_trip():
    vs = ValidationSlice("npz:/d.npz", 0.2, 5, train_rows=100)
    assert ValidationSlice.from_dict(vs.to_dict(), "x") == vs
    assert ValidationSlice.from_dict({"data": "digits", "fraction": 0.1, "seed": 0}, "x").train_rows is None
