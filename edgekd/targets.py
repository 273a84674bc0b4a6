"""Benchmark targets: devices described by TOML files in targets/ (`edgekd list targets`)."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

KINDS = ("local",)  # ssh (Raspberry Pi) and adb (Android) are planned; see the README
SEARCH_PATH = [Path("targets"), Path(__file__).resolve().parent.parent / "targets"]
RUNTIME_CHOICES = {"onnx": ("onnxruntime",), "tflite": ("litert", "tflite-runtime", "tflite"),
                   "torch": ("torch",)}
BUILTIN = {"local-cpu": {"kind": "local", "description": "the host CPU, one thread", "threads": 1}}


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    description: str = ""
    threads: int = 1
    runtimes: dict = field(default_factory=lambda: {"onnx": "onnxruntime", "tflite": "litert", "torch": "torch"})
    warmup: int = 20
    min_runs: int = 300
    min_seconds: float = 3.0
    timeout_s: float = 900.0
    source: str = "built-in"


def _fail(src: str, field_name: str, msg: str) -> ConfigError:
    return ConfigError(f"{src}: field {field_name!r} {msg}")


def target_from_dict(name: str, raw: dict, source: str) -> Target:
    known = {f for f in Target.__dataclass_fields__ if f not in ("name", "source")}
    for key in raw:
        if key not in known:
            raise _fail(source, key, f"is not a target field; known fields: {', '.join(sorted(known))}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(source, "kind", f"is {kind!r}; this version supports: {', '.join(KINDS)}")
    for key, typ, lo in (("threads", int, 1), ("warmup", int, 0), ("min_runs", int, 1),
                         ("min_seconds", (int, float), 0), ("timeout_s", (int, float), 1)):
        if key in raw and (not isinstance(raw[key], typ) or isinstance(raw[key], bool) or raw[key] < lo):
            raise _fail(source, key, f"must be a number >= {lo}, got {raw[key]!r}")
    runtimes = dict(Target.__dataclass_fields__["runtimes"].default_factory())
    for fmt, rt in (raw.get("runtimes") or {}).items():
        if fmt not in RUNTIME_CHOICES or rt not in RUNTIME_CHOICES[fmt]:
            allowed = "; ".join(f"{k} = {' | '.join(v)}" for k, v in RUNTIME_CHOICES.items())
            raise _fail(source, f"runtimes.{fmt}", f"is {rt!r}; allowed: {allowed}")
        runtimes[fmt] = rt
    return Target(name=name, source=source, **{**raw, "runtimes": runtimes})


def list_targets() -> dict[str, str]:
    found = {}
    for d in SEARCH_PATH:
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, str(p))
    for name in BUILTIN:
        found.setdefault(name, "built-in")
    return found


def load_target(name: str) -> Target:
    """A target by name (targets/<name>.toml) or by path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        path = p
    else:
        path = next((d / f"{name}.toml" for d in SEARCH_PATH if (d / f"{name}.toml").is_file()), None)
    if path is None:
        if name in BUILTIN:
            return target_from_dict(name, BUILTIN[name], "built-in")
        raise ConfigError(f"unknown bench target {name!r}; targets: {', '.join(list_targets())} "
                          "(formats such as onnx-int8 are for `edgekd export --target`)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return target_from_dict(path.stem, raw, str(path))
