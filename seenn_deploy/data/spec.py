"""`parse_data_spec`: "kind" or "kind:PATH" -> a `DataSource` (nothing is loaded yet)."""

from __future__ import annotations

from pathlib import Path

from seenn_deploy.data.cifar10 import Cifar10Source
from seenn_deploy.data.digits import DigitsSource
from seenn_deploy.data.imagefolder import ImageFolderSource
from seenn_deploy.data.npz import FashionMnistSource, NpzSource
from seenn_deploy.data.source import DataSource
from seenn_deploy.errors import UserError

SOURCES: dict[str, type[DataSource]] = {
    cls.kind: cls
    for cls in (DigitsSource, FashionMnistSource, NpzSource, ImageFolderSource, Cifar10Source)
}


def known_specs() -> str:
    """The syntax of every spec kind, for messages: "digits, npz:FILE, ..."."""
    return ", ".join(cls.syntax for cls in SOURCES.values())


def parse_data_spec(spec: str) -> DataSource:
    """Parse a data spec; checks that its path exists but reads no data.

    Kinds: digits (bundled 8x8 digits), fashion-mnist:PATH, npz:FILE, imagefolder:DIR,
    cifar10:DIR. A user error names the spec and the accepted syntax.
    """
    kind, colon, arg = spec.strip().partition(":")
    cls = SOURCES.get(kind)
    if cls is None:
        hint = f" (for a file, write npz:{spec})" if spec.endswith(".npz") and not colon else ""
        raise UserError(f"unknown data spec {spec!r}{hint}: use one of {known_specs()}")
    return cls.parse(spec, arg if colon else None)


def same_data(a: str, b: str) -> bool:
    """Whether two specs name the same data set (same kind and resolved path)."""
    (ka, _, pa), (kb, _, pb) = a.strip().partition(":"), b.strip().partition(":")
    return ka == kb and (Path(pa).expanduser().resolve() == Path(pb).expanduser().resolve() if pa and pb else pa == pb)
