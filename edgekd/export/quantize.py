"""Quantisation, all of it but the model's own int8 table layer (models.RowwiseInt8Table,
which must stay in models.py: the device runner ships that file as the model code):

- the quantised formats (onnx-int8, tflite-int8, tflite-dynamic-int8, tflite-fp16) and the
  recipes of each runtime family (`edgekd list recipes`), each a function of the model;
- the `quantize` stage: try the recipes of a family and keep only what pays: every candidate
  records its size, its latency on the local CPU and its accuracy against the torch parent,
  beside the fp32 export measured in the same run. A result that is larger or slower than fp32
  gets a warning; `require_gain` makes "nothing helped" an error. The report says which recipe
  wins and why."""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..artifact import DEFAULT_STORE, Artifact, write_json
from ..errors import ConfigError, ExportError
from ..extras import tflite_module
from ..runner import _latency_gate, _time_files
from .base import _quantised, _quiet, get_format, get_recipe, list_recipes, register_format, register_recipe
from .onnx import _onnx_fp32, _strip_onnx
from .tflite import _convert_tflite, _strip_tflite


register_format("onnx-int8", suffix=".onnx", precision="int8", family="onnx", recipe="dynamic",
                summary="ONNX, int8 (default recipe: dynamic int8 weights, int8 embedding tables; "
                        "`edgekd quantize` tries the others)")(_quantised("onnx"))


def _onnx_then(model: nn.Module, path: Path, int8_tables: bool, quantise) -> dict:
    fp32 = path.with_name("fp32-" + path.name)
    info = _onnx_fp32(model.with_int8_tables() if int8_tables else model, fp32)
    with _quiet():
        extra = quantise(str(fp32), str(path)) or {}
    fp32.unlink()
    _strip_onnx(path)
    return {**info, "quantization": extra}


@register_recipe("onnx", "dynamic", summary="int8 weights per tensor, activations quantised at run time "
                 "(quantize_dynamic); item and position tables int8 with a 1-byte scale code per row")
def _onnx_dynamic(model, path, calib=None, per_channel: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def q(src, dst):
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=True)
        return {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8, 7-bit range (reduce_range)",
                "per_channel": per_channel, "activations": "fp32, quantised at run time",
                "embedding_tables": "int8, one 1-byte scale code per row (edgekd)"}
    return _onnx_then(model, path, True, q)


@register_recipe("onnx", "tables-only", summary="int8 item and position tables (one 1-byte scale code per "
                 "row), the other weights fp32: no run-time activation quantisation")
def _onnx_tables_only(model, path, calib=None) -> dict:
    def q(src, dst):
        shutil.copyfile(src, dst)
        return {"tool": "edgekd", "weights": "fp32 except the tables", "activations": "fp32",
                "embedding_tables": "int8, one 1-byte scale code per row (edgekd)"}
    return _onnx_then(model, path, True, q)


@register_recipe("onnx", "dynamic-per-channel", summary="as dynamic, with one weight scale per output channel")
def _onnx_dynamic_pc(model, path, calib=None) -> dict:
    return _onnx_dynamic(model, path, calib, per_channel=True)


def _onnx_static(method: str):
    def fn(model, path, calib=None) -> dict:
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
        return _onnx_then(model, path, True, q)
    return fn


for _m in ("MinMax", "Entropy", "Percentile"):
    register_recipe("onnx", f"static-{_m.lower()}", calibrated=True,
                    summary=f"static QDQ int8, per-channel weights, activations calibrated on validation "
                            f"sequences ({_m})")(_onnx_static(_m))



# ---------------------------------------------------------------- TFLite

def _tflite_then(model: nn.Module, path: Path, recipe, calib=None, calibrated: bool = False) -> dict:
    """Convert, then quantise with ai-edge-quantizer."""
    quantizer = tflite_module("ai_edge_quantizer.quantizer")

    fp32 = path.with_name("fp32-" + path.name)
    info = _convert_tflite(model, fp32)
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


def _weight_only(model, path, granularity: str) -> dict:
    recipe = tflite_module("ai_edge_quantizer.recipe")

    r = recipe.weight_only_wi8_afp32()
    for entry in r:
        entry["op_config"]["weight_tensor_config"]["granularity"] = granularity
    info = _tflite_then(model, path, r)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight_only_wi8_afp32",
                                     "granularity": granularity.lower(),
                                     "weights": "int8 (embedding tables included)", "activations": "fp32"}}


