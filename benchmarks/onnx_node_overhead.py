#!/usr/bin/env python3
"""Where a small ONNX model's time goes in ONNX Runtime: the model against a 3-node model with
the same input and output shapes, in edgekd's bench timing loop (1 thread, batch 1, the two timed
in turns over interleaved rounds), and the number
of nodes ONNX Runtime runs after its own graph optimisations.

    python benchmarks/onnx_node_overhead.py models/STUDENT-onnx-int8/model.onnx [--runs 3000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgekd.device_runner import load_model, percentiles, time_batch1
from edgekd.timing import interleave


def floor_model(batch: int, length: int, items: int, in_type: int) -> onnx.ModelProto:
    """ids [batch, length] -> scores [batch, items] in three cheap nodes (Cast, Tile, Slice)."""
    reps = -(-items // length)
    g = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["c"], to=TensorProto.FLOAT),
         helper.make_node("Tile", ["c", "reps"], ["t"]),
         helper.make_node("Slice", ["t", "st", "en", "ax"], ["scores"])],
        "floor", [helper.make_tensor_value_info("ids", in_type, [batch, length])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, items])],
        [helper.make_tensor("reps", TensorProto.INT64, [2], [1, reps]),
         helper.make_tensor("st", TensorProto.INT64, [1], [0]),
         helper.make_tensor("en", TensorProto.INT64, [1], [items]),
         helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def optimised_nodes(path: str, tmp: str) -> int:
    """How many nodes ONNX Runtime runs after its own graph optimisations (as edgekd's runner
    sets it up: default optimisation level, 1 thread)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return len(onnx.load(so.optimized_model_filepath).graph.node)


def timer(path: str, runs: int) -> tuple[object, object]:
    """One round's p50 at batch 1 through edgekd's own runner timing loop (what `edgekd bench`
    uses), for edgekd.timing.interleave; and the loaded model."""
    m = load_model(path, "onnxruntime", threads=1)
    rows = np.ones((1, m.session.get_inputs()[0].shape[1]), dtype=m.dtype)
    return (lambda: percentiles(time_batch1(m, rows, warmup=runs // 5, min_runs=runs, min_seconds=0.0,
                                            max_runs=runs))["p50_ms"]), m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--runs", type=int, default=3000, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (model, floor, model, ...)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_t, m = timer(str(args.model), args.runs)
        inp, out = m.session.get_inputs()[0], m.session.get_outputs()[0]
        in_type = TensorProto.INT32 if "int32" in inp.type else TensorProto.INT64
        floor_path = str(Path(tmp) / "floor.onnx")
        onnx.save(floor_model(1, int(inp.shape[1]), int(out.shape[1]), in_type), floor_path)
        floor_t, _ = timer(floor_path, args.runs)
        # both loaded in this process, timed in turns, round after round (edgekd.timing)
        t = interleave({"model": model_t, "floor": floor_t}, args.rounds, reference="floor",
                       design="interleaved rounds, both models in this process timed in turns")
        model_ms, floor_ms = t.summary("model")["p50_ms"], t.summary("floor")["p50_ms"]
        # counted after the timing: with the counting session created first, the model timed
        # 2x slower here (0.07 against 0.035 ms), so nothing else runs beside the timing
        nodes = optimised_nodes(str(args.model), tmp)
    res = {"model": str(args.model), "nodes_after_ort_optimisation": nodes, "model_p50_ms": model_ms,
           "floor_3_nodes_p50_ms": floor_ms, "rounds": t.to_dict(), "per_node_us": (model_ms - floor_ms) * 1e3 / max(nodes - 3, 1)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
