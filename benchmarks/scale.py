#!/usr/bin/env python3
"""Teacher training at catalogue scale: seconds per epoch and peak memory, full softmax against
sampled negatives, on a small (MovieLens-100k, 1.7k items) and a large (synthetic, ~24k items)
catalogue, side by side.

Each (catalogue, loss) configuration trains `--epochs` epochs from the same seed in a fresh
subprocess (so its peak RSS is its own), in turns (A B C D, D C B A, ...), so that the
configurations share whatever else the machine is doing. The figure is the median training
time of an epoch (validation excluded, as in the teacher's history) and the peak RSS.

    python benchmarks/scale.py --ml100k PATH/u.data --users 6000 --epochs 2 --rounds 2 \
        --out benchmarks/scale/teacher-epoch-scale.json

To keep the run short, `--users` caps the users of the large catalogue (its item catalogue is kept
whole: the softmax cost depends on it) and validation uses `--eval-users` users; the window is
50 (the reference SASRec's).

With `--reference DIR` (the `python/` folder of a checkout of pmixer/SASRec.pytorch, kept outside
this repository), the reference implementation joins the turns on the large catalogue: the same
sequences written in its text format (`edgekd data convert`'s writer) to DIR/data/, run with its
defaults on the CPU and `--maxlen 50`; its seconds per epoch are the difference between a 3-epoch
and a 1-epoch run's wall time, halved (its start-up and data loading cancel out; it evaluates
only every 20 epochs). `--only-large` leaves MovieLens-100k out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNTH = {"users": 31000, "items": 23700, "mean_length": 9}

CHILD = r"""
import json, resource, sys, dataclasses
import torch
from edgekd.data import DataSpec, load_data
from edgekd.models import create_model
from edgekd.train import TrainConfig, fit, task_loss
a = json.loads(sys.argv[1])
ds = load_data(DataSpec(**a["spec"]))
if a.get("users"):  # fewer users, the same catalogue
    ds = dataclasses.replace(ds, sequences=ds.sequences[:a["users"]], users=ds.users[:a["users"]])
cfg = TrainConfig(model="sasrec", maxlen=50, epochs=a["epochs"], patience=a["epochs"], eval_users=a["eval_users"],
                  negatives=a["negatives"], seed=0, threads=a["threads"])
torch.manual_seed(0)
model = create_model(cfg.model, **cfg.arch_kwargs(ds.num_items))
log = fit(model, ds, task_loss(model, cfg.label_smoothing, cfg, ds), cfg)
print(json.dumps({"epoch_s": [r["epoch_s"] for r in log["history"]], "items": ds.num_items,
                  "users": ds.num_users, "events": ds.num_events,
                  "valid_ndcg@10": [r["valid_ndcg@10"] for r in log["history"]],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(args_child: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args_child)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_reference(ref: Path, data_name: str, epochs: int, threads: int) -> float:
    """Wall seconds of the reference SASRec training `epochs` epochs (its output discarded)."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "main.py", "--dataset", data_name, "--train_dir", "edgekd-bench",
                    "--device", "cpu", "--maxlen", "50", "--num_epochs", str(epochs)], cwd=ref, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml100k", type=Path, required=True, help="MovieLens-100k u.data")
    ap.add_argument("--users", type=int, default=6000, help="users of the large catalogue (0: all 31000)")
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eval-users", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--reference", type=Path, default=None, help="pmixer/SASRec.pytorch's python/ folder")
    ap.add_argument("--only-large", action="store_true", help="the synthetic catalogue only")
    ap.add_argument("--items", type=int, default=SYNTH["items"], help="the synthetic `items` setting (23,700 "
                    "leaves 15,162 items that occur; 70,000 about 24k)")
    args = ap.parse_args()
    SYNTH["items"] = args.items

    data = {"ml-100k": ({"format": "movielens", "path": str(args.ml100k)}, None),
            "synthetic-24k": ({"format": "synthetic", "synthetic": SYNTH}, args.users or None)}
    if args.only_large:
        del data["ml-100k"]
    configs = [(d, neg) for d in data for neg in (0, args.negatives)]
    runs: dict[str, list[dict]] = {f"{d} negatives={n}": [] for d, n in configs}
    ref_name = "edgekd-synthetic-24k"
    if args.reference:
        import dataclasses

        from edgekd.data import DataSpec, load_data, write_sasrec_text

        ds = load_data(DataSpec(format="synthetic", synthetic=SYNTH))
        if args.users:
            ds = dataclasses.replace(ds, sequences=ds.sequences[:args.users], users=ds.users[:args.users])
        write_sasrec_text(ds, args.reference / "data" / f"{ref_name}.txt")
        configs.append(("synthetic-24k", "reference"))
        runs["synthetic-24k reference"] = []
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for d, neg in (configs if r % 2 == 0 else configs[::-1]):
            if neg == "reference":
                one, three = (run_reference(args.reference, ref_name, e, args.threads) for e in (1, 3))
                runs["synthetic-24k reference"].append({"epoch_s": [(three - one) / 2], "wall_1_epoch_s": one,
                                                        "wall_3_epochs_s": three})
                print(f"round {r + 1} reference: {(three - one) / 2:.1f} s an epoch", flush=True)
                continue
            spec, users = data[d]
            res = run({"spec": spec, "users": users, "epochs": args.epochs, "eval_users": args.eval_users,
                       "negatives": neg, "threads": args.threads})
            runs[f"{d} negatives={neg}"].append(res)
            print(f"round {r + 1} {d} negatives={neg}: epochs {[round(x, 1) for x in res['epoch_s']]} s, "
                  f"{res['peak_rss_mb']:.0f} MB, {res['items']} items", flush=True)
    results = {}
    if args.reference:
        rs = runs.pop("synthetic-24k reference")
        secs = [x["epoch_s"][0] for x in rs]
        results["synthetic-24k reference"] = {
            "implementation": "pmixer/SASRec.pytorch python/main.py, its defaults (hidden 50, 2 blocks, 1 head, "
                              "batch 128, BCE with one sampled negative) with --device cpu --maxlen 50",
            "epoch_seconds": secs, "median_epoch_seconds": statistics.median(secs), "runs": rs}
    for k, rs in runs.items():
        secs = [s for x in rs for s in x["epoch_s"]]
        results[k] = {"items": rs[0]["items"], "users": rs[0]["users"], "events": rs[0]["events"],
                      "epoch_seconds": secs, "median_epoch_seconds": statistics.median(secs),
                      "peak_rss_mb": [x["peak_rss_mb"] for x in rs],
                      "valid_ndcg@10_after_each_epoch": [x["valid_ndcg@10"] for x in rs]}
    for d in data:
        full, samp = results[f"{d} negatives=0"], results[f"{d} negatives={args.negatives}"]
        results[f"{d} speedup"] = full["median_epoch_seconds"] / samp["median_epoch_seconds"]
    if args.reference:
        ref = results["synthetic-24k reference"]["median_epoch_seconds"]
        for n in (0, args.negatives):
            results[f"synthetic-24k negatives={n} over reference"] = \
                results[f"synthetic-24k negatives={n}"]["median_epoch_seconds"] / ref
    from record import save  # benchmarks/record.py: the standard record shape

    save('scale.py', {**results, "load_average_before_after": [load_before, os.getloadavg()]}, args.out,
         f"CPUs shared with other processes (load average in results), {args.threads} torch threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
