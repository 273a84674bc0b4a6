#!/usr/bin/env python3
"""Does an `onnx-mobile` export run in a reduced ONNX Runtime, one built with only the
operators its `required_operators.config` names?

The reduced build is what an app ships (ONNX Runtime Mobile's custom build). This runs the
artifact's .ort file in such a build, through its C API (`benchmarks/ort_minimal/run_ort`), on
every test user of the artifact's own data, and compares the scores, the top-10 lists and
NDCG@10 with the full onnxruntime wheel on the same file. A negative control checks the build
is really reduced: a model using an operator the config does not name (Sin) must fail to load.

    benchmarks/ort_minimal/build_reduced_ort.sh ARTIFACT/required_operators.config
    python benchmarks/onnx_mobile_reduced.py ARTIFACT [--run-ort benchmarks/ort_minimal/run_ort]
        [--timing-runs 3000] [--out FILE.json]
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
from onnxruntime.tools.ort_format_model import create_config_from_models

from edgekd.artifact import load_artifact
from edgekd.device_runner import load_model, run_batched
from edgekd.export import required_operators
from edgekd.metrics import evaluate_scores
from edgekd.train import dataset_for, eval_inputs

HERE = Path(__file__).resolve().parent


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


def sin_model(path: Path, maxlen: int) -> Path:
    """An ORT-format model with the same input as the recommender, using Sin (not in any of
    edgekd's configs), converted by the same onnxruntime tools as onnx-mobile."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Cast", ["item_ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("Sin", ["f"], ["scores"])],
        "sin", [helper.make_tensor_value_info("item_ids", TensorProto.INT32, [1, maxlen])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, maxlen])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path.with_suffix(".onnx"))
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(path.with_suffix(".onnx")),
                    "--output_dir", str(path.parent), "--optimization_style", "Fixed"], check=True, capture_output=True)
    return path.with_suffix(".ort")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--run-ort", type=Path, default=HERE / "ort_minimal" / "run_ort")
    ap.add_argument("--timing-runs", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    a = load_artifact(args.artifact)
    if a.file.suffix != ".ort":
        sys.exit(f"{a.path}: not an onnx-mobile artifact (its file is {a.file.name})")
    config = a.file.with_name("required_operators.config")
    ds = dataset_for(a)
    maxlen = int(a.card["arch_kwargs"]["maxlen"])
    x, targets, hist = eval_inputs(ds, "test", maxlen)
    x = x.astype(np.int32)

    reduced, lat = run_reduced(args.run_ort, a.file, x)
    _, lat = run_reduced(args.run_ort, a.file, x[:1], args.timing_runs)
    full = run_batched(load_model(str(a.file), "onnxruntime", 1), x)
    # the scores are computed: evaluate_scores batches them through as they are
    m_full, top_full = evaluate_scores(lambda b: b, full, targets, hist, sampled=False, never=ds.oov_index)
    m_red, top_red = evaluate_scores(lambda b: b, reduced, targets, hist, sampled=False, never=ds.oov_index,
                                     reference_topk=top_full)
    named = required_operators(config)
    with tempfile.TemporaryDirectory() as d:
        # the operators the file uses, read from the file again by onnxruntime's own tool
        create_config_from_models([a.file], Path(d) / "again.config", False)
        ops_in_file = required_operators(Path(d) / "again.config")
        try:
            run_reduced(args.run_ort, sin_model(Path(d) / "sin.ort", maxlen), x[:1])
            control = {"loaded": True}
        except RuntimeError as e:
            control = {"loaded": False, "error": str(e).splitlines()[-1][:300]}
    rec = {
        "artifact": a.name, "file": a.file.name, "size_bytes": a.file.stat().st_size,
        "config": config.read_text().splitlines()[2:], "operators_in_file": sorted(f"{d}:{o}" for d, o in ops_in_file),
        "file_ops_all_named_in_config": ops_in_file <= named,
        "users": int(len(x)), "max_abs_diff_vs_full_ort": float(np.abs(reduced - full).max()),
        "top10_identical_share": float((top_red == top_full).all(1).mean()),
        "top10_overlap_vs_full_ort": m_red["top10_overlap"],
        "ndcg@10_reduced": m_red["ndcg@10"], "ndcg@10_full_ort": m_full["ndcg@10"],
        "reduced_batch1_latency": lat, "negative_control_sin": control,
    }
    lib = args.run_ort.resolve().parent
    print(json.dumps(rec, indent=2))
    if args.out:
        args.out.write_text(json.dumps(rec, indent=2) + "\n")
    ok = rec["file_ops_all_named_in_config"] and rec["top10_identical_share"] == 1.0 and not control["loaded"]
    print(("OK: " if ok else "FAILED: ") + f"{a.name} in the reduced build ({lib})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
