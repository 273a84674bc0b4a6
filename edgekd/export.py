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
from .errors import ConfigError, EdgeKDError, ExportError
from .metrics import evaluate_scores
from .train import dataset_card, dataset_for, eval_inputs, input_spec, load_torch_model, model_scores, output_spec

# fp32 parity: the export must rank like its parent on validation users.
FP32_MIN_TOP10_OVERLAP = 0.99
FP32_MAX_ABS_DIFF = 1e-3


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    precision: str  # "fp32", "fp16" or "int8"
    writer: Callable[..., dict]  # writer(model, path, maxlen, recipe=None, calib=None) -> info
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
    """One way to quantise a model for a runtime family; `fn(model, path, maxlen, calib)`."""

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


def _sample(maxlen: int, batch: int = 1) -> torch.Tensor:
    # Real-looking ids so tracing sees no special case; int32 is what apps pass.
    return torch.ones(batch, maxlen, dtype=torch.int32)


# ---------------------------------------------------------------- ONNX

@register_format("onnx-fp32", suffix=".onnx", precision="fp32",
                 summary="ONNX via torch.onnx (dynamo), dynamic batch, int32 ids")
def _onnx_fp32(model: nn.Module, path: Path, maxlen: int, recipe: str | None = None, calib=None) -> dict:
    import warnings

    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            # Traced at batch 2: a batch-1 example lets the exporter treat the batch as the
            # constant 1 wherever it broadcasts (one-row attention queries do), and the file
            # would lose its dynamic batch.
            model, (_sample(maxlen, batch=2),), input_names=["item_ids"], output_names=["scores"],
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


def _quantised(family: str):
    """The writer of a quantised format: export, then apply the chosen recipe of `family`."""
    def writer(model: nn.Module, path: Path, maxlen: int, recipe: str | None = None, calib=None) -> dict:
        return get_recipe(family, recipe).fn(model, path, maxlen, calib)
    return writer


register_format("onnx-int8", suffix=".onnx", precision="int8", family="onnx", recipe="dynamic",
                summary="ONNX, int8 (default recipe: dynamic int8 weights, int8 embedding tables; "
                        "`edgekd quantize` tries the others)")(_quantised("onnx"))


def _onnx_then(model: nn.Module, path: Path, maxlen: int, int8_tables: bool, quantise) -> dict:
    fp32 = path.with_name("fp32-" + path.name)
    info = _onnx_fp32(model.with_int8_tables() if int8_tables else model, fp32, maxlen)
    with _quiet():
        extra = quantise(str(fp32), str(path)) or {}
    fp32.unlink()
    _strip_onnx(path)
    return {**info, "quantization": extra}


@register_recipe("onnx", "dynamic", summary="int8 weights per tensor, activations quantised at run time "
                 "(quantize_dynamic); item and position tables int8 with a 1-byte scale code per row")
def _onnx_dynamic(model, path, maxlen, calib=None, per_channel: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def q(src, dst):
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=True)
        return {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8, 7-bit range (reduce_range)",
                "per_channel": per_channel, "activations": "fp32, quantised at run time",
                "embedding_tables": "int8, one 1-byte scale code per row (edgekd)"}
    return _onnx_then(model, path, maxlen, True, q)


@register_recipe("onnx", "tables-only", summary="int8 item and position tables (one 1-byte scale code per "
                 "row), the other weights fp32: no run-time activation quantisation")
def _onnx_tables_only(model, path, maxlen, calib=None) -> dict:
    def q(src, dst):
        shutil.copyfile(src, dst)
        return {"tool": "edgekd", "weights": "fp32 except the tables", "activations": "fp32",
                "embedding_tables": "int8, one 1-byte scale code per row (edgekd)"}
    return _onnx_then(model, path, maxlen, True, q)


@register_recipe("onnx", "dynamic-per-channel", summary="as dynamic, with one weight scale per output channel")
def _onnx_dynamic_pc(model, path, maxlen, calib=None) -> dict:
    return _onnx_dynamic(model, path, maxlen, calib, per_channel=True)