@register_recipe("tflite", "weight-only", summary="int8 weights (embedding tables included), one scale per "
                 "tensor, dequantised once to fp32 compute (ai-edge-quantizer weight_only_wi8_afp32)")
def _tflite_weight_only(model, path, calib=None) -> dict:
    # Weight-only, not dynamic_wi8_afp32, by default: the dynamic recipe's hybrid kernels give
    # wrong scores in tflite-runtime 2.14 (what older devices run; NDCG@10 0.002 instead of
    # 0.100 on MovieLens-100k, benchmarks/tflite_runtime_compat.py); weight-only is right in
    # both, and as fast as fp32 in ai-edge-litert (the constant is dequantised once).
    # One scale per tensor: per channel, every item row costs a float scale and an int64 zero
    # point, 12 bytes beside a d=32 row's 32. On the MovieLens d=32 KD student: 3.52x smaller
    # and NDCG@10 -0.0% per tensor, 2.68x and -0.3% per channel (benchmarks/quantize/); on its no-KD twin,
    # -0.7% per tensor against +0.1% per channel. edgekd's own
    # int8 rows with a 1-byte scale code (RowwiseInt8Table, as in ONNX) cannot be used here: the
    # converter folds their dequantisation into a float copy of the table, and forcing it to run
    # in the graph made every request dequantise the whole table (2x slower than fp32).
    return _weight_only(model, path, "TENSORWISE")


@register_recipe("tflite", "weight-only-per-channel", summary="as weight-only, one scale per output channel "
                 "(per item row for the tables): more accurate, larger")
def _tflite_weight_only_pc(model, path, calib=None) -> dict:
    return _weight_only(model, path, "CHANNELWISE")


@register_recipe("tflite", "dynamic", summary="int8 weights, activations quantised at run time by hybrid "
                 "kernels (dynamic_wi8_afp32); tflite-runtime 2.14 computes it wrongly")
def _tflite_dynamic(model, path, calib=None) -> dict:
    recipe = tflite_module("ai_edge_quantizer.recipe")

    info = _tflite_then(model, path, recipe.dynamic_wi8_afp32())
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "dynamic_wi8_afp32",
                                     "weights": "int8", "activations": "fp32, quantised at run time",
                                     "compatibility": "ai-edge-litert; tflite-runtime 2.14 computes wrong scores "
                                                      "(benchmarks/tflite_runtime_compat.py)"}}


@register_recipe("tflite", "fp16", precision="fp16", summary="fp16 weights, fp32 compute (float casting)")
def _tflite_fp16(model, path, calib=None) -> dict:
    qtyping, recipe_manager = (tflite_module(f"ai_edge_quantizer.{m}") for m in ("qtyping", "recipe_manager"))
    AlgorithmName = tflite_module("ai_edge_quantizer.algorithm_manager").AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    info = _tflite_then(model, path, rm.get_quantization_recipe())
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "weight-only float casting",
                                     "weights": "fp16", "activations": "fp32"}}


@register_recipe("tflite", "full-int8", calibrated=True, summary="int8 weights and activations, "
                 "calibrated on validation sequences (static_wi8_ai8)")
def _tflite_full_int8(model, path, calib=None) -> dict:
    recipe = tflite_module("ai_edge_quantizer.recipe")

    info = _tflite_then(model, path, recipe.static_wi8_ai8(), calib=calib, calibrated=True)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai8",
                                     "weights": "int8", "activations": "int8, calibrated",
                                     "calibration_sequences": int(len(calib))}}


@register_recipe("tflite", "full-int16x8", calibrated=True, summary="integer only: int8 weights, int16 "
                 "activations, calibrated on validation sequences (static_wi8_ai16): the scores keep "
                 "65,536 levels where int8 gives 256")
def _tflite_full_int16x8(model, path, calib=None) -> dict:
    recipe = tflite_module("ai_edge_quantizer.recipe")

    info = _tflite_then(model, path, recipe.static_wi8_ai16(), calib=calib, calibrated=True)
    return {**info, "quantization": {"tool": "ai-edge-quantizer", "recipe": "static_wi8_ai16",
                                     "weights": "int8", "activations": "int16, calibrated",
                                     "calibration_sequences": int(len(calib))}}


# ---------------------------------------------------------------- the quantize stage

