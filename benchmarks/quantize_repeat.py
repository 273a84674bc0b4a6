#!/usr/bin/env python3
"""`edgekd quantize` on one student, run several times: does its gate ever call a recipe slower
than fp32 when the recipe's interval does not exclude 1.0, and does it choose the same recipe?

Each run is a whole `quantize` (export fp32 and every recipe, time them in interleaved rounds,
gate, choose), as a user would run it, one after another. The record keeps every run's rows:
speed-up against fp32 with its bootstrap interval over rounds, the verdict, and the winner.

    python benchmarks/quantize_repeat.py STUDENT [--target tflite-int8 --target onnx-int8] \
        [--runs 5] [--store DIR] [--out benchmarks/quantize/repeat-DATE.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402

from edgekd.artifact import load_artifact  # noqa: E402
from edgekd.export.quantize import QuantizeConfig, quantize  # noqa: E402


def load() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("student", help="torch student artifact (directory or store name)")
    ap.add_argument("--target", action="append", help="quantised format (repeatable; default tflite-int8, onnx-int8)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=QuantizeConfig.rounds)
    ap.add_argument("--store", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    a = load_artifact(Path(args.student), args.store)
    targets = args.target or ["tflite-int8", "onnx-int8"]
    runs = []
    for i in range(args.runs):
        for t in targets:
            before, t0 = load(), time.perf_counter()
            rep = quantize(a, QuantizeConfig(target=t, rounds=args.rounds), store=args.store,
                           say=lambda m, i=i, t=t: print(f"[run {i + 1} {t}] {m}", flush=True))
            rows = [{k: r.get(k) for k in ("recipe", "error", "p50_ms", "speedup", "speedup_interval",
                                           "latency_verdict", "not_slower", "smaller", "accurate", "size_bytes")}
                    for r in rep["rows"]]
            runs.append({"run": i + 1, "target": t, "winner": rep["winner"]["recipe"] if rep["winner"] else None,
                         "why": rep["why"],
                         "fp32_p50_ms": rep["fp32"]["p50_ms"], "rows": rows,
                         "seconds": time.perf_counter() - t0, "loadavg_before": before, "loadavg_after": load()})
    summary = {}
    for t in targets:
        mine = [r for r in runs if r["target"] == t]
        timed = [row for r in mine for row in r["rows"] if row.get("speedup_interval")]
        winners = [r["winner"] for r in mine]
        summary[t] = {
            "runs": len(mine),
            "winners": winners,
            "same_winner_every_run": len(set(winners)) == 1,
            # the gate's rule: "slower" only when the whole interval lies below 1.0
            "called_slower": sum(row["latency_verdict"] == "slower" for row in timed),
            "called_slower_with_interval_containing_1": sum(
                row["latency_verdict"] == "slower" and row["speedup_interval"][1] >= 1.0 for row in timed),
            "winner_called_slower": sum(row["latency_verdict"] == "slower" for r in mine for row in r["rows"]
                                        if row["recipe"] == r["winner"]),
            "verdicts_by_recipe": {rec: [row["latency_verdict"] for r in mine for row in r["rows"]
                                         if row["recipe"] == rec and row.get("latency_verdict")]
                                   for rec in dict.fromkeys(row["recipe"] for r in mine for row in r["rows"])},
        }
    save("quantize_repeat.py", {"student": {"name": a.name, "sha256": a.sha256, "arch": a.card.get("arch"),
                                            "params": a.card.get("params"), "dataset": a.card.get("dataset", {}).get("name")},
                                "rounds": args.rounds, "threads": 1, "cpus": os.cpu_count(),
                                "summary": summary, "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
