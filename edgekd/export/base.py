"""What every export writer shares: the registries of formats (`edgekd list formats`) and of
quantisation recipes (`edgekd list recipes`), the quiet context for the converters' chatter,
and the sample input a model is traced with."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError



@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    precision: str  # "fp32", "fp16" or "int8"
    writer: Callable[..., dict]  # writer(model, path, recipe=None, calib=None) -> info
    summary: str
    family: str = ""  # "onnx" or "tflite": the family whose quantisation recipes apply
    recipe: str | None = None  # the default recipe of a quantised format


_FORMATS: dict[str, Format] = {}


def register_format(name: str, *, suffix: str, precision: str, summary: str, family: str = "",
                    recipe: str | None = None):
    def deco(writer):
        _FORMATS[name] = Format(name, suffix, precision, writer, summary, family, recipe)
        return writer
    return deco


@dataclass(frozen=True)
class Recipe:
    """One way to quantise a model for a runtime family; `fn(model, path, calib)`."""

    family: str
    name: str
    precision: str
    calibrated: bool
    fn: Callable[..., dict]
    summary: str


_RECIPES: dict[tuple[str, str], Recipe] = {}


def register_recipe(family: str, name: str, *, precision: str = "int8", calibrated: bool = False, summary: str):
    def deco(fn):
        _RECIPES[(family, name)] = Recipe(family, name, precision, calibrated, fn, summary)
        return fn
    return deco


def list_recipes(family: str | None = None) -> list[Recipe]:
    return [r for k, r in sorted(_RECIPES.items()) if family in (None, r.family)]


def get_recipe(family: str, name: str) -> Recipe:
    if (family, name) not in _RECIPES:
        names = ", ".join(r.name for r in list_recipes(family))
        raise ConfigError(f"unknown {family} quantisation recipe {name!r}; {family} recipes: {names}")
    return _RECIPES[(family, name)]


def list_formats() -> list[Format]:
    return [_FORMATS[k] for k in sorted(_FORMATS)]


def get_format(name: str) -> Format:
    if name not in _FORMATS:
        raise ConfigError(f"unknown export target {name!r}; export formats: {', '.join(sorted(_FORMATS))} "
                          "(devices such as local-cpu are for `edgekd bench --target`)")
    return _FORMATS[name]


@contextlib.contextmanager
def _quiet():
    """The converters print progress from Python and from C++ (absl) to stdout/stderr and the
    root logger; capture all of it at the file-descriptor level to keep our output readable.
    Set EDGEKD_DEBUG=1 to see it."""
    if os.environ.get("EDGEKD_DEBUG"):
        yield None
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            root.setLevel(level)


def _sample(model: nn.Module, batch: int = 1) -> torch.Tensor:
    # Real-looking ids so tracing sees no special case; int32 is what apps pass.
    return torch.ones(batch, model.maxlen, dtype=torch.int32)


def _quantised(family: str):
    """The writer of a quantised format: export, then apply the chosen recipe of `family`."""
    def writer(model: nn.Module, path: Path, recipe: str | None = None, calib=None) -> dict:
        return get_recipe(family, recipe).fn(model, path, calib)
    return writer
