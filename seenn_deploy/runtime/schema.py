"""Strict JSON for the bundle's files, checked against the JSON Schemas shipped beside this module.

`bundle.schema.json` (manifest.json) and `engine.schema.json` (engine records) are the format's
documentation and its validation at once: `jsonschema` checks types, ranges, lengths and enums,
and a failure names the field and its value. What a schema cannot say (cross-field rules) is
checked by the module that reads the file. Input is untrusted: the size, the nesting depth and
every number are bounded before anything recurses over it, so a hostile file gives a UserError,
never a RecursionError, MemoryError or a NaN that compares false.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from seenn_deploy.errors import UserError

MANIFEST_SCHEMA = "bundle.schema.json"
ENGINE_SCHEMA = "engine.schema.json"
MAX_BYTES = 16 << 20  # a manifest of a 4096-state model is ~1 MB
MAX_DEPTH = 32  # objects and arrays within each other; manifests use 4
_SHOWN = 160  # characters of a bad value quoted in a message


@functools.lru_cache(maxsize=None)
def schema(name: str) -> dict[str, Any]:
    """A shipped schema as a dict (package data of seenn_deploy.runtime)."""
    return json.loads(resources.files("seenn_deploy.runtime").joinpath(name).read_text())


def _is_number(checker, value) -> bool:
    """JSON numbers are finite: NaN and +-Infinity are not numbers here (they pass every range check)."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)


def _is_integer(checker, value) -> bool:
    return _is_number(checker, value) and (isinstance(value, int) or value.is_integer())


def _is_array(checker, value) -> bool:
    """Lists, and the tuples a dataclass's asdict() keeps (a manifest is checked before it is written)."""
    return isinstance(value, (list, tuple))


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema  # a core dependency; imported on first use to keep `import seenn_deploy.runtime` quick

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many({"number": _is_number, "integer": _is_integer, "array": _is_array})
    return jsonschema.validators.extend(base, type_checker=checker)(schema(name))


def _field(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def shown(value: Any) -> str:
    """A value for a message: scalars as repr (cut short), containers by kind (their repr may be huge or deep)."""
    if isinstance(value, (dict, list, tuple)):
        return f"an object of {len(value)} keys" if isinstance(value, dict) else f"an array of {len(value)} items"
    return _short(repr(value))


def check_tree(data: Any, where: str, fix: str) -> None:
    """Bounded nesting, string keys, finite floats: what strict JSON holds. Iterative, so any input is safe."""
    stack = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: {_field(path)} is {value}, not a finite number: {fix}")
        if not isinstance(value, (dict, list, tuple)):
            continue
        if depth > MAX_DEPTH:
            raise UserError(f"{where} nests objects and arrays more than {MAX_DEPTH} deep (at {_field(path)}): {fix}")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise UserError(f"{where}: {_field(path)} has a key {key!r} that is not a string: {fix}")
                stack.append((item, depth + 1, (*path, key)))
        else:
            stack.extend((item, depth + 1, (*path, i)) for i, item in enumerate(value))


def check_header(d: Any, where: str, fmt: str, version: int, kind: str, fix: str, version_fix: str) -> None:
    """UserError unless `d` is a JSON object whose "format" is `fmt` and "version" is `version`.

    kind names the record in messages ("bundle manifest", "engine record"); version_fix says what
    to do with another version of the format.
    """
    if not isinstance(d, dict):
        raise UserError(f"{where} is not a JSON object: {fix}")
    if d.get("format") != fmt:
        raise UserError(f"{where} is not a seenn-deploy {kind} (format {shown(d.get('format'))}): {fix}")
    if d.get("version") != version or isinstance(d.get("version"), bool):
        raise UserError(f"{where} has {kind} version {shown(d.get('version'))}; this seenn-deploy reads version "
                        f"{version}: {version_fix}")


def validate(data: Any, name: str, where: str, fix: str) -> None:
    """UserError naming the field, the bad value and `fix` unless `data` satisfies schema `name`."""
    check_tree(data, where, fix)
    error = next(_validator(name).iter_errors(data), None)  # the first: checking on costs ~50 us per list item
    if error is not None:
        raise UserError(f"{where}: {_field(error.absolute_path)}: {_short(error.message)}: {fix}")


def _no_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def parse_json(text: str, where: str, fix: str) -> Any:
    """json.loads without NaN / Infinity tokens, with deep nesting a UserError (the parser itself recurses)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise UserError(f"{where} nests objects and arrays too deeply to read: {fix}") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers too long to convert
        raise UserError(f"{where} is not valid JSON ({_short(str(exc))}): {fix}") from None


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in `path` (at most MAX_BYTES); UserError naming the file and ending in `fix` otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}): {fix}") from None
    if len(raw) > MAX_BYTES:
        raise UserError(f"{path} is larger than {MAX_BYTES >> 20} MiB, far more than this file holds: {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): {fix}") from None
    data = parse_json(text, str(path), fix)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object: {fix}")
    return data
