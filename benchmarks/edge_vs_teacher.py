#!/usr/bin/env python3
"""The compressed student against the teacher a user starts from, side by side in one run.

Benchmarks the teacher (torch, fp32) and each candidate artifact on the local CPU at batch 1
with the same threads, in one `edgekd bench` run (latency in interleaved rounds, edgekd.timing),
and prints for each candidate the ratios the compression goal is stated in: how many times faster
(teacher p50 / candidate p50, paired by round, with its 95% bootstrap interval over rounds), how
many times smaller (file sizes), and the share of the teacher's test NDCG@10 it keeps. The speed
goal counts as met only when the whole interval clears it.

    python benchmarks/edge_vs_teacher.py models/T models/S-onnx-int8 models/S-tflite-int8 \
        [--threads 1] [--rounds 5] [--goal-speedup 50 --goal-smaller 20 --goal-ndcg 0.95] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edgekd.artifact import load_artifact
from edgekd.bench import bench
from edgekd.targets import load_target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher")
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--goal-speedup", type=float, default=50.0)
    ap.add_argument("--goal-smaller", type=float, default=20.0)
    ap.add_argument("--goal-ndcg", type=float, default=0.95)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    teacher = load_artifact(args.teacher)
    cands = [load_artifact(c) for c in args.candidates]
    with tempfile.TemporaryDirectory() as tmp:
        _, recs = bench(cands, load_target("local-cpu"), teacher=teacher, threads=args.threads, out=Path(tmp),
                        rounds=args.rounds)
    by = {r["artifact"]["name"]: r for r in recs}
    t = by[teacher.name]
    if t["status"] != "ok":
        print(f"teacher did not run: {t.get('error')}", file=sys.stderr)
        return 1
    rows = []
    for a in cands:
        r = by[a.name]
        if r["status"] != "ok":
            rows.append({"artifact": a.name, "status": r["status"], "error": r.get("error")})
            continue
        iv = r.get("speedup_vs_teacher") or {}
        speed = iv.get("ratio") or t["latency_ms"]["p50_ms"] / r["latency_ms"]["p50_ms"]
        smaller = t["size_bytes"] / r["size_bytes"]
        keep = r["accuracy"]["ndcg@10"] / t["accuracy"]["ndcg@10"]
        rows.append({"artifact": a.name, "status": "ok", "p50_ms": r["latency_ms"]["p50_ms"], "size_bytes": r["size_bytes"],
                     "p50_rounds_ms": r["latency_ms"].get("p50_rounds_ms"),
                     "ndcg@10": r["accuracy"]["ndcg@10"], "times_faster": speed,
                     "times_faster_interval": [iv.get("low"), iv.get("high")], "times_smaller": smaller,
                     "ndcg_kept": keep, "meets": {"speed": (iv.get("low") or speed) >= args.goal_speedup, "size": smaller >= args.goal_smaller,
                                                  "ndcg": keep >= args.goal_ndcg}})
    print(f"teacher {teacher.name}: p50 {t['latency_ms']['p50_ms']:.3f} ms, {t['size_bytes']:,} bytes, "
          f"NDCG@10 {t['accuracy']['ndcg@10']:.4f} ({t['runtime']}, {args.threads} thread(s))")
    print(f"| candidate | p50 ms | bytes | NDCG@10 | x faster (goal {args.goal_speedup:g}) | "
          f"x smaller (goal {args.goal_smaller:g}) | NDCG kept (goal {args.goal_ndcg:.0%}) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['artifact']} | {r['status']}: {r['error']} |")
            continue
        ok = {k: ("yes" if v else "NO") for k, v in r["meets"].items()}
        print(f"| {r['artifact']} | {r['p50_ms']:.4f} | {r['size_bytes']:,} | {r['ndcg@10']:.4f} | "
              f"{r['times_faster']:.1f} [{_f(r['times_faster_interval'][0])}-{_f(r['times_faster_interval'][1])}] ({ok['speed']}) | {r['times_smaller']:.1f} ({ok['size']}) | "
              f"{r['ndcg_kept']:.1%} ({ok['ndcg']}) |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"teacher": {"name": teacher.name, "p50_ms": t["latency_ms"]["p50_ms"],
                                                    "size_bytes": t["size_bytes"], "ndcg@10": t["accuracy"]["ndcg@10"],
                                                    "runtime": t["runtime"]},
                                        "threads": args.threads, "rounds": args.rounds,
                                        "machine_load": t.get("machine_load"), "candidates": rows}, indent=2))
    return 0


def _f(x) -> str:
    return "?" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
