"""ONNX writers: torch.onnx (dynamo) to an fp32 .onnx file stripped of what only the
exporter's debugging needs, and the ONNX Runtime Mobile (.ort) format. The int8 ONNX formats
and their recipes are in `quantize`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import ExportError
from .base import _quiet, _sample, get_recipe, register_format


@register_format("onnx-fp32", suffix=".onnx", precision="fp32",
                 summary="ONNX via torch.onnx (dynamo), dynamic batch, int32 ids")
def _onnx_fp32(model: nn.Module, path: Path, recipe: str | None = None, calib=None) -> dict:
    import warnings

    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            # Traced at batch 2: a batch-1 example lets the exporter treat the batch as the
            # constant 1 wherever it broadcasts (one-row attention queries do), and the file
            # would lose its dynamic batch.
            model, (_sample(model, batch=2),), input_names=["item_ids"], output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True,
            optimize=False, verbose=False)
        # The exporter's own optimisation pass, with one change: constants of more than 256
        # elements are not folded. Folding would turn an int8 table's dequantisation into an
        # fp32 copy beside the original (a larger file for no speed).
        import onnxscript.optimizer

        onnxscript.optimizer.optimize(prog.model, input_size_limit=256)
        prog.save(str(path))
    _strip_onnx(path)
    return {"batch": "dynamic", "opset": _onnx_opset(path)}


def _strip_onnx(path: Path) -> None:
    """Drop what only the exporter's debugging needs and store each constant once:
    - per-node source locations and intermediate shape annotations (a sixth of a small model's
      file, read by no runtime);
    - duplicate initializers (the exporter can emit the same constant twice, e.g. an int8
      table's row scales for the lookup and for the scoring layer): one copy, rewired;
    - long internal names (module paths, repeated in every node): short ones. The graph's
      inputs and outputs keep their names; they are the model's interface."""
    import hashlib

    import onnx

    m = onnx.load(str(path))
    g = m.graph
    for node in g.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
        node.name = ""
    g.ClearField("value_info")
    # one copy of each distinct constant
    rename: dict[str, str] = {}
    first: dict[tuple, str] = {}
    keep = []
    for t in g.initializer:
        key = (t.data_type, tuple(t.dims), hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
            keep.append(t)
    if rename:
        g.ClearField("initializer")
        g.initializer.extend(keep)
    # short names for everything internal
    interface = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def name(n: str) -> str:
        n = rename.get(n, n)
        if not n or n in interface:
            return n
        if n not in short:
            short[n] = f"t{len(short)}"
        return short[n]

    for t in g.initializer:
        t.name = name(t.name)
    for node in g.node:
        ins, outs = [name(i) for i in node.input], [name(o) for o in node.output]
        node.ClearField("input")
        node.input.extend(ins)
        node.ClearField("output")
        node.output.extend(outs)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _onnx_opset(path: Path) -> int | None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)



@register_format("onnx-mobile", suffix=".ort", precision="int8", family="onnx", recipe="dynamic",
                 summary="ONNX Runtime Mobile: the onnx-int8 model in ORT format, plus the "
                         "required-operators config for a reduced ORT build")
def _onnx_mobile(model: nn.Module, path: Path, recipe: str | None = None, calib=None) -> dict:
    import subprocess

    src = path.with_name("model.onnx")
    info = get_recipe("onnx", recipe or "dynamic").fn(model, src, calib)
    outdir = path.parent / "ort"
    p = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                        "--output_dir", str(outdir), "--optimization_style", "Fixed"],
                       capture_output=True, text=True)
    ort_files = sorted(outdir.glob("*.ort"))
    configs = sorted(outdir.glob("*.config"))
    if p.returncode != 0 or not ort_files or not configs:
        raise ExportError(f"ORT format conversion failed: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
    os.replace(ort_files[0], path)
    os.replace(configs[0], path.with_name("required_operators.config"))
    src.unlink()
    return {**info, "extra_files": ["required_operators.config"],
            "ort_format": {"optimization_style": "Fixed", "required_operators": "required_operators.config",
                           "reduced_build": "build ORT with --minimal_build --include_ops_by_config "
                                            "required_operators.config"}}
