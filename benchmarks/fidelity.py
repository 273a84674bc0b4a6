#!/usr/bin/env python3
"""Measurement fidelity: does edgekd's harness time a file the way the runtimes' own tools do?

Same file, same machine, same threads, side by side in one run, alternating A/B over several
rounds so that drift hits both:
  - a .tflite: edgekd's device runner vs ai-edge-litert's own benchmark tool
    (ai_edge_litert/tools/benchmark_litert_model.py, run as a module);
  - a .onnx:   edgekd's device runner vs a bare timed `session.run` loop in a fresh process.
Prints and writes the p50 of each and their ratio; the goal is within 10%.

    python benchmarks/fidelity.py --tflite models/X-tflite-fp32 --onnx models/X-onnx-fp32 [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.artifact import load_artifact
from edgekd.runner import input_maxlen, run_runner, write_inputs
from edgekd.targets import load_target
from edgekd.timing import ratio_interval
from edgekd.torch_io import dataset_for

BARE_ORT = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, npz, threads, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
rows = np.load(npz)["inputs"][:256]
for i in range(warmup):
    s.run(None, {name: rows[i % len(rows)][None]})
t = []
for i in range(runs):
    x = rows[i % len(rows)][None]
    t0 = time.perf_counter_ns(); s.run(None, {name: x}); t.append((time.perf_counter_ns() - t0) / 1e6)
print(json.dumps({"p50_ms": float(np.median(t)), "mean_ms": float(np.mean(t)), "runs": runs}))
"""


def harness(a, target, npz, threads) -> float:
    return run_runner(a, target, npz, threads)["latency"]["p50_ms"]


def litert_tool(a, threads, runs, warmup) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        p = subprocess.run([sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model",
                            str(a.file), "--num_threads", str(threads), "--num_runs", str(runs),
                            "--warmup_runs", str(warmup), "--result_json", str(out)],
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0 or not out.is_file():
            sys.exit(f"benchmark_litert_model failed: {p.stderr.strip().splitlines()[-1:]}")
        lat = json.loads(out.read_text())["latency"]
        return float(lat["median_ms"])


def bare_ort(a, npz, threads, runs, warmup) -> float:
    p = subprocess.run([sys.executable, "-c", BARE_ORT, str(a.file), str(npz), str(threads), str(runs), str(warmup)],
                       capture_output=True, text=True, timeout=900,
                       env={"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        sys.exit(f"bare session.run loop failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout)["p50_ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--tflite", required=True, help="a tflite artifact directory")
    ap.add_argument("--onnx", required=True, help="an onnx artifact directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity.json"))
    args = ap.parse_args()

    tfl, onx = load_artifact(args.tflite), load_artifact(args.onnx)
    ds = dataset_for(tfl)
    target = load_target("local-cpu")
    from dataclasses import replace
    # the same run count as the others; no minimum time, so all three do `runs` timed calls
    target = replace(target, min_runs=args.runs, min_seconds=0.0)
    rounds = []
    with tempfile.TemporaryDirectory() as d:
        _, npz = write_inputs(ds, input_maxlen(tfl), Path(d) / "inputs.npz")
        for r in range(args.rounds):
            row = {
                "tflite_harness_p50_ms": harness(tfl, target, npz, args.threads),
                "tflite_litert_tool_median_ms": litert_tool(tfl, args.threads, args.runs, target.warmup),
                "onnx_harness_p50_ms": harness(onx, target, npz, args.threads),
                "onnx_bare_loop_p50_ms": bare_ort(onx, npz, args.threads, args.runs, target.warmup),
            }
            row["tflite_ratio"] = row["tflite_harness_p50_ms"] / row["tflite_litert_tool_median_ms"]
            row["onnx_ratio"] = row["onnx_harness_p50_ms"] / row["onnx_bare_loop_p50_ms"]
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
            rounds.append(row)
    summary = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    # harness / tool, paired by round, with a bootstrap interval over rounds (edgekd.timing)
    intervals = {"tflite_ratio": ratio_interval([r["tflite_harness_p50_ms"] for r in rounds],
                                                [r["tflite_litert_tool_median_ms"] for r in rounds]),
                 "onnx_ratio": ratio_interval([r["onnx_harness_p50_ms"] for r in rounds],
                                              [r["onnx_bare_loop_p50_ms"] for r in rounds])}
    result = {
        "what": "edgekd harness p50 vs the runtime's own tool / a bare loop, same file, threads, machine",
        "tflite": {"artifact": tfl.name, "sha256": tfl.sha256}, "onnx": {"artifact": onx.name, "sha256": onx.sha256},
        "threads": args.threads, "runs": args.runs, "rounds": rounds, "median_of_rounds": summary,
        "ratio_intervals": intervals,
        "within_10pct": {"tflite": abs(summary["tflite_ratio"] - 1) <= 0.10, "onnx": abs(summary["onnx_ratio"] - 1) <= 0.10},
        "note": "benchmark_litert_model rounds its figures to 0.01 ms",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_of_rounds"], indent=2))
    print(f"within 10%: {result['within_10pct']}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
