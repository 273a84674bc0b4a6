#!/usr/bin/env python3
"""Where a small ONNX model's time goes in ONNX Runtime: the model against a 3-node model with
the same input and output shapes, in the same timing loop (1 thread, batch 1), and the number
of nodes ONNX Runtime runs after its own graph optimisations.

    python benchmarks/onnx_node_overhead.py models/STUDENT-onnx-int8/model.onnx [--runs 3000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


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


def session(path: str, optimized: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def p50_ms(s: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    name = s.get_inputs()[0].name
    for _ in range(runs // 5):
        s.run(None, {name: x})
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, {name: x})
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--runs", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "optimized.onnx")
        s = session(str(args.model), opt)
        nodes = len(onnx.load(opt).graph.node)
        inp, out = s.get_inputs()[0], s.get_outputs()[0]
        length, items = int(inp.shape[1]), int(out.shape[1])
        in_type = TensorProto.INT32 if "int32" in inp.type else TensorProto.INT64
        floor_path = str(Path(tmp) / "floor.onnx")
        onnx.save(floor_model(1, length, items, in_type), floor_path)
        x = np.ones((1, length), dtype=np.int32 if in_type == TensorProto.INT32 else np.int64)
        f = session(floor_path)
        model_ms, floor_ms = p50_ms(s, x, args.runs), p50_ms(f, x, args.runs)
    res = {"model": str(args.model), "nodes_after_ort_optimisation": nodes, "model_p50_ms": model_ms,
           "floor_3_nodes_p50_ms": floor_ms, "per_node_us": (model_ms - floor_ms) * 1e3 / max(nodes - 3, 1)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
