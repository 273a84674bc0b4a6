#!/usr/bin/env python3
"""Seconds per training epoch of the SASRec teacher, several configurations side by side.

Each configuration trains a few epochs from the same seed, in turns (A B C A B C ...), so that
they share whatever else the machine is doing; the figure is the median training time of an
epoch, validation excluded.

    python benchmarks/teacher_epoch_time.py --data ../shared/data/ml-100k/u.data --format movielens \
        --threads 2 --epochs 3 --rounds 2 --out benchmarks/results/teacher-epoch-time.json

Configurations: window 200 (the reference's maxlen), window 200 with length-bucketed batches,
window 50. Run it on a quiet machine: other processes on the same cores change the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from edgekd.data import DataSpec, load_data
from edgekd.train import TrainConfig, train_teacher

CONFIGS = {
    "window 200": {"maxlen": 200},
    "window 200, bucketed": {"maxlen": 200, "bucket": True},
    "window 50": {"maxlen": 50},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="movielens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per configuration per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ds = load_data(DataSpec(format=args.format, path=args.data))
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, kw in CONFIGS.items():
                cfg = TrainConfig(model="sasrec", epochs=args.epochs, patience=args.epochs, seed=0,
                                  threads=args.threads, **kw)
                a = train_teacher(ds, cfg, store=Path(tmp), name=f"t{r}-{len(times[name])}-{name.replace(' ', '')}")
                epochs = [h["epoch_s"] for h in a.card["history"]]
                times[name] += epochs
                print(f"round {r + 1} {name}: " + ", ".join(f"{t:.2f}" for t in epochs) + " s", flush=True)
    out = {name: {"median_s_per_epoch": statistics.median(v), "epochs": v} for name, v in times.items()}
    out["config"] = {"threads": args.threads, "epochs": args.epochs, "rounds": args.rounds, "data": args.data}
    for name in CONFIGS:
        print(f"{name}: {out[name]['median_s_per_epoch']:.2f} s per epoch (median of {len(times[name])})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
