#!/usr/bin/env python3
"""Exports at catalogue scale: a student of 100k or 1M items through every export format, fp32
and int8, each ending in an in-graph top-K.

For each catalogue (synthetic, `edgekd data`'s generator; `--scale NAME=KEY=VALUE,...`), in its
own processes, each measured with GNU time (wall seconds, peak RSS):

1. `edgekd train --model sasrec-student` for `--epochs` epochs (sampled negatives: the default
   above 20,000 items), so that the exported scores are a trained model's, not an initial one's;
2. `edgekd export --target F --topk K` for every format F: parity with torch is checked before
   anything is written (top-K overlap with torch's top-K on validation users), and the card
   records it;
3. `edgekd bench` of the exports at batch 1, one thread, in interleaved rounds, on a sample of
   test users (`--users`) for accuracy.

The record gives, per catalogue and format: file size, the int8/fp32 size ratio, export seconds
and peak RSS, top-K overlap with torch and the share of validation users whose top-K is identical,
p50 at batch 1 and NDCG@10. What fails is recorded with its message, not hidden.

    python benchmarks/export_scale.py --store /tmp/xs --scale 100k=users=20000,items=110000,mean_length=50,zipf=0.5 \
        --out benchmarks/scale/exports-100k.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save, timed  # noqa: E402

FORMATS = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="artifact store (outside the repository)")
    ap.add_argument("--scale", action="append", required=True, help="NAME=KEY=VALUE,KEY=VALUE (synthetic settings)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--topk", type=int, default=10, help="the in-graph top-K; 0: files of every item's score")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--users", type=int, default=2000, help="bench: test users scored for accuracy")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    edgekd = [sys.executable, "-m", "edgekd"]
    results = {"settings": {k: getattr(args, k) for k in ("epochs", "d", "topk", "users", "rounds")}, "catalogues": {}}
    logs = args.store / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for spec in args.scale:
        name, _, kv = spec.partition("=")
        synth = [a for pair in kv.split(",") for a in ("--synthetic", pair)]
        row: dict = {"synthetic": kv}
        student = f"student-{name}"
        if not (args.store / student).is_dir():
            row["train"] = timed([*edgekd, "train", *synth, "--model", "sasrec-student", "--d", str(args.d),
                                  "--maxlen", "50", "--epochs", str(args.epochs), "--out", str(args.store),
                                  "--name", student], logs / f"train-{name}.log")
            m = re.search(r"data: (.*)", (logs / f"train-{name}.log").read_text())
            row["data"] = m.group(1) if m else None
            if row["train"]["rc"]:
                results["catalogues"][name] = row
                continue
        card = json.loads((args.store / student / "artifact.json").read_text())
        row["items"] = card["arch_kwargs"]["num_items"]
        row["negatives"] = card["config"]["train"].get("negatives")
        row["torch_test_ndcg@10"] = card["metrics"].get("test_ndcg@10")
        exports, files = {}, []
        for fmt in args.formats.split(","):
            out_name = f"{student}-{fmt}" + (f"-top{args.topk}" if args.topk else "")
            shutil.rmtree(args.store / out_name, ignore_errors=True)
            r = timed([*edgekd, "export", str(args.store / student), "--target", fmt,
                       *(["--topk", str(args.topk)] if args.topk else []),
                       "--out", str(args.store), "--name", out_name], logs / f"export-{name}-{fmt}.log")
            if not r["rc"]:
                c = json.loads((args.store / out_name / "artifact.json").read_text())
                r["bytes"] = c["size_bytes"]
                r["parity"] = c["metrics"].get("parity")
                files.append(str(args.store / out_name))
            exports[fmt] = r
        for prec in ("onnx", "tflite"):
            a, b = exports.get(f"{prec}-fp32", {}), exports.get(f"{prec}-int8", {})
            if a.get("bytes") and b.get("bytes"):
                exports[f"{prec}-int8"]["smaller_than_fp32"] = round(a["bytes"] / b["bytes"], 2)
        row["exports"] = exports
        if files:
            res = args.store / "results"
            r = timed([*edgekd, "bench", *files, "--target", "local-cpu", "--threads", "1", "--rounds",
                       str(args.rounds), "--users", str(args.users), "--results", str(res), "--run", f"bench-{name}-top{args.topk}",
                       "--out", str(args.store)], logs / f"bench-{name}.log")
            row["bench"] = {"rc": r["rc"], "seconds": r["seconds"]}
            for f in sorted((res / f"bench-{name}-top{args.topk}").glob("*__local-cpu.json")):
                rec = json.loads(f.read_text())
                lat = rec.get("latency_ms") or {}
                acc = rec.get("accuracy") or {}
                row["bench"][f.name.split("__")[0]] = {
                    "p50_ms": lat.get("p50_ms"), "p50_rounds_ms": lat.get("p50_rounds_ms"), "ndcg@10": acc.get("ndcg@10"),
                    "users": acc.get("users"), "peak_rss_mb": round((rec.get("peak_rss_bytes") or 0) / 2**20, 1)}
        results["catalogues"][name] = row
    save("export_scale.py", results, args.out,
         note=f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
