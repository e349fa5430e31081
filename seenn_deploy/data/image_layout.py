"""Class-per-folder layouts from relative paths: split folders, class names, and each image's label.

The same rules for a directory on disk and for a tar archive's member names:
ROOT/<class>/**/image, or ROOT/train/<class>/**/image and ROOT/test/<class>/**/image.
Names starting with "." are skipped; files directly in ROOT (or in a split folder) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from seenn_deploy.errors import UserError

SPLIT_DIRS = ("train", "test")
FLAT = ""  # the group name when there are no split folders


@dataclass(frozen=True)
class ImageLayout:
    """groups: {split folder, or FLAT: {class: sorted image paths}}; classes: sorted union of class names.

    Paths are relative, "/"-separated. `where` names the root in messages.
    """

    groups: dict[str, dict[str, list[str]]]
    classes: list[str]
    where: str

    @classmethod
    def from_paths(cls, files: Iterable[str], dirs: Iterable[str], where: str) -> ImageLayout:
        """Layout of image `files` and folders `dirs` (both relative; a file's parent folders count as folders)."""
        file_parts = [p for p in (_parts(f) for f in files) if p]
        dir_parts = {p for p in (_parts(d) for d in dirs) if p}
        dir_parts |= {f[:i] for f in file_parts for i in range(1, len(f))}
        splits = [s for s in SPLIT_DIRS if (s,) in dir_parts]
        depth = 2 if splits else 1  # path components up to and including the class folder
        groups: dict[str, dict[str, list[str]]] = {}
        for group in splits or [FLAT]:
            prefix = (group,) if group else ()
            folders = {d[-1]: [] for d in sorted(dir_parts) if len(d) == depth and d[:-1] == prefix}
            for f in file_parts:
                if len(f) > depth and f[: depth - 1] == prefix:
                    folders[f[depth - 1]].append("/".join(f))
            if not folders:
                root = "/".join((where, *prefix))
                raise UserError(f"{root} has no class folders: put the images in {root}/<class name>/")
            empty = [name for name, found in folders.items() if not found]
            if empty:
                folder = "/".join((where, *prefix, empty[0]))
                raise UserError(f"class folder {folder} has no images: remove it or put its images in it "
                                "(an empty folder would become a class of its own)")
            groups[group] = {name: sorted(found) for name, found in folders.items()}
        classes = sorted({name for folders in groups.values() for name in folders})
        return cls(groups, classes, where)

    @property
    def has_splits(self) -> bool:
        return FLAT not in self.groups

    def groups_for(self, split: str) -> list[str]:
        """The groups that make up `split` (for split folders; a flat layout is one group, cut later)."""
        if not self.has_splits:
            return [FLAT]
        present = list(self.groups)
        if split == "all":
            return present
        if split not in present:
            raise UserError(f"{self.where} has no {split}/ folder (only {'/, '.join(present)}/): load split "
                            f"{present[0]!r}, or data that has {split}/<class>/ folders")
        return [split]

    def images(self, group: str) -> tuple[list[str], np.ndarray]:
        """Image paths of one group, by class then path, and their class indices [N]."""
        index = {name: i for i, name in enumerate(self.classes)}
        paths: list[str] = []
        labels: list[int] = []
        for name, found in sorted(self.groups[group].items()):
            paths += found
            labels += [index[name]] * len(found)
        return paths, np.asarray(labels, dtype=np.int64)


def _parts(path: str) -> tuple[str, ...]:
    """Components of a relative path; () for hidden, absolute or ".." paths, which are skipped."""
    parts = tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
    if path.startswith("/") or any(p == ".." or p.startswith(".") for p in parts):
        return ()
    return parts