def _onnx_static(method: str):
    def fn(model, path, maxlen, calib=None) -> dict:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        if calib is None:
            raise ConfigError(f"onnx recipe static-{method.lower()} needs calibration sequences")

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rows = iter(np.asarray(calib, dtype=np.int32))

            def get_next(self):
                r = next(self.rows, None)
                return None if r is None else {"item_ids": r[None]}

        def q(src, dst):
            # The matmuls only: the tables are already int8 (edgekd's row-wise tables), and the
            # quantiser's per-axis scales do not fit the gathers over them.
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul", "Gemm"],
                            calibrate_method=getattr(CalibrationMethod, method),
                            extra_options={"ActivationSymmetric": True})
            return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                    "weights": "int8 per channel", "activations": f"int8, calibrated ({method})",
                    "embedding_tables": "int8, one 1-byte scale code per row (edgekd)",
                    "calibration_sequences": int(len(calib))}
        return _onnx_then(model, path, maxlen, True, q)
    return fn


for _m in ("MinMax", "Entropy", "Percentile"):
    register_recipe("onnx", f"static-{_m.lower()}", calibrated=True,
                    summary=f"static QDQ int8, per-channel weights, activations calibrated on validation "
                            f"sequences ({_m})")(_onnx_static(_m))


@register_format("onnx-mobile", suffix=".ort", precision="int8", family="onnx", recipe="dynamic",
                 summary="ONNX Runtime Mobile: the onnx-int8 model in ORT format, plus the "
                         "required-operators config for a reduced ORT build")
def _onnx_mobile(model: nn.Module, path: Path, maxlen: int, recipe: str | None = None, calib=None) -> dict:
    import subprocess

    src = path.with_name("model.onnx")
    info = get_recipe("onnx", recipe or "dynamic").fn(model, src, maxlen, calib)
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
def _tflite_fp32(model: nn.Module, path: Path, maxlen: int, recipe: str | None = None, calib=None) -> dict:
    info = _convert_tflite(model, path, maxlen)
    _strip_tflite(path)
    return info


def _convert_tflite(model: nn.Module, path: Path, maxlen: int) -> dict:
    with _quiet():
        import litert_torch  # its import logs through absl to stderr: keep it inside _quiet

        edge = litert_torch.convert(model, (_sample(maxlen),))
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


def _tflite_then(model: nn.Module, path: Path, maxlen: int, recipe, calib=None, calibrated: bool = False) -> dict:
    """Convert, then quantise with ai-edge-quantizer."""
    from ai_edge_quantizer import quantizer

    fp32 = path.with_name("fp32-" + path.name)
    info = _convert_tflite(model, fp32, maxlen)
    with _quiet():
        q = quantizer.Quantizer(str(fp32))
        q.load_quantization_recipe(recipe)
        result = None
        if calibrated:
            if calib is None:
                raise ConfigError("this tflite recipe needs calibration sequences")
            from ai_edge_litert.interpreter import Interpreter

            sig = Interpreter(str(fp32)).get_signature_list()
            key = next(iter(sig))
            arg = sig[key]["inputs"][0]
            data = {key: [{arg: np.asarray(r, dtype=np.int32)[None]} for r in calib]}
            result = q.calibrate(data)
        q.quantize(result).export_model(str(path), overwrite=True)
    fp32.unlink()
    _strip_tflite(path)
    return info


register_format("tflite-int8", suffix=".tflite", precision="int8", family="tflite", recipe="weight-only",
                summary="TFLite, int8 (default recipe: int8 weights incl. embedding tables, fp32 compute; "
                        "`edgekd quantize` tries the others)")(_quantised("tflite"))
register_format("tflite-dynamic-int8", suffix=".tflite", precision="int8", family="tflite", recipe="dynamic",
                summary="TFLite dynamic range: int8 weights, hybrid int8 kernels; wrong results in "
                        "tflite-runtime 2.14")(_quantised("tflite"))
register_format("tflite-fp16", suffix=".tflite", precision="fp16", family="tflite", recipe="fp16",
                summary="TFLite with fp16 weights, fp32 compute")(_quantised("tflite"))


def _weight_only(model, path, maxlen, granularity: str) -> dict:
    from ai_edge_quantizer import recipe

    r = recipe.weight_only_wi8_afp32()
    for entry in r:
        entry["op_config"]["weight_tensor_config"]["granularity"] = granularity
    info = _tflite_then(model, path, maxlen, r)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight_only_wi8_afp32",
                                     "granularity": granularity.lower(),
                                     "weights": "int8 (embedding tables included)", "activations": "fp32"}}


