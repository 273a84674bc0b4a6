"""Export a torch artifact to ONNX or TFLite, checked for parity before anything is written.

Formats are registered by name (`edgekd list formats`). Each writes one file from a torch
model; the shared `export` then runs that file in its own runtime on real validation
sequences, compares it with the torch parent (max abs difference, top-10 overlap, NDCG@10)
and only then saves the artifact. An fp32 export that breaks parity is an error.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .artifact import DEFAULT_STORE, Artifact, save_artifact
from .data import Dataset
from .errors import ConfigError, ExportError
from .metrics import evaluate_scores
from .train import dataset_card, dataset_for, eval_inputs, input_spec, load_torch_model, model_scores, output_spec

# fp32 parity: the export must rank like its parent on validation users.
FP32_MIN_TOP10_OVERLAP = 0.99
FP32_MAX_ABS_DIFF = 1e-3


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    precision: str  # "fp32" or "int8"
    writer: Callable[[nn.Module, Path, int], dict]
    summary: str


_FORMATS: dict[str, Format] = {}


def register_format(name: str, *, suffix: str, precision: str, summary: str):
    def deco(writer):
        _FORMATS[name] = Format(name, suffix, precision, writer, summary)
        return writer
    return deco


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


def _sample(maxlen: int, batch: int = 1) -> torch.Tensor:
    # Real-looking ids so tracing sees no special case; int32 is what apps pass.
    return torch.ones(batch, maxlen, dtype=torch.int32)


# ---------------------------------------------------------------- ONNX

@register_format("onnx-fp32", suffix=".onnx", precision="fp32",
                 summary="ONNX via torch.onnx (dynamo), dynamic batch, int32 ids")
def _onnx_fp32(model: nn.Module, path: Path, maxlen: int) -> dict:
    import warnings

    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model, (_sample(maxlen),), input_names=["item_ids"], output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True,
            optimize=True, verbose=False)
        prog.save(str(path))
    _strip_onnx(path)
    return {"batch": "dynamic", "opset": _onnx_opset(path)}


def _strip_onnx(path: Path) -> None:
    """Drop what only the exporter's debugging needs (per-node source locations, intermediate
    shape annotations): it is a sixth of a small model's file and no runtime reads it."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
    m.graph.ClearField("value_info")
    onnx.save(m, str(path))


def _onnx_opset(path: Path) -> int | None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


@register_format("onnx-int8", suffix=".onnx", precision="int8",
                 summary="ONNX with dynamic int8 weights (onnxruntime.quantization.quantize_dynamic)")
def _onnx_int8(model: nn.Module, path: Path, maxlen: int) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name("fp32-" + path.name)
    info = _onnx_fp32(model.with_int8_tables(), fp32, maxlen)
    with _quiet():
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=False)
    fp32.unlink()
    _strip_onnx(path)
    return {**info, "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic",
                                     "weights": "int8", "activations": "fp32 (quantized on the fly)",
                                     "embedding_tables": "int8, one scale per row (edgekd)"}}


@register_format("onnx-mobile", suffix=".ort", precision="int8",
                 summary="ONNX Runtime Mobile: the onnx-int8 model in ORT format, plus the "
                         "required-operators config for a reduced ORT build")
def _onnx_mobile(model: nn.Module, path: Path, maxlen: int) -> dict:
    import subprocess

    src = path.with_name("model.onnx")
    info = _onnx_int8(model, src, maxlen)
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


def required_operators(config: Path) -> set[tuple[str, str]]:
    """(domain, op) pairs named by an ORT required-operators config
    (lines: `domain;opset;Op1,Op2,...`)."""
    ops = set()
    for line in Path(config).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, _, names = line.split(";", 2)
        ops |= {(domain, n.strip()) for n in names.split(",") if n.strip()}
    return ops


# ---------------------------------------------------------------- TFLite

@register_format("tflite-fp32", suffix=".tflite", precision="fp32",
                 summary="TFLite via litert-torch, batch 1, int32 ids")
def _tflite_fp32(model: nn.Module, path: Path, maxlen: int) -> dict:
    with _quiet():
        import litert_torch  # its import logs through absl to stderr: keep it inside _quiet

        edge = litert_torch.convert(model, (_sample(maxlen),))
        edge.export(str(path))
    return {"batch": 1}


@register_format("tflite-int8", suffix=".tflite", precision="int8",
                 summary="TFLite with int8 weights (ai-edge-quantizer weight_only_wi8_afp32)")
