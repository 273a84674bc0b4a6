"""Export a torch artifact to ONNX or TFLite, checked for parity before anything is written.

Formats are registered by name (`edgekd list formats`). Each writes one file from a torch
model; the shared `export` then runs that file in its own runtime on real validation
sequences, compares it with the torch parent (max abs difference, top-10 overlap, NDCG@10)
and only then saves the artifact. An fp32 export that breaks parity is an error.

The rooms:
- base.py: the format and recipe registries, shared by every writer;
- onnx.py, tflite.py: the fp32 writers of each runtime (and the ORT Mobile format);
- quantize.py: the quantised formats, their recipes and the `quantize` stage
  (`from edgekd.export.quantize import quantize`);
- parity.py: the parity checks and the validation sequences they (and calibration) use;
- stage.py: `export`, the stage itself.
"""
from __future__ import annotations

from . import onnx, quantize, tflite  # noqa: F401  (their formats and recipes register on import)
from .base import Format, Recipe, get_format, get_recipe, list_formats, list_recipes, register_format, register_recipe
from .parity import TopKHead, parity, run_all_outputs, topk_parity
from .stage import export

__all__ = ["Format", "Recipe", "TopKHead", "export", "get_format", "get_recipe", "list_formats", "list_recipes",
           "parity", "register_format", "register_recipe", "run_all_outputs", "topk_parity"]
