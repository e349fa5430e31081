"""`DataSource`: a parsed data spec that loads a split on demand (template method)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from seenn_deploy.data.dataset import ArrayDataset, check_loaded, check_split
from seenn_deploy.errors import UserError


class DataSource:
    """One data spec, parsed but not loaded. Subclasses implement `_load` and set `kind`/`syntax`."""

    kind: ClassVar[str] = ""
    syntax: ClassVar[str] = ""  # e.g. "npz:FILE", shown when a spec is wrong

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @classmethod
    def parse(cls, spec: str, arg: str | None) -> DataSource:
        """Build the source from the part of the spec after "kind:" (None when there is no colon)."""
        if arg is not None:
            raise UserError(f"data spec {spec!r} takes no argument: write just {cls.syntax!r}")
        return cls(spec)

    def load(self, split: str = "test") -> ArrayDataset:
        """Read `split` (one of SPLITS) into memory; UserError when it holds no samples or NaN/Inf values."""
        check_split(split, self.spec)
        data = self._load(split)
        check_loaded(data, self.spec)
        return data

    def _load(self, split: str) -> ArrayDataset:
        raise NotImplementedError

    def dataset_name(self, split: str) -> str:
        return f"{self.spec} ({split})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class PathSource(DataSource):
    """A source read from a path; parsing checks that the path exists and has the right type."""

    path_kind: ClassVar[str] = "file"  # "file", "dir" or "file or dir"

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec)
        self.path = path

    @classmethod
    def parse(cls, spec: str, arg: str | None) -> DataSource:
        if not arg:
            raise UserError(f"data spec {spec!r} needs a path: write {cls.syntax!r}")
        path = Path(arg).expanduser()
        if not path.exists():
            raise UserError(f"data path {path} does not exist (from spec {spec!r}): check the path")
        ok = {"file": path.is_file(), "dir": path.is_dir(), "file or dir": True}[cls.path_kind]
        if not ok:
            raise UserError(f"data path {path} is not a {cls.path_kind} (from spec {spec!r}): "
                            f"write {cls.syntax!r}")
        return cls(spec, path.resolve())
