"""TFLite writers: litert-torch to an fp32 .tflite file stripped of internal tensor names.
The int8 and fp16 TFLite formats and their recipes are in `quantize`."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..extras import tflite_module
from .base import _quiet, _sample, register_format


@register_format("tflite-fp32", suffix=".tflite", precision="fp32",
                 summary="TFLite via litert-torch, batch 1, int32 ids")
def _tflite_fp32(model: nn.Module, path: Path, recipe: str | None = None, calib=None) -> dict:
    info = _convert_tflite(model, path)
    _strip_tflite(path)
    return info


def _convert_tflite(model: nn.Module, path: Path) -> dict:
    with _quiet():
        litert_torch = tflite_module("litert_torch")  # its import logs through absl to stderr: keep it inside _quiet

        edge = litert_torch.convert(model, (_sample(model),))
        edge.export(str(path))
    return {"batch": 1}


def _strip_tflite(path: Path) -> None:
    """Drop the internal tensor names (the converter's module paths: 8 KB of a 100 KB int8
    student) and empty quantisation tables (1.3 KB). The subgraph's inputs and outputs keep
    their names and the signature is kept, so apps and runtimes see the same interface."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    for sg in model.subgraphs:
        keep = set(sg.inputs) | set(sg.outputs)
        for i, t in enumerate(sg.tensors):
            if i not in keep:
                t.name = None
            q = t.quantization  # an empty table on every float tensor: absent means the same
            if q is not None and not any(len(v) for v in (q.scale, q.zeroPoint, q.min, q.max) if v is not None) \
                    and q.details is None:
                t.quantization = None
    flatbuffer_utils.write_model(model, path)