def _tflite_int8(model: nn.Module, path: Path, maxlen: int) -> dict:
    from ai_edge_quantizer import quantizer, recipe

    fp32 = path.with_name("fp32-" + path.name)
    # No edgekd int8 tables here: the converter would fold their dequantisation back into
    # float constants. The quantizer stores the item table (shared by the lookup and the
    # scoring layer) and the position table (a lookup) in int8 itself.
    info = _tflite_fp32(model, fp32, maxlen)
    with _quiet():
        q = quantizer.Quantizer(str(fp32))
        # Weight-only, not dynamic_wi8_afp32: the dynamic recipe's hybrid kernels give wrong
        # scores in tflite-runtime 2.14 (what older devices run; NDCG@10 0.002 instead of 0.100
        # on MovieLens-100k, see benchmarks/tflite_runtime_compat.py), weight-only is right in
        # both, the same size, and as fast in ai-edge-litert.
        q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
        q.quantize().export_model(str(path), overwrite=True)
    fp32.unlink()
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight_only_wi8_afp32",
                                     "weights": "int8 (embedding tables included)", "activations": "fp32"}}


@register_format("tflite-fp16", suffix=".tflite", precision="fp16",
                 summary="TFLite with fp16 weights, fp32 compute (ai-edge-quantizer float casting)")
def _tflite_fp16(model: nn.Module, path: Path, maxlen: int) -> dict:
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    fp32 = path.with_name("fp32-" + path.name)
    info = _tflite_fp32(model, fp32, maxlen)
    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    with _quiet():
        q = quantizer.Quantizer(str(fp32))
        q.load_quantization_recipe(rm.get_quantization_recipe())
        q.quantize().export_model(str(path), overwrite=True)
    fp32.unlink()
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight-only float casting",
                                     "weights": "fp16", "activations": "fp32"}}


@register_format("tflite-dynamic-int8", suffix=".tflite", precision="int8",
                 summary="TFLite dynamic range: int8 weights, int8 hybrid kernels (ai-edge-quantizer "
                         "dynamic_wi8_afp32); wrong results in tflite-runtime 2.14")
def _tflite_dynamic_int8(model: nn.Module, path: Path, maxlen: int) -> dict:
    from ai_edge_quantizer import quantizer, recipe

    fp32 = path.with_name("fp32-" + path.name)
    info = _tflite_fp32(model, fp32, maxlen)
    with _quiet():
        q = quantizer.Quantizer(str(fp32))
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        q.quantize().export_model(str(path), overwrite=True)
    fp32.unlink()
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "dynamic_wi8_afp32",
                                     "weights": "int8", "activations": "fp32, quantised on the fly by hybrid kernels",
                                     "compatibility": "ai-edge-litert; tflite-runtime 2.14 computes wrong scores "
                                                      "(benchmarks/tflite_runtime_compat.py)"}}


# ---------------------------------------------------------------- in-graph top-K

class TopKHead(nn.Module):
    """The model followed by top-K in the graph: returns the K best item indices (int32,
    column indices into vocab.json's items) and their scores, best first, instead of a score
    per item. Seen items are not excluded in the graph; an app filters them."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, int(k)
        self.maxlen = model.maxlen

    def forward(self, ids: torch.Tensor):
        values, idx = torch.topk(self.model(ids), self.k, dim=-1)
        return idx.to(torch.int32), values

    def with_int8_tables(self) -> "TopKHead":
        return TopKHead(self.model.with_int8_tables(), self.k)


def run_all_outputs(file: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of an exported model, by dtype kind ('items' int, 'scores' float), one row
    at a time where the batch is fixed."""
    if file.suffix in (".onnx", ".ort"):
        import onnxruntime as ort

        s = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        outs = s.run(None, {s.get_inputs()[0].name: ids.astype(np.int32)})
    else:
        from .device_runner import _tflite_interpreter

        cls, _, _ = _tflite_interpreter("auto")
        it = cls(model_path=str(file))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        rows = []
        for r in ids:
            it.set_tensor(inp["index"], r[None].astype(np.int32))
            it.invoke()
            rows.append([it.get_tensor(o["index"]) for o in it.get_output_details()])
        outs = [np.concatenate([row[j] for row in rows]) for j in range(len(rows[0]))]
    return {("items" if np.issubdtype(o.dtype, np.integer) else "scores"): o for o in outs}


def topk_parity(parent: nn.Module, file: Path, ds: Dataset, k: int, users: int | None = 1000) -> dict:
    """The in-graph top-K against torch's top-K of the parent's full scores."""
    x, _, _ = eval_inputs(ds, "valid", parent.maxlen, users)
    ref = np.argsort(-model_scores(parent, x), axis=1, kind="stable")[:, :k]
    got = run_all_outputs(file, x)["items"]
    same = (got == ref).all(1)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got.tolist(), ref.tolist())])
    return {"split": "valid", "users": int(len(x)), "k": k, "identical_topk_users": float(same.mean()),
            "topk_overlap": float(overlap)}


# ---------------------------------------------------------------- the stage

