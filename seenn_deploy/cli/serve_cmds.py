"""Commands that serve a bundle past one process: `triton` (a model repository) and `serve` (a running Triton)."""

from __future__ import annotations
