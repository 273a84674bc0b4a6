"""Errors the library raises. The CLI prints one line for each and exits with its code.

Exit codes (docs/design.md): 0 ok, 1 failed, 2 usage, 3 target unreachable, 130 interrupted.
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


class TrainingError(EdgeKDError):
    """A training run that diverged (a non-finite loss or weights): nothing is saved."""


class EdgeKDWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints one line)."""


def require_finite(cfg) -> None:
    """ConfigError for the first float setting of a dataclass config that is NaN or infinite."""
    import dataclasses
    import math

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"{f.name} must be a finite number, got {x}")


def last_line(text: bytes | str | None) -> str:
    """The last non-blank line of a tool's output (bytes are decoded), for a one-line error."""
    if not text:
        return ""
    s = text.decode(errors="replace") if isinstance(text, bytes) else text
    lines = [line.strip() for line in s.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