def parity(parent: nn.Module, file: Path, ds: Dataset, users: int | None = 1000) -> dict:
    """Compare an exported file with its torch parent on validation sequences."""
    from .device_runner import load_model, run_batched

    x, targets, hist = eval_inputs(ds, "valid", parent.maxlen, users)
    with _quiet():  # TFLite announces its XNNPACK delegate on stderr
        exported = load_model(str(file), "auto", threads=os.cpu_count() or 1)
    ref_scores = model_scores(parent, x)
    exp_scores = run_batched(exported, x)
    ref, ref_top = evaluate_scores(lambda b: model_scores(parent, b), x, targets, hist, sampled=False)
    got, _ = evaluate_scores(lambda b: run_batched(exported, b), x, targets, hist, sampled=False,
                             reference_topk=ref_top)
    return {
        "split": "valid", "users": int(len(x)),
        "max_abs_diff": float(np.max(np.abs(exp_scores - ref_scores))),
        "top10_overlap": got["top10_overlap"],
        "ndcg@10": got["ndcg@10"], "parent_ndcg@10": ref["ndcg@10"],
        "ndcg@10_rel_change": (got["ndcg@10"] - ref["ndcg@10"]) / ref["ndcg@10"] if ref["ndcg@10"] else 0.0,
        "hr@10": got["hr@10"], "parent_hr@10": ref["hr@10"],
        "runtime": exported.runtime, "runtime_version": exported.version,
    }


def export(a: Artifact, fmt: str, *, store: Path = DEFAULT_STORE, name: str | None = None,
           ds: Dataset | None = None, parity_users: int | None = 1000, topk: int | None = None) -> Artifact:
    """Export torch artifact `a` to `fmt`; writes nothing unless parity holds. With `topk`,
    the graph ends in top-K and returns item indices and scores."""
    spec = get_format(fmt)
    model = load_torch_model(a)
    if topk is not None and not 1 <= topk <= model.num_items:
        raise ConfigError(f"--topk must be between 1 and the {model.num_items} items, got {topk}")
    ds = ds if ds is not None else dataset_for(a)
    maxlen = model.maxlen
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
        out = Path(tmp) / ("model" + spec.suffix)
        try:
            info = spec.writer(TopKHead(model, topk) if topk else model, out, maxlen)
        except Exception as e:  # a converter failure: say which and keep its message
            raise ExportError(f"{fmt} export of {a.name} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
        if topk:
            check = topk_parity(model, out, ds, topk, users=parity_users)
            if spec.precision == "fp32" and check["topk_overlap"] < FP32_MIN_TOP10_OVERLAP:
                raise ExportError(f"{fmt} top-{topk} export of {a.name} returns other items than torch: "
                                  f"overlap {check['topk_overlap']:.3f}; nothing written")
        else:
            check = parity(model, out, ds, users=parity_users)
        if not topk and spec.precision == "fp32" and (check["top10_overlap"] < FP32_MIN_TOP10_OVERLAP
                                                      or check["max_abs_diff"] > FP32_MAX_ABS_DIFF):
            raise ExportError(
                f"{fmt} export of {a.name} breaks parity with torch: top-10 overlap "
                f"{check['top10_overlap']:.3f} (need >= {FP32_MIN_TOP10_OVERLAP}), max abs diff "
                f"{check['max_abs_diff']:.2e} (need <= {FP32_MAX_ABS_DIFF:g}); nothing written")
        batch = info.pop("batch")
        extra = info.pop("extra_files", [])
        from .inspection import inspect_path

        # The signature as the file itself states it (TFLite names its tensors itself).
        seen = inspect_path(out)
        card_sig = {"inputs": seen["inputs"], "outputs": seen["outputs"], "quantization": seen["quantization"],
                    "operators": seen["operators"]}
        card = {
            "stage": "exported", "format": fmt, "precision": spec.precision,
            "arch": a.card["arch"], "arch_kwargs": a.card["arch_kwargs"], "params": a.card.get("params"),
            "input_spec": input_spec(maxlen, "int32", "batch" if batch == "dynamic" else batch,
                                     name=seen["inputs"][0]["name"]),
            "output_spec": (output_spec(ds.num_items, "batch" if batch == "dynamic" else batch,
                                        name=seen["outputs"][0]["name"]) if not topk else
                            [{"name": o["name"], "shape": o["shape"], "dtype": o["dtype"],
                              "meaning": ("the top-K item indices, best first; vocab.json items[i]"
                                          if "int" in o["dtype"] else "their scores")} for o in seen["outputs"]]),
            "topk": topk,
            "signature": card_sig,
            "config": {"export": {"target": fmt, **info}},
            "parent": [a.lineage()], "metrics": {"parity": check},
            "dataset": dataset_card(ds), "seed": a.card.get("seed"),
        }
        def write(p: Path) -> None:
            shutil.copyfile(out, p)
            for f in extra:  # files an app or a build needs beside the model
                shutil.copyfile(out.with_name(f), p.with_name(f))

        default = f"{a.name}-{fmt}" + (f"-top{topk}" if topk else "")
        return save_artifact(store, name or default, out.name, write, card, a.vocab())