@dataclass(frozen=True)
class QuantizeConfig:
    target: str = "onnx-int8"  # a quantised export format (its family's recipes apply)
    recipes: tuple[str, ...] = ()  # default: every recipe of the family
    require_gain: bool = False
    max_ndcg_drop: float = 0.01  # relative NDCG@10 drop allowed against the torch parent
    min_top10_overlap: float = 0.9
    threads: int = 1
    bench_users: int = 300
    rounds: int = 5  # interleaved timing rounds (fp32 and every recipe in turns)

    def __post_init__(self):
        if self.rounds < 2:
            raise ConfigError(f"rounds must be >= 2 (an interval needs rounds), got {self.rounds}")

        spec = get_format(self.target)
        if not spec.family or not spec.recipe:
            raise ConfigError(f"quantize --target must be a quantised format (onnx-int8, tflite-int8, ...), "
                              f"got {self.target!r}")
        for r in self.recipes:
            if get_recipe(spec.family, r).precision != spec.precision:
                raise ConfigError(f"recipe {r!r} does not make {spec.precision} files; {self.target} needs one that does")
        if not 0 <= self.max_ndcg_drop < 1:
            raise ConfigError(f"max_ndcg_drop must be in [0, 1), got {self.max_ndcg_drop}")


def quantize(a: Artifact, cfg: QuantizeConfig = QuantizeConfig(), *, store: Path = DEFAULT_STORE,
             say=print) -> dict:
    """Quantise torch artifact `a` with each recipe, measure, choose. Returns the rows, the
    winner (or None), its artifact ("artifact", or None) and where the report went."""
    with contextlib.ExitStack() as stack:
        return _quantize(a, cfg, store, say, stack)


