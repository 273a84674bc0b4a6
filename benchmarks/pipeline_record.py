#!/usr/bin/env python3
"""Gather one `edgekd pipeline` run into a record: each stage's peak memory, each artifact's
size, test NDCG@10, parity and training figures, the bench's latency per file, and GNU time's
wall clock and peak RSS. Reads only what the run wrote.

    /usr/bin/time -v edgekd pipeline ... --out MODELS --results RESULTS 2> ERR
    python benchmarks/pipeline_record.py MODELS RESULTS --stderr ERR --command "..." --out FILE
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import wrap  # noqa: E402


def _artifact(card: dict) -> dict:
    cfg = next(iter(card.get("config", {}).values()), {})
    return {"size_bytes": card.get("size_bytes"), "test_ndcg@10": card.get("metrics", {}).get("test_ndcg@10"),
            "parity": card.get("metrics", {}).get("parity"), "teacher_cache": card.get("teacher_cache"),
            "epoch_s": [h["epoch_s"] for h in card["history"]] if card.get("history") else None,
            "negatives": cfg.get("negatives") if isinstance(cfg, dict) else None}


def _bench(r: dict) -> dict:
    lat = r["latency_ms"]
    return {"p50_ms": lat["p50_ms"], "p50_rounds_ms": lat.get("p50_rounds_ms"), "ndcg@10": r["accuracy"]["ndcg@10"],
            "users": r["accuracy"]["users"], "peak_rss_bytes": r["peak_rss_bytes"], "size_bytes": r["size_bytes"],
            "speedup_vs_teacher": r.get("speedup_vs_teacher")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path)
    ap.add_argument("results", type=Path)
    ap.add_argument("--stderr", type=Path, required=True, help="the pipeline's stderr, GNU time -v's report at its end")
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", default=None, help="the commit the pipeline ran (default: HEAD)")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    err = args.stderr.read_text(errors="replace").replace("\r", "\n")
    run = sorted(p for p in args.results.iterdir() if (p / "pipeline-memory.json").is_file())[-1]
    arts = {p.name: _artifact(json.loads((p / "artifact.json").read_text()))
            for p in sorted(args.models.iterdir()) if (p / "artifact.json").is_file()}
    bench = {}
    for f in sorted(run.glob("*__*.json")):
        r = json.loads(f.read_text())
        if isinstance(r, dict) and r.get("status") == "ok":
            bench[r["artifact"]["name"]] = _bench(r)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", err)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    data = re.search(r"^data: (.*)$", err, re.M)
    sizes = {a: v["size_bytes"] for a, v in arts.items()}
    ratio = {}
    for fmt in ("onnx", "tflite"):
        fp = [s for a, s in sizes.items() if a.endswith(f"-{fmt}-fp32")]
        q = [s for a, s in sizes.items() if a.endswith(f"-{fmt}-int8")]
        if fp and q:
            ratio[fmt] = fp[0] / q[0]
    results = {"data": data.group(1) if data else None,
               "pipeline_memory": json.loads((run / "pipeline-memory.json").read_text()),
               "artifacts": arts, "bench_local_cpu": bench,
               "time_v": {"wall": wall.group(1) if wall else None,
                          "maximum_resident_set_kb": int(rss.group(1)) if rss else None},
               "int8_smaller_than_fp32": ratio}
    rec = wrap(results, args.command, commit=args.commit, machine_=args.machine)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("artifacts", "bench_local_cpu")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
