"""Errors the library raises. The CLI prints one line for each and exits with its code.

Exit codes (DESIGN.md): 0 ok, 1 failed, 2 usage, 3 target unreachable.
"""
from __future__ import annotations


class EdgeKDError(Exception):
    """Base of every error edgekd raises on purpose. `hint` is the next step for the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ConfigError(EdgeKDError, ValueError):
    """A bad option or config value: names the field, the value and what is allowed."""

    exit_code = 2


class DataError(EdgeKDError):
    """Malformed or unusable input data: names the file and line."""


class ArtifactError(EdgeKDError):
    """A missing, corrupt or mismatched artifact."""


class ExportError(EdgeKDError):
    """An export that failed or broke parity with its torch parent."""


class TargetError(EdgeKDError):
    """A benchmark target that is unreachable or misconfigured."""

    exit_code = 3


class BenchError(EdgeKDError):
    """A benchmark run that failed on a reachable target."""