@register_recipe("tflite", "weight-only", summary="int8 weights (embedding tables included), one scale per "
                 "tensor, dequantised once to fp32 compute (ai-edge-quantizer weight_only_wi8_afp32)")
def _tflite_weight_only(model, path, maxlen, calib=None) -> dict:
    # Weight-only, not dynamic_wi8_afp32, by default: the dynamic recipe's hybrid kernels give
    # wrong scores in tflite-runtime 2.14 (what older devices run; NDCG@10 0.002 instead of
    # 0.100 on MovieLens-100k, benchmarks/tflite_runtime_compat.py); weight-only is right in
    # both, and as fast as fp32 in ai-edge-litert (the constant is dequantised once).
    # One scale per tensor: per channel, every item row costs a float scale and an int64 zero
    # point, 12 bytes beside a d=32 row's 32. On the MovieLens d=32 KD student: 3.52x smaller
    # and NDCG@10 -0.0% per tensor, 2.68x and -0.3% per channel (README); on its no-KD twin,
    # -0.7% per tensor against +0.1% per channel. edgekd's own
    # int8 rows with a 1-byte scale code (RowwiseInt8Table, as in ONNX) cannot be used here: the
    # converter folds their dequantisation into a float copy of the table, and forcing it to run
    # in the graph made every request dequantise the whole table (2x slower than fp32).
    return _weight_only(model, path, maxlen, "TENSORWISE")


@register_recipe("tflite", "weight-only-per-channel", summary="as weight-only, one scale per output channel "
                 "(per item row for the tables): more accurate, larger")
def _tflite_weight_only_pc(model, path, maxlen, calib=None) -> dict:
    return _weight_only(model, path, maxlen, "CHANNELWISE")


@register_recipe("tflite", "dynamic", summary="int8 weights, activations quantised at run time by hybrid "
                 "kernels (dynamic_wi8_afp32); tflite-runtime 2.14 computes it wrongly")
def _tflite_dynamic(model, path, maxlen, calib=None) -> dict:
    from ai_edge_quantizer import recipe

    info = _tflite_then(model, path, maxlen, recipe.dynamic_wi8_afp32())
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "dynamic_wi8_afp32",
                                     "weights": "int8", "activations": "fp32, quantised at run time",
                                     "compatibility": "ai-edge-litert; tflite-runtime 2.14 computes wrong scores "
                                                      "(benchmarks/tflite_runtime_compat.py)"}}


@register_recipe("tflite", "fp16", precision="fp16", summary="fp16 weights, fp32 compute (float casting)")
def _tflite_fp16(model, path, maxlen, calib=None) -> dict:
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    info = _tflite_then(model, path, maxlen, rm.get_quantization_recipe())
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight-only float casting",
                                     "weights": "fp16", "activations": "fp32"}}


@register_recipe("tflite", "full-int8", calibrated=True, summary="int8 weights and activations, "
                 "calibrated on validation sequences (static_wi8_ai8)")
def _tflite_full_int8(model, path, maxlen, calib=None) -> dict:
    from ai_edge_quantizer import recipe

    info = _tflite_then(model, path, maxlen, recipe.static_wi8_ai8(), calib=calib, calibrated=True)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai8",
                                     "weights": "int8", "activations": "int8, calibrated",
                                     "calibration_sequences": int(len(calib))}}


@register_recipe("tflite", "full-int16x8", calibrated=True, summary="integer only: int8 weights, int16 "
                 "activations, calibrated on validation sequences (static_wi8_ai16): the scores keep "
                 "65,536 levels where int8 gives 256")
