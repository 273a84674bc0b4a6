"""Optional dependencies. TFLite conversion (litert-torch, ai-edge-quantizer) is the
`edgekd[tflite]` extra: it pulls jax, transformers and more, which the ONNX path and the
TFLite runtime (ai-edge-litert, a base dependency) do not need. Charts (matplotlib) are the
`edgekd[report]` extra: without it reports are tables. Vectorised reading of interaction files
(pyarrow) is the `edgekd[large]` extra: without it files are read line by line."""
from __future__ import annotations

import importlib
import importlib.util

from .errors import ExportError

TFLITE_CONVERSION = ("litert_torch", "ai_edge_quantizer")
TFLITE_HINT = "install the extra: pip install 'edgekd[tflite]'"
REPORT_HINT = "pip install 'edgekd[report]'"
LARGE_HINT = "pip install 'edgekd[large]'"
SERVE = ("fastapi", "uvicorn", "prometheus_client")
SERVE_HINT = "pip install 'edgekd[serve]'"


def require_serve() -> None:
    """`edgekd serve` needs the [serve] extra: a one-line error naming it, not an ImportError."""
    from .errors import ConfigError

    missing = [m for m in SERVE if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"edgekd serve needs the serve extra ({', '.join(missing)} not installed)", hint=SERVE_HINT)


def charts_available() -> bool:
    """Is matplotlib (the [report] extra) installed?"""
    return importlib.util.find_spec("matplotlib") is not None


def arrow_available() -> bool:
    """Is pyarrow (the [large] extra) installed?"""
    return importlib.util.find_spec("pyarrow") is not None


def tflite_available() -> bool:
    """Are the TFLite conversion packages installed?"""
    return all(importlib.util.find_spec(m) is not None for m in TFLITE_CONVERSION)


def tflite_module(name: str):
    """import_module(name) for a TFLite conversion module: without the extra, an ExportError
    that names it, not an ImportError from deep inside an export."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TFLITE_CONVERSION:
            raise
        raise ExportError(f"TFLite conversion needs {e.name.split('.')[0].replace('_', '-')}: {TFLITE_HINT}") from None