def _quantize(a: Artifact, cfg: QuantizeConfig, store: Path, say, stack: contextlib.ExitStack) -> dict:
    from ..torch_io import dataset_for
    from .stage import export, staged_export

    spec = get_format(cfg.target)
    family = spec.family
    recipes = list(cfg.recipes) or [r.name for r in list_recipes(family) if r.precision == spec.precision]
    ds = dataset_for(a)
    fp32 = export(a, f"{family}-fp32", store=store, ds=ds)
    base = {"recipe": "(fp32)", "artifact": fp32.name, "size_bytes": fp32.card["size_bytes"],
            "ndcg@10_rel": fp32.metrics["parity"]["ndcg@10_rel_change"],
            "top10_overlap": fp32.metrics["parity"]["top10_overlap"]}
    # Each recipe's file waits in a temporary directory until it is measured, so that its card
    # is written once, with its gate.
    rows, staged, exports = [], {}, {}
    for r in recipes:
        try:
            staged[r] = stack.enter_context(staged_export(a, cfg.target, ds=ds, recipe=r))
        except ExportError as err:
            rows.append({"recipe": r, "error": str(err)})
            say(f"{r}: failed: {err}")
    # fp32 and every recipe timed in interleaved rounds: a burst of other work falls on all alike
    m = _time_files([(fp32, ds)] + [(s.artifact, ds) for s in staged.values()], ["(fp32)", *staged],
                    cfg.threads, cfg.bench_users, cfg.rounds)
    base["p50_ms"] = m.summary("(fp32)")["p50_ms"]
    base["p50_rounds_ms"] = m.p50s["(fp32)"]
    base["p50_spread"] = m.summary("(fp32)")
    timing_info = {k: v for k, v in m.to_dict().items() if k != "cells"}
    say(f"fp32 {family}: {base['size_bytes']} bytes, p50 {base['p50_ms']:.3f} ms "
        f"(median of {len(base['p50_rounds_ms'])} interleaved rounds)")
    for r, st in staged.items():
        e = st.artifact
        if r in m.errors:
            exports[r] = st.save(store)
            rows.append({"recipe": r, "error": m.errors[r]})
            say(f"{r}: failed: {m.errors[r]}")
            continue
        p = e.metrics["parity"]
        row = {"recipe": r, "artifact": e.name, "size_bytes": e.card["size_bytes"], **_latency_gate(m, r),
               "ndcg@10_rel": p["ndcg@10_rel_change"], "top10_overlap": p["top10_overlap"]}
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["smaller"] = row["size_bytes"] < base["size_bytes"]
        row["accurate"] = row["ndcg@10_rel"] >= -cfg.max_ndcg_drop and row["top10_overlap"] >= cfg.min_top10_overlap
        exports[r] = st.save(store, metrics={**e.metrics, "gate": {**row, "fp32": base, "config": asdict(cfg),
                                                                   "timing": timing_info}})
        rows.append(row)
        warn = [w for w, bad in (("larger", not row["smaller"]), ("slower", not row["not_slower"]),
                                 ("less accurate than allowed", not row["accurate"])) if bad]
        lo, hi = row["speedup_interval"]
        say(f"{r}: {row['size_bytes']} bytes ({row['size_ratio']:.2f}x smaller), p50 {row['p50_ms']:.3f} ms "
            f"({row['speedup']:.2f}x [{lo:.2f}-{hi:.2f}], {row['latency_verdict']}), NDCG@10 "
            f"{row['ndcg@10_rel'] * 100:+.1f}%, top-10 overlap {row['top10_overlap']:.3f}"
            + (f"  WARNING: {', '.join(warn)} than fp32" if warn else ""))
    ok = [r for r in rows if "error" not in r]
    gains = [r for r in ok if r["smaller"] and r["not_slower"] and r["accurate"]]
    if gains:
        winner = min(gains, key=lambda r: (r["size_bytes"], r["p50_ms"]))
        why = (f"{winner['recipe']} wins: the smallest of the recipes that are smaller than fp32, not slower "
               f"(the speed-up's {m.rounds}-round interval does not lie below 1.0) and within {cfg.max_ndcg_drop:.0%} NDCG@10 / "
               f"{cfg.min_top10_overlap} top-10 overlap of the parent")
    else:
        winner = None
        reasons = []
        for r in ok:
            bad = [w for w, b in (("not smaller", not r["smaller"]), ("slower", not r["not_slower"]),
                                  ("too inaccurate", not r["accurate"])) if b]
            reasons.append(f"{r['recipe']}: {', '.join(bad)}")
        why = "no recipe pays on this CPU: " + "; ".join(reasons or ["every recipe failed"])
    say(why)
    report = {"artifact": a.name, "target": cfg.target, "family": family, "fp32": base, "recipes": rows,
              "winner": winner["recipe"] if winner else None, "why": why, "config": asdict(cfg),
              "timing": timing_info,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(store) / f"{a.name}-{cfg.target}-quantize.json"
    write_json(path, report)
    md = path.with_suffix(".md")
    md.write_text(_markdown(report))
    if cfg.require_gain and winner is None:
        raise ExportError(why, hint=f"see {md}")
    return {"rows": rows, "fp32": base, "winner": winner, "why": why, "report": md,
            "artifact": exports[winner["recipe"]] if winner else None}


def _markdown(rep: dict) -> str:
    lines = [f"# Quantisation of {rep['artifact']} for {rep['target']}", "",
             "Measured side by side in one run on the local CPU "
             f"({rep['config']['threads']} thread(s), batch 1); accuracy on validation users against the "
             "torch parent.", "",
             f"Latency: fp32 and every recipe timed in {rep.get('timing', {}).get('rounds', '?')} interleaved rounds; "
             "p50 is the median over rounds, the speed-up's interval (in brackets) a bootstrap over rounds, and a "
             "recipe is called slower only when that interval lies below 1.0.", "",
             "| recipe | size bytes | vs fp32 | p50 ms | speed vs fp32 | NDCG@10 change | top-10 overlap | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    b = rep["fp32"]
    lines.append(f"| fp32 | {b['size_bytes']} | 1.00x | {b['p50_ms']:.3f} | 1.00x | "
                 f"{b['ndcg@10_rel'] * 100:+.1f}% | {b['top10_overlap']:.3f} | baseline |")
    for r in rep["recipes"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | | | | | | | failed: {r['error']} |")
            continue
        verdict = "wins" if r["recipe"] == rep["winner"] else ", ".join(
            w for w, bad in (("larger", not r["smaller"]), ("slower", not r["not_slower"]),
                             ("too inaccurate", not r["accurate"])) if bad) or "pays, not the smallest"
        lines.append(f"| {r['recipe']} | {r['size_bytes']} | {r['size_ratio']:.2f}x | {r['p50_ms']:.3f} | "
                     f"{r['speedup']:.2f}x [{r['speedup_interval'][0]:.2f}-{r['speedup_interval'][1]:.2f}] | {r['ndcg@10_rel'] * 100:+.1f}% | {r['top10_overlap']:.3f} | {verdict} |")
    lines += ["", rep["why"] + "."]
    return "\n".join(lines) + "\n"
