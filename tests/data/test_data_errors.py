"""Data that would give silent nonsense is refused at load with one line: empty, non-finite, mislabelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seenn_deploy.data import ArrayDataset, check_labels, parse_data_spec
from seenn_deploy.errors import UserError


def refused(match: str):
    return pytest.raises(UserError, match=match)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and ": " in message, message
    return message


def npz(path: Path, x: np.ndarray, **more: np.ndarray) -> str:
    np.savez(path, x=x, **more)
    return f"npz:{path}"


def test_empty_data_is_refused_at_load(tmp_path):
    with refused("holds no samples") as exc:
        parse_data_spec(npz(tmp_path / "e.npz", np.zeros((0, 4, 4), np.uint8))).load("all")
    assert "e.npz" in one_line(exc)
    one = npz(tmp_path / "one.npz", np.zeros((1, 4, 4), np.uint8))
    assert len(parse_data_spec(one).load("test")) == 1
    with refused(r"one.npz \(train\)' holds no samples"):  # 90 % of one row, rounded down
        parse_data_spec(one).load("train")


def test_subset_of_zero_is_refused():
    with refused("give a count >= 1"):
        parse_data_spec("digits").load("test").subset(0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_counted_and_located(tmp_path, bad):
    x = np.ones((10, 1, 3, 3), np.float32)
    x[3, 0, 1, 1] = bad
    x[7, 0, 0, 0] = bad
    with refused("NaN or Inf values in 2 of 10 samples, the first at row 3") as exc:
        parse_data_spec(npz(tmp_path / "nan.npz", x)).load("all")
    one_line(exc)


def test_non_finite_check_spans_chunks_and_event_data(tmp_path):
    x = np.zeros((5000, 2, 1, 2, 2), np.float32)  # events [N, T, C, H, W], past one 4096-row chunk
    x[4500, 1, 0, 1, 1] = np.nan
    with refused("in 1 of 5000 samples, the first at row 4500"):
        parse_data_spec(npz(tmp_path / "ev.npz", x)).load("all")


def test_empty_class_folder_is_named_not_made_a_class(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / cls / "0.png")
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("not an image")
    with refused(r"class folder .*imgs/zebra has no images: remove it") as exc:
        parse_data_spec(f"imagefolder:{root}").load("all")
    one_line(exc)
    (root / "zebra" / "notes.txt").unlink()
    (root / "zebra").rmdir()
    assert parse_data_spec(f"imagefolder:{root}").load("all").classes == ["cat", "dog"]


def labelled(y: list[int], classes: list[str]) -> ArrayDataset:
    return ArrayDataset(np.zeros((len(y), 1, 2, 2), np.float32), np.array(y), classes, "d (test)")


def test_labels_beyond_the_model_are_refused():
    with refused(r"label 12 \(2 samples, the first at row 1\) but bundle b.seenn has 10 classes, labels 0..9") as e:
        check_labels(labelled([0, 12, 3, 12], [str(i) for i in range(13)]), 10, None, "bundle b.seenn")
    one_line(e)
    check_labels(labelled([0, 9], [str(i) for i in range(10)]), 10, None, "bundle b.seenn")


def test_class_names_must_mean_the_same_classes():
    model = ["cat", "dog", "frog"]
    check_labels(labelled([0, 1, 2], model), 3, model, "m")
    check_labels(labelled([0, 1], ["cat", "dog"]), 3, model, "m")  # a test set lacking the last class
    check_labels(labelled([0, 1], ["0", "1"]), 3, model, "m")  # a source without names: labels only
    check_labels(labelled([0, 1], ["cat", "dog"]), 3, ["0", "1", "2"], "m")  # a model without names
    check_labels(ArrayDataset(np.zeros((2, 1, 2, 2), np.float32), None, [], "u"), 3, model, "m")  # unlabelled
    with refused(r"class 1 = 'frog' but m has 'dog' there") as exc:
        check_labels(labelled([0, 1], ["cat", "frog"]), 3, model, "m")  # a missing class folder shifts labels
    one_line(exc)
    with refused(r"has 4 classes but m has 3.*empty or extra class folder"):
        check_labels(labelled([0, 1], ["cat", "dog", "frog", "zebra"]), 3, model, "m")
