"""`imagefolder:` on a tar archive: the same data as the extracted folder, read in place, safely, cached."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seenn_deploy.data import imagefolder, parse_data_spec
from seenn_deploy.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEENN_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def png(value: int, size=(5, 4), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (value, 2 * value % 256, 7) if mode == "RGB" else value).save(out, "PNG")
    return out.getvalue()


def make_tree(root: Path) -> None:
    """root/train/{cat,dog}/*.png (3 + 2) and root/test/{cat,dog}/*.png (1 + 1), distinct pixels."""
    for split, counts in (("train", {"cat": 3, "dog": 2}), ("test", {"cat": 1, "dog": 1})):
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                (root / split / cls / f"{i}.png").write_bytes(png(10 * i + (100 if cls == "dog" else 0)
                                                                  + (50 if split == "test" else 0)))


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_archive_gives_what_the_folder_gives_and_is_cached(tmp_path, monkeypatch, cache):
    make_tree(tmp_path / "tree")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="wrapped")  # one top folder around train/ and test/
    for split in ("train", "test", "all"):
        folder = parse_data_spec(f"imagefolder:{tmp_path / 'tree'}").load(split)
        packed = parse_data_spec(f"imagefolder:{archive}").load(split)
        np.testing.assert_array_equal(packed.x, folder.x)
        np.testing.assert_array_equal(packed.y, folder.y)
        assert packed.classes == folder.classes == ["cat", "dog"]
    assert len(parse_data_spec(f"imagefolder:{archive}").load("train")) == 5

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    source = parse_data_spec(f"imagefolder:{archive}")  # parsing peeks at the archive's first block
    monkeypatch.setattr(imagefolder, "decode_images", no_decoding)
    monkeypatch.setattr(tarfile, "open", no_decoding)  # the listing too comes from the cache
    again = source.load("all")
    assert len(again) == 7
    assert sorted(p.parent.name for p in cache.rglob("*.*")) == ["imagefolder"] * 4 + ["imagefolder-archive"]


def test_hostile_members_are_never_written_and_never_read_as_images(tmp_path):
    (tmp_path / "work").mkdir()
    archive = tmp_path / "work" / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "cat/0.png", png(1))
        add_bytes(tar, "../outside/1.png", png(2))
        add_bytes(tar, "/tmp/seenn-evil-abs.png", png(3))
        add_bytes(tar, "cat/../../outside/2.png", png(4))
        link = tarfile.TarInfo("cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hard = tarfile.TarInfo("cat/hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        tar.addfile(hard)
    data = parse_data_spec(f"imagefolder:{archive}").load("all")
    assert len(data) == 1 and data.classes == ["cat"]  # only the regular file inside cat/
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["evil.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "work"]  # nothing but the cache was written
    assert not Path("/tmp/seenn-evil-abs.png").exists()


def test_empty_class_folder_in_an_archive_is_named(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "train/cat/0.png", png(1))
        empty = tarfile.TarInfo("train/zebra")
        empty.type = tarfile.DIRTYPE
        tar.addfile(empty)
    with pytest.raises(UserError, match=r"class folder .*a.tar/train/zebra has no images") as exc:
        parse_data_spec(f"imagefolder:{archive}").load("train")
    assert "\n" not in str(exc.value)


def test_files_that_are_not_tar_archives_name_the_command(tmp_path):
    zipped = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("cat/0.png", png(1))
    with pytest.raises(UserError, match=rf"not a folder or a .tar/.tar.gz archive.*unzip {zipped} -d"):
        parse_data_spec(f"imagefolder:{zipped}")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(UserError, match="extract .*notes.txt into"):
        parse_data_spec(f"imagefolder:{other}")


def test_truncated_archive_is_a_user_error(tmp_path):
    make_tree(tmp_path / "tree")
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname=".")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read the archive .*cut.tar.gz"):
        parse_data_spec(f"imagefolder:{cut}").load("all")


@pytest.mark.skipif(not (SHARED_DATA / "cifar10_test_jpeg.tar.gz").is_file(), reason="shared CIFAR-10 is absent")
def test_shipped_cifar10_test_tarball(tmp_path):
    """A slice of the real archive, packed again: the same images as extracting them with tar."""
    small = tmp_path / "small.tar.gz"
    taken: dict[str, int] = {}
    with tarfile.open(SHARED_DATA / "cifar10_test_jpeg.tar.gz") as src, tarfile.open(small, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and parts[1] in ("airplane", "cat") and taken.get(parts[1], 0) < 3:
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                dst.addfile(member, src.extractfile(member))
                src.extract(member, tmp_path / "tree", filter="data")
    packed = parse_data_spec(f"imagefolder:{small}").load("test")
    folder = parse_data_spec(f"imagefolder:{tmp_path / 'tree'}").load("test")
    assert packed.x.shape == (6, 3, 32, 32) and packed.classes == ["airplane", "cat"]
    np.testing.assert_array_equal(packed.x, folder.x)
    with pytest.raises(UserError, match=r"no train/ folder \(only test/\)"):
        parse_data_spec(f"imagefolder:{small}").load("train")
