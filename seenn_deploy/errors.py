"""Exception roots: `UserError` for bad input (the CLI prints one line, exit 2), `InternalError` for bugs."""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave us is wrong; the message names the problem and the fix."""


class InternalError(Exception):
    """A broken invariant inside seenn-deploy: a bug to report, not a user mistake."""


class MissingDependency(UserError):
    """An optional dependency is not installed."""
