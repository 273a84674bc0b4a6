#!/usr/bin/env python3
"""Does an `onnx-mobile` export run in a reduced ONNX Runtime, one built with only the
operators its `required_operators.config` names?

The reduced build is what an app ships (ONNX Runtime Mobile's custom build). This runs the
artifact's .ort file in such a build, through its C API (`benchmarks/ort_minimal/run_ort`), on
every test user of the artifact's own data (one at a time: batch 1), and compares the scores, the top-10 lists and
NDCG@10 with the onnxruntime wheel on the same file (and, with --python, with another Python's
onnxruntime, such as the full wheel of the reduced build's own version). Two controls check
the build is really reduced: a model using an operator the config does not name (Sin) must
fail to load, and the same model with an operator it names (Mul) must run.

    benchmarks/ort_minimal/build_reduced_ort.sh ARTIFACT/required_operators.config
    python benchmarks/onnx_mobile_reduced.py ARTIFACT [--run-ort benchmarks/ort_minimal/run_ort]
        [--python OTHER_PYTHON] [--timing-runs 3000] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.tools.ort_format_model import create_config_from_models

from edgekd.artifact import load_artifact
from edgekd.device_runner import load_model
from edgekd.inspection import required_operators
from edgekd.metrics import evaluate_scores
from edgekd.evaluation import eval_inputs
from edgekd.torch_io import dataset_for

HERE = Path(__file__).resolve().parent
OPSET = 19  # the controls' opset: their Cast resolves to the Cast(19) kernel the exports' configs name


def run_reduced(run_ort: Path, model: Path, ids: np.ndarray, timing_runs: int = 0) -> tuple[np.ndarray, dict]:
    """Scores of `ids` [rows, maxlen] from the reduced build; batch-1 latency when asked."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "ids.txt"
        np.savetxt(f, ids, fmt="%d")
        p = subprocess.run([str(run_ort), str(model), str(f), str(timing_runs)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip() or f"run_ort exited {p.returncode}")
    scores = np.loadtxt(p.stdout.splitlines(), dtype=np.float32, ndmin=2)
    m = re.search(r"median ([0-9.]+) ms, p90 ([0-9.]+) ms", p.stderr)
    lat = {"p50_ms": float(m.group(1)), "p90_ms": float(m.group(2)), "runs": timing_runs} if m else {}
    return scores, lat


def control_model(path: Path, maxlen: int, op: str) -> Path:
    """A tiny ORT-format model with the recommender's input: Cast to float, then `op` (Sin: in
    none of edgekd's configs; Mul: in all of them), converted by the same onnxruntime tool as
    onnx-mobile."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Cast", ["item_ids"], ["f"], to=TensorProto.FLOAT),
         helper.make_node(op, ["f"] * (2 if op == "Mul" else 1), ["scores"])],
        op.lower(), [helper.make_tensor_value_info("item_ids", TensorProto.INT32, [1, maxlen])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, maxlen])])
    src = path.with_suffix(".onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), src)
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                    "--output_dir", str(path.parent), "--optimization_style", "Fixed"], check=True, capture_output=True)
    return path.with_suffix(".ort")


def other_runtime_scores(python: str, model: Path, ids: np.ndarray) -> tuple[str, np.ndarray]:
    """Scores from the onnxruntime of another Python, 1 thread, batch 1."""
    code = ("import sys, numpy as np, onnxruntime as ort\n"
            "so = ort.SessionOptions(); so.intra_op_num_threads = 1\n"
            "s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n"
            "name = s.get_inputs()[0].name\n"
            "np.save(sys.argv[3], np.concatenate([s.run(None, {name: r[None]})[0] for r in np.load(sys.argv[2])]))\n"
            "print(ort.__version__)\n")
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "x.npy", ids)
        p = subprocess.run([python, "-c", code, str(model), str(Path(d) / "x.npy"), str(Path(d) / "y.npy")],
                           capture_output=True, text=True, check=True)
        return p.stdout.strip(), np.load(Path(d) / "y.npy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--run-ort", type=Path, default=HERE / "ort_minimal" / "run_ort")
    ap.add_argument("--python", default=None, help="also compare with the onnxruntime of this Python")
    ap.add_argument("--timing-runs", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    a = load_artifact(args.artifact)
    if a.file.suffix != ".ort":
        sys.exit(f"{a.path}: not an onnx-mobile artifact (its file is {a.file.name})")
    config = a.file.with_name("required_operators.config")
    ds = dataset_for(a)
    x, targets, hist = eval_inputs(ds, "test", int(a.card["arch_kwargs"]["maxlen"]))
    x = x.astype(np.int32)

    reduced, _ = run_reduced(args.run_ort, a.file, x)
    _, lat = run_reduced(args.run_ort, a.file, x[:1], args.timing_runs)
    wheel = load_model(str(a.file), "onnxruntime", 1)
    full = np.concatenate([wheel(row[None]) for row in x])  # batch 1, as run_ort does
    # the scores are already computed: evaluate_scores passes them through in batches
    m_full, top_full = evaluate_scores(lambda b: b, full, targets, hist, sampled=False, never=ds.oov_index)
    m_red, _ = evaluate_scores(lambda b: b, reduced, targets, hist, sampled=False, never=ds.oov_index,
                               reference_topk=top_full)
    controls = {}
    with tempfile.TemporaryDirectory() as d:
        # the operators the file uses, read from the file again by onnxruntime's own tool
        create_config_from_models([a.file], Path(d) / "again.config", False)
        in_file = required_operators(Path(d) / "again.config")
        for op in ("Sin", "Mul"):
            try:
                run_reduced(args.run_ort, control_model(Path(d) / op.lower(), x.shape[1], op), x[:1])
                controls[op] = {"runs": True}
            except RuntimeError as e:
                controls[op] = {"runs": False, "error": str(e).splitlines()[-1][:300]}
    diff = np.abs(reduced - full)
    rec = {
        "artifact": a.name, "file": a.file.name, "size_bytes": a.file.stat().st_size,
        "config": [l for l in config.read_text().splitlines() if l and not l.startswith("#")],
        "operators_in_file": sorted(f"{dom}:{op}" for dom, op in in_file),
        "file_ops_all_named_in_config": in_file <= required_operators(config),
        "users": int(len(x)), "wheel_onnxruntime": onnxruntime.__version__,
        "max_abs_diff_vs_wheel": float(diff.max()), "median_row_max_abs_diff_vs_wheel": float(np.median(diff.max(1))),
        "top10_overlap_vs_wheel": m_red["top10_overlap"],
        "ndcg@10_reduced": m_red["ndcg@10"], "ndcg@10_wheel": m_full["ndcg@10"],
        "reduced_batch1_latency_c_api": lat, "controls": controls,
    }
    if args.python:
        version, other = other_runtime_scores(args.python, a.file, x)
        rec["other_python"] = {"onnxruntime": version, "max_abs_diff_vs_reduced": float(np.abs(reduced - other).max()),
                               "max_abs_diff_vs_wheel": float(np.abs(full - other).max())}
    print(json.dumps(rec, indent=2))
    if args.out:
        args.out.write_text(json.dumps(rec, indent=2) + "\n")
    # int8 kernels may round differently from build to build: what must hold is the ranking (the
    # quantisation gate's thresholds), and that the build lacks what the config does not name
    ok = (rec["file_ops_all_named_in_config"] and rec["top10_overlap_vs_wheel"] >= 0.9
          and abs(rec["ndcg@10_reduced"] / rec["ndcg@10_wheel"] - 1) <= 0.01
          and not controls["Sin"]["runs"] and "Sin" in controls["Sin"].get("error", "") and controls["Mul"]["runs"])
    print(("OK: " if ok else "FAILED: ") + f"{a.name} in the reduced build", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
