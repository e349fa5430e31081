"""Data specs as a user relies on them: shapes, splits, values, caching, and one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from seenn_deploy.data import SPLITS, ArrayDataset, Normalisation, imagefolder, parse_data_spec
from seenn_deploy.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FASHION_MEAN = 0.2868  # published Fashion-MNIST test mean


def user_error(match: str):
    return pytest.raises(UserError, match=match)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and ": " in message, message  # problem, then the fix
    return message


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


# ---------------------------------------------------------------------------------- import


def test_package_imports_without_torch_or_pillow():
    code = ("import sys, seenn_deploy.data; "
            "print(sorted(m for m in ('torch', 'PIL', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- digits


def test_digits_splits_partition_the_bundled_set():
    source = parse_data_spec("digits")
    full, train, test = (source.load(s) for s in ("all", "train", "test"))
    assert (len(full), len(train), len(test)) == (1797, 1437, 360)
    assert full.sample_shape == (1, 8, 8) and not full.event and full.x.dtype == np.float32
    assert full.x.min() == 0.0 and full.x.max() == 1.0
    assert np.all(full.x * 16 == np.round(full.x * 16))  # raw 0..16 counts / 16
    np.testing.assert_array_equal(train.x, full.x[:1437])
    np.testing.assert_array_equal(test.x, full.x[1437:])
    np.testing.assert_array_equal(np.concatenate([train.y, test.y]), full.y)
    assert full.classes == [str(i) for i in range(10)] and full.y.dtype == np.int64
    assert set(test.y.tolist()) == set(range(10))  # shuffled: every class in the test split
    assert test.name == "digits (test)"


def test_default_split_is_test():
    assert len(parse_data_spec("digits").load()) == 360


# ---------------------------------------------------------------------------------- fashion-mnist

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


@needs_shared
def test_fashion_mnist_directory():
    source = parse_data_spec(f"fashion-mnist:{SHARED_DATA}")
    test = source.load("test")
    assert test.x.shape == (10000, 1, 28, 28) and test.y.shape == (10000,)
    assert abs(float(test.x.mean()) - FASHION_MEAN) < 1e-3
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"
    assert len(source.load("train")) == 60000


@needs_shared
def test_fashion_mnist_single_file_is_split_90_10():
    source = parse_data_spec(f"fashion-mnist:{SHARED_DATA / 'fashion_mnist_test.npz'}")
    assert (len(source.load("train")), len(source.load("test"))) == (9000, 1000)


def test_fashion_mnist_directory_missing_file_is_named(tmp_path):
    with user_error("fashion_mnist_test.npz") as exc:
        parse_data_spec(f"fashion-mnist:{tmp_path}").load("test")
    one_line(exc)


# ---------------------------------------------------------------------------------- npz


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(1)
    nhw = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    nchw = rng.integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
    nhwc = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    events = rng.integers(0, 256, (5, 4, 2, 6, 7), dtype=np.uint8)
    expected = {
        "nhw": (nhw, nhw[:, None]),
        "nchw": (nchw, nchw),
        "nhwc": (nhwc, nhwc.transpose(0, 3, 1, 2)),
        "events": (events, events),
    }
    for name, (raw, layout) in expected.items():
        data = parse_data_spec(write_npz(tmp_path / f"{name}.npz", x=raw)).load("all")
        np.testing.assert_array_equal(data.x, layout.astype(np.float32) / np.float32(255), err_msg=name)
        assert data.event == (name == "events") and data.y is None and data.classes == []


def test_npz_dtypes_labels_and_classes(tmp_path):
    x = np.array([[-1.5, 0.25], [2.0, 7.0]], dtype=np.float64).reshape(2, 1, 1, 2)
    data = parse_data_spec(write_npz(tmp_path / "f.npz", x=x, y=np.array([0, 2]))).load("all")
    np.testing.assert_array_equal(data.x, x.astype(np.float32))  # kept, not clipped or scaled
    assert data.classes == ["0", "1", "2"] and data.y.dtype == np.int64
    ints = np.arange(8, dtype=np.int16).reshape(2, 1, 2, 2)
    named = write_npz(tmp_path / "i.npz", x=ints, y=np.array([1, 0]), classes=np.array(["cat", "dog"]))
    data = parse_data_spec(named).load("all")
    np.testing.assert_array_equal(data.x, ints.astype(np.float32))
    assert data.classes == ["cat", "dog"]
    bools = parse_data_spec(write_npz(tmp_path / "b.npz", x=np.ones((2, 1, 2, 2), bool))).load("all")
    assert bools.x.dtype == np.float32 and bools.x.sum() == 8


def test_single_file_splits_are_disjoint_fixed_and_cover_all(tmp_path):
    n = 47
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)  # the sample value is its row
    source = parse_data_spec(write_npz(tmp_path / "rows.npz", x=x, y=np.arange(n) % 3))
    rows = {split: source.load(split).x.ravel().astype(int) for split in SPLITS}
    assert (len(rows["train"]), len(rows["test"])) == (42, 5)  # 90% of 47, rounded down
    assert not set(rows["train"]) & set(rows["test"])
    np.testing.assert_array_equal(np.sort(np.concatenate([rows["train"], rows["test"]])), np.arange(n))
    np.testing.assert_array_equal(rows["all"], np.arange(n))  # file order
    np.testing.assert_array_equal(source.load("test").x.ravel().astype(int), rows["test"])
    np.testing.assert_array_equal(source.load("test").y, rows["test"] % 3)  # labels follow rows


@pytest.mark.parametrize("arrays, match", [
    ({"y": np.zeros(3)}, "no array 'x'"),
    ({"x": np.zeros((3, 4, 4)), "y": np.zeros(2, int)}, "3 samples but y of shape"),
    ({"x": np.zeros((3, 16))}, r"shape \(3, 16\)"),
    ({"x": np.zeros((3, 4, 4)), "y": np.array([0, 1, 5]), "classes": np.array(["a", "b"])}, "label 5"),
    ({"x": np.zeros((3, 4, 4)), "y": np.array([0.5, 1, 2])}, "integer class indices"),
])
def test_npz_bad_content_names_the_file(tmp_path, arrays, match):
    spec = write_npz(tmp_path / "bad.npz", **arrays)
    with user_error(match) as exc:
        parse_data_spec(spec).load("all")
    assert str(tmp_path / "bad.npz") in one_line(exc)


@pytest.mark.parametrize("content", [b"not an npz at all", b"PK\x03\x04 truncated zip"])
def test_corrupt_npz_fails_on_load_not_on_parse(tmp_path, content):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(content)
    source = parse_data_spec(f"npz:{path}")  # parsing reads no data
    with user_error("cannot read") as exc:
        source.load("all")
    assert str(path) in one_line(exc)


def test_npy_given_as_npz(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 4, 4)))
    with user_error("not an .npz archive"):
        parse_data_spec(f"npz:{path}").load()


# ---------------------------------------------------------------------------------- imagefolder


@pytest.fixture(scope="module")
def cifar_jpegs(tmp_path_factory) -> Path:
    """DIR/test/<class>/*.jpg: the first 4 real CIFAR-10 test JPEGs of the first 3 classes."""
    archive = SHARED_DATA / "cifar10_test_jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    root = tmp_path_factory.mktemp("cifar_jpeg")
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            cls = member.name.split("/")[1]
            if cls not in taken and len(taken) == 3:
                break
            if taken.get(cls, 0) < 4:
                taken[cls] = taken.get(cls, 0) + 1
                tar.extract(member, root, filter="data")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_imagefolder_cifar_jpegs_and_cache(cifar_jpegs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEENN_DEPLOY_CACHE", str(cache))
    before = snapshot(cifar_jpegs)
    source = parse_data_spec(f"imagefolder:{cifar_jpegs}")
    first = source.load("test")
    classes = sorted(p.name for p in (cifar_jpegs / "test").iterdir())
    assert first.x.shape == (12, 3, 32, 32) and first.classes == classes
    np.testing.assert_array_equal(first.y, np.repeat([0, 1, 2], 4))
    assert 0.2 < float(first.x.mean()) < 0.8 and first.x.max() <= 1.0
    assert len(list(cache.rglob("*.npy"))) == 1
    assert snapshot(cifar_jpegs) == before  # nothing written next to the data

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(imagefolder, "decode_images", no_decoding)
    again = parse_data_spec(f"imagefolder:{cifar_jpegs}").load("test")
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(again.y, first.y)
    assert len(parse_data_spec(f"imagefolder:{cifar_jpegs}").load("all")) == 12
    with user_error("no train/ folder"):
        source.load("train")


def test_imagefolder_cache_follows_changes(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    monkeypatch.setenv("SEENN_DEPLOY_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "gray"
    for cls, value in (("a", 10), ("b", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (5, 4), value + i).save(root / cls / f"{i}.png")
    calls = []
    real = imagefolder.decode_images
    monkeypatch.setattr(imagefolder, "decode_images", lambda *a: calls.append(1) or real(*a))
    data = parse_data_spec(f"imagefolder:{root}").load("all")
    assert data.x.shape == (6, 1, 4, 5) and data.classes == ["a", "b"]  # all "L": one channel
    np.testing.assert_allclose(data.x[:, 0, 0, 0] * 255, [10, 11, 12, 200, 201, 202], atol=1e-4)
    parse_data_spec(f"imagefolder:{root}").load("all")
    assert len(calls) == 1
    Image.new("RGB", (5, 4), (1, 2, 3)).save(root / "b" / "3.png")  # a new file: decode again
    data = parse_data_spec(f"imagefolder:{root}").load("all")
    assert len(calls) == 2 and data.x.shape == (7, 3, 4, 5)  # one RGB image: all RGB
    train, test = (parse_data_spec(f"imagefolder:{root}").load(s) for s in ("train", "test"))
    assert (len(train), len(test)) == (6, 1)


def test_imagefolder_bad_inputs(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    monkeypatch.setenv("SEENN_DEPLOY_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a" / "0.png")
    Image.new("RGB", (9, 7)).save(root / "a" / "1.png")
    with user_error("9x7") as exc:
        parse_data_spec(f"imagefolder:{root}").load("all")
    message = one_line(exc)
    assert "1.png" in message and "8x8" in message
    (root / "a" / "1.png").write_bytes(b"not a png")
    with user_error("1.png"):
        parse_data_spec(f"imagefolder:{root}").load("all")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "0.png")
    with user_error("no class folders"):
        parse_data_spec(f"imagefolder:{tmp_path / 'flat'}").load()
    assert not list((tmp_path / "cache").rglob("*.npy"))  # failed decodes are not cached


# ---------------------------------------------------------------------------------- cifar10


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    batch = {b"batch_label": b"fake", b"labels": labels, b"data": data,
             b"filenames": [b"%d.png" % i for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def fake_cifar(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        write_batch(root / name, batches[name], [0, 9, 4])
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return root, batches


def test_cifar10_python_batches(fake_cifar):
    root, batches = fake_cifar
    test = parse_data_spec(f"cifar10:{root}").load("test")
    assert test.x.shape == (3, 3, 32, 32) and test.classes[9] == "truck"
    np.testing.assert_array_equal(test.y, [0, 9, 4])
    raw = batches["test_batch"]
    # row-major planes: 1024 red values, then green, then blue
    assert test.x[1, 2, 3, 4] == np.float32(raw[1, 2 * 1024 + 3 * 32 + 4]) / np.float32(255)
    assert len(parse_data_spec(f"cifar10:{root}").load("train")) == 15
    whole = parse_data_spec(f"cifar10:{root.parent}").load("all")  # the folder above works too
    assert len(whole) == 18
    np.testing.assert_array_equal(whole.x[-3:], test.x)


def test_cifar10_missing_batches_are_listed(fake_cifar):
    root, _ = fake_cifar
    (root / "data_batch_2").unlink()
    (root / "data_batch_5").unlink()
    assert len(parse_data_spec(f"cifar10:{root}").load("test")) == 3
    with user_error("data_batch_2, data_batch_5") as exc:
        parse_data_spec(f"cifar10:{root}").load("train")
    one_line(exc)


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 cPickle wrote the originals: str keys and bytes, numpy.core path."""
    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING, a py2 str

    n, f = data.shape
    out = b"\x80\x02}(" + string(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b")
    out += b"\x87R(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", f) + b"\x86"
    out += b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb"
    out += string(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def test_cifar10_python2_pickle(fake_cifar):
    root, batches = fake_cifar
    (root / "test_batch").write_bytes(py2_batch(batches["test_batch"], [5, 6, 7]))
    test = parse_data_spec(f"cifar10:{root}").load("test")
    np.testing.assert_array_equal(test.y, [5, 6, 7])
    np.testing.assert_array_equal(test.x.reshape(3, -1) * np.float32(255), batches["test_batch"])


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_refuses_a_pickle_that_runs_code(fake_cifar, tmp_path):
    root, _ = fake_cifar
    payload = pickle.dumps({b"data": RunsACommand(tmp_path / "ran"), b"labels": [0]}, protocol=2)
    pickle.loads(payload)  # control: an ordinary unpickler does run it
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    (root / "test_batch").write_bytes(payload)
    with user_error("system") as exc:
        parse_data_spec(f"cifar10:{root}").load("test")
    assert "test_batch" in one_line(exc)
    assert not (tmp_path / "ran").exists()


def test_cifar10_truncated_batch(fake_cifar):
    root, _ = fake_cifar
    (root / "test_batch").write_bytes((root / "test_batch").read_bytes()[:100])
    with user_error("test_batch") as exc:
        parse_data_spec(f"cifar10:{root}").load("test")
    one_line(exc)


# ---------------------------------------------------------------------------------- normalisation


def test_normalisation_fit_matches_numpy_and_normalises():
    rng = np.random.default_rng(3)
    x = (rng.random((2500, 3, 4, 4)) * [[[0.2]], [[1.0]], [[5.0]]] + [[[0.1]], [[0.5]], [[2.0]]])
    x = x.astype(np.float32)
    norm = Normalisation.fit(x)  # 2500 samples: more than one chunk
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(norm.std, x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-9)
    out = norm.apply(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_normalisation_events_constant_channel_and_uint8():
    x = np.zeros((4, 5, 2, 3, 3), dtype=np.float32)
    x[:, :, 1] = np.arange(4, dtype=np.float32)[:, None, None, None]
    norm = Normalisation.fit(x)
    assert norm.mean == (0.0, 1.5) and norm.std[0] == 1e-6
    assert np.isclose(norm.std[1], np.std([0, 1, 2, 3]))
    assert norm.apply(x).shape == x.shape
    u8 = Normalisation.fit(np.full((2, 1, 2, 2), 255, dtype=np.uint8))
    assert u8.mean == (255.0,)


def test_normalisation_round_trip_and_validation():
    norm = Normalisation((0.5, 0.25), (0.2, 0.1))
    again = Normalisation.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    for bad, match in [
        ({"mean": [0.5]}, "keys mean and std"),
        ({"mean": [0.5, 0.1], "std": [1.0]}, "2 means and 1 stds"),
        ({"mean": [0.5], "std": [0.0]}, "std <= 0"),
        ({"mean": ["0.5"], "std": [1.0]}, "other than numbers"),
        ([0.5, 1.0], "mapping"),
    ]:
        with user_error(match) as exc:
            Normalisation.from_dict(bad)
        one_line(exc)
    with user_error("2 channels") as exc:
        norm.apply(np.zeros((1, 3, 4, 4), np.float32))
    one_line(exc)


# ---------------------------------------------------------------------------------- specs and errors


def test_unknown_kind_lists_every_kind():
    with user_error("unknown data spec 'mnist:/x'") as exc:
        parse_data_spec("mnist:/x")
    message = one_line(exc)
    for syntax in ("digits", "fashion-mnist:PATH", "npz:FILE", "imagefolder:DIR", "cifar10:DIR"):
        assert syntax in message


def test_bare_npz_path_suggests_the_spec():
    with user_error("npz:/data/x.npz"):
        parse_data_spec("/data/x.npz")


@pytest.mark.parametrize("kind", ["fashion-mnist", "npz", "imagefolder", "cifar10"])
def test_missing_path_is_named(tmp_path, kind):
    missing = tmp_path / "nowhere"
    with user_error("does not exist") as exc:
        parse_data_spec(f"{kind}:{missing}")
    assert str(missing) in one_line(exc)


def test_spec_shape_errors(tmp_path):
    with user_error("needs a path"):
        parse_data_spec("npz:")
    with user_error("takes no argument"):
        parse_data_spec("digits:foo")
    with user_error("not a file"):
        parse_data_spec(f"npz:{tmp_path}")
    (tmp_path / "f").write_bytes(b"")
    with user_error("not a dir"):
        parse_data_spec(f"cifar10:{tmp_path / 'f'}")


def test_bad_split_is_named():
    with user_error("'validation'") as exc:
        parse_data_spec("digits").load("validation")
    assert "train, test, all" in one_line(exc)


def test_check_sample_shape_and_subset():
    data = parse_data_spec("digits").load("test")
    data.check_sample_shape((1, 8, 8))
    with user_error("1x8x8 images .* expects 1x28x28") as exc:
        data.check_sample_shape((1, 28, 28))
    assert one_line(exc).startswith("data 'digits (test)' has")
    small = data.subset(5)
    assert len(small) == 5 and np.shares_memory(small.x, data.x)
    assert len(data.subset(10**6)) == 360
    events = ArrayDataset(np.zeros((2, 4, 2, 3, 3), np.float32), None, [], "ev")
    assert events.event and events.sample_shape == (4, 2, 3, 3)
    events.check_sample_shape((2, 3, 3))  # one frame per timestep
    with user_error(r"4x2x3x3 event samples \(T x C x H x W\)"):
        events.check_sample_shape((1, 3, 3))


def test_single_file_splits_are_the_rows_every_checkpoint_was_made_with():
    """The train/test split of a single-file source (npz, imagefolder without split folders) comes from numpy's
    Generator, whose streams numpy does not promise to keep across versions. These rows are pinned: if a numpy
    upgrade changes them, test rows of old checkpoints would become training rows silently; this fails instead."""
    from seenn_deploy.data.dataset import single_file_rows

    test, train = single_file_rows(1000, "test"), single_file_rows(1000, "train")
    assert test[:12].tolist() == [322, 772, 217, 352, 593, 591, 695, 188, 751, 341, 916, 3]
    assert train[:5].tolist() == [459, 206, 222, 162, 711]
    assert len(test) == 100 and sorted([*test, *train]) == list(range(1000))
