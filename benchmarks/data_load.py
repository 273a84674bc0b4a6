#!/usr/bin/env python3
"""Loading a large interaction file: the line-by-line Python parser against the vectorised one
(pyarrow.csv + numpy), side by side.

Generates a MovieLens-format file (user TAB item TAB rating TAB timestamp, numeric ids, Zipf
item popularity) of N events outside the repository, then loads it with each loader in turns
(old new, new old, ...), each load in a fresh subprocess so that its peak RSS is its own. Both
must give the same dataset fingerprint. The figure is the per-round ratio old/new (median and
range) and each loader's median seconds and peak RSS.

    python benchmarks/data_load.py --events 5000000 --rounds 3 --out benchmarks/scale/data-load-5M.json

The timed span is load_data (read, parse, build the dataset), not the fingerprint. With
`--cached`, a third loader reads the built dataset from load_data's cache (filled once before
the rounds: what every stage after the first does), hashing the file to find its entry.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from edgekd.data import DataSpec, load_data
spec = DataSpec(format="movielens", path=sys.argv[1])
t = time.perf_counter()
ds = load_data(spec, fast=sys.argv[2] != "old", store=sys.argv[3] if sys.argv[2] == "cached" else None)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "fingerprint": ds.fingerprint(), "users": ds.num_users, "items": ds.num_items,
                  "events": ds.num_events}))
"""


def generate(path: Path, events: int, seed: int = 0) -> None:
    """N events over N/100 users and N/250 items (Zipf popularity), in a MovieLens file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    users = max(events // 100, 1)
    items = max(events // 250, 1)
    p = 1.0 / np.arange(1, items + 1) ** 1.05
    item = rng.choice(items, size=events, p=p / p.sum()) + 1
    user = rng.integers(1, users + 1, size=events)
    ts = 874_724_710 + rng.integers(0, 200_000_000, size=events)
    rating = rng.integers(1, 6, size=events)
    t = pa.table({"u": user, "i": item, "r": rating, "t": ts})
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(t, tmp, write_options=pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))
    os.replace(tmp, path)


def run(path: Path, which: str, store: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), which, *([str(store)] if store else [])],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/edgekd-bench"), help="where the generated file goes")
    ap.add_argument("--only-new", action="store_true", help="time the vectorised loader alone (a file too large "
                    "for the old one on this machine)")
    ap.add_argument("--cached", action="store_true", help="also time a load from the built-dataset cache "
                    "(load_data's cache, filled once before the rounds)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"events-{args.events}.data"
    if not path.is_file():
        t = time.perf_counter()
        generate(path, args.events)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
    load_before = os.getloadavg()
    which = (["new"] if args.only_new else ["old", "new"]) + (["cached"] if args.cached else [])
    cache = args.dir / f"cache-{args.events}"
    if args.cached:
        shutil.rmtree(cache, ignore_errors=True)
        run(path, "cached", cache)  # fills it
    rows: dict[str, list[dict]] = {w: [] for w in which}
    for r in range(args.rounds):
        order = which if r % 2 == 0 else which[::-1]
        for w in order:
            rows[w].append(run(path, w, cache if w == "cached" else None))
            print(f"round {r + 1} {w}: {rows[w][-1]['seconds']:.2f} s, {rows[w][-1]['peak_rss_mb']:.0f} MB",
                  flush=True)
    fps = {x["fingerprint"] for w in which for x in rows[w]}
    if len(fps) != 1:
        print("the loaders disagree: fingerprints", fps, file=sys.stderr)
        return 1
    first = rows[which[0]][0]
    results = {
        "file": {"events": args.events, "bytes": path.stat().st_size, "format": "movielens",
                 "users": first["users"], "items": first["items"], "events_kept": first["events"]},
        "same_fingerprint": True,
        "loaders": {w: {"seconds": [x["seconds"] for x in rows[w]],
                        "median_seconds": statistics.median(x["seconds"] for x in rows[w]),
                        "peak_rss_mb": [x["peak_rss_mb"] for x in rows[w]]} for w in which},
        "load_average_before_after": [load_before, os.getloadavg()],
    }
    for a, b in (("old", "new"), ("new", "cached")):
        if a in rows and b in rows:
            ratios = [x["seconds"] / y["seconds"] for x, y in zip(rows[a], rows[b])]
            results[f"speedup_{a}_over_{b}"] = {"per_round": ratios, "median": statistics.median(ratios),
                                                "min": min(ratios), "max": max(ratios)}
    from record import save  # benchmarks/record.py: the standard record shape

    save('data_load.py', results, args.out,
         "CPUs shared with other processes (load average in results)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