def _tflite_full_int16x8(model, path, maxlen, calib=None) -> dict:
    from ai_edge_quantizer import recipe

    info = _tflite_then(model, path, maxlen, recipe.static_wi8_ai16(), calib=calib, calibrated=True)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai16",
                                     "weights": "int8", "activations": "int16, calibrated",
                                     "calibration_sequences": int(len(calib))}}


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
    ref, ref_top = evaluate_scores(lambda b: model_scores(parent, b), x, targets, hist, sampled=False,
                                   never=ds.oov_index)
    got, _ = evaluate_scores(lambda b: run_batched(exported, b), x, targets, hist, sampled=False,
                             reference_topk=ref_top, never=ds.oov_index)
    return {
        "split": "valid", "users": int(len(x)),
        "max_abs_diff": float(np.max(np.abs(exp_scores - ref_scores))),
        "top10_overlap": got["top10_overlap"],
        "ndcg@10": got["ndcg@10"], "parent_ndcg@10": ref["ndcg@10"],
        "ndcg@10_rel_change": (got["ndcg@10"] - ref["ndcg@10"]) / ref["ndcg@10"] if ref["ndcg@10"] else 0.0,
        "hr@10": got["hr@10"], "parent_hr@10": ref["hr@10"],
        "runtime": exported.runtime, "runtime_version": exported.version,
    }


CALIBRATION_SEQUENCES = 256


def calibration_inputs(ds: Dataset, maxlen: int, n: int = CALIBRATION_SEQUENCES) -> np.ndarray:
    """Real validation sequences (a fixed sample) for calibrating activation ranges."""
    x, _, _ = eval_inputs(ds, "valid", maxlen, n, seed=1)
    return x


def export(a: Artifact, fmt: str, *, store: Path = DEFAULT_STORE, name: str | None = None,
           ds: Dataset | None = None, parity_users: int | None = 1000, topk: int | None = None,
           recipe: str | None = None) -> Artifact:
    """Export torch artifact `a` to `fmt`; writes nothing unless parity holds. With `topk`,
    the graph ends in top-K and returns item indices and scores; `recipe` picks how a
    quantised format is quantised (`edgekd list recipes`)."""
    spec = get_format(fmt)
    if recipe is not None and not spec.family:
        raise ConfigError(f"{fmt} takes no quantisation recipe")
    if spec.family and spec.recipe:
        rec = get_recipe(spec.family, recipe or spec.recipe)
        precision = rec.precision
        if precision != spec.precision:
            raise ConfigError(f"recipe {rec.name!r} makes {precision} files, not {fmt} ({spec.precision}); "
                              f"use it with a {precision} format")
    else:
        rec, precision = None, spec.precision
    model = load_torch_model(a)
    if topk is not None and not 1 <= topk <= model.num_items:
        raise ConfigError(f"--topk must be between 1 and the {model.num_items} items, got {topk}")
    if ds is not None:
        a.check_dataset(ds.fingerprint())
    ds = ds if ds is not None else dataset_for(a)
    maxlen = model.maxlen
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
        out = Path(tmp) / ("model" + spec.suffix)
        calib = calibration_inputs(ds, maxlen) if rec is not None and rec.calibrated else None
        try:
            info = spec.writer(TopKHead(model, topk) if topk else model, out, maxlen,
                               recipe=rec.name if rec else None, calib=calib)
        except EdgeKDError:
            raise
        except Exception as e:  # a converter failure: say which and keep its message
            raise ExportError(f"{fmt} export of {a.name} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
        if topk:
            check = topk_parity(model, out, ds, topk, users=parity_users)
            if precision == "fp32" and check["topk_overlap"] < FP32_MIN_TOP10_OVERLAP:
                raise ExportError(f"{fmt} top-{topk} export of {a.name} returns other items than torch: "
                                  f"overlap {check['topk_overlap']:.3f}; nothing written")
        else:
            check = parity(model, out, ds, users=parity_users)
        # written as "not (ok)" so that a NaN difference fails too
        if not topk and precision == "fp32" and not (check["top10_overlap"] >= FP32_MIN_TOP10_OVERLAP
                                                     and check["max_abs_diff"] <= FP32_MAX_ABS_DIFF):
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
            "stage": "exported", "format": fmt, "precision": precision, "recipe": rec.name if rec else None,
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

        default = (f"{a.name}-{fmt}" + (f"-{rec.name}" if rec and recipe else "")
                   + (f"-top{topk}" if topk else ""))
        saved = save_artifact(store, name or default, out.name, write, card, a.vocab())
    from .serve.drift import attach_reference  # what `edgekd serve` measures drift against
    return attach_reference(saved, ds)
