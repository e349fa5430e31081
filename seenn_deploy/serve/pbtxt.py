"""Protobuf text format (what Triton's `config.pbtxt` is written in) from plain Python values.

Triton's model configuration is the `ModelConfig` protobuf; writing it from dicts keeps the
repository generator free of protobuf and tritonclient. Tests parse every file written here
back into `ModelConfig` (tritonclient ships `model_config_pb2`), which is the check that counts.

    {"name": "m", "dims": [1, 2], "dynamic_batching": {}}  ->  name: "m"\ndims: [1, 2]\ndynamic_batching {\n}
"""

from __future__ import annotations

import json
import math
from typing import Any

from seenn_deploy.errors import InternalError

INDENT = "  "


class Enum(str):
    """An enum value (TYPE_FP32, KIND_CPU): written bare, where a plain str is written quoted."""


def to_pbtxt(message: dict[str, Any]) -> str:
    """The text format of `message`: a dict of field -> scalar, list of scalars, dict (message) or list of dicts."""
    return "".join(_fields(message, 0))


def _fields(message: dict[str, Any], depth: int):
    pad = INDENT * depth
    for name, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            yield from _message(pad, name, value, depth)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:  # a repeated message: one block per entry
                yield from _message(pad, name, item, depth)
        elif isinstance(value, list):
            yield f"{pad}{name}: [{', '.join(_scalar(v) for v in value)}]\n"
        else:
            yield f"{pad}{name}: {_scalar(value)}\n"


def _message(pad: str, name: str, value: dict[str, Any], depth: int):
    yield f"{pad}{name} {{\n"
    yield from _fields(value, depth + 1)
    yield f"{pad}}}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InternalError(f"{value} has no place in a Triton model configuration")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a quoted string with escapes protobuf's text format reads back
    raise InternalError(f"cannot write {type(value).__name__} {value!r} in protobuf text format")
