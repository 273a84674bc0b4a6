#!/usr/bin/env python3
"""The evaluation's top-K selection at a large catalogue: numpy's argpartition of -scores (the
selection edgekd used until 2026-12-07) against `edgekd.metrics.topk` (torch.topk), side by side
in alternating rounds in one process, alone and inside a whole `evaluate_scores` call (full
ranks, 100 sampled negatives, top-10), over the same random scores and histories.

With --runner: the device runner's accuracy-pass selection instead (it must run without
torch): the former `masked_topk` (argpartition of every row) against the current one (a
block-maximum prefilter, then argpartition of the candidates), in alternating rounds.

    python benchmarks/topk_eval.py --items 1000000 --users 64 --rounds 5 [--threads 2] [--runner] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402

from edgekd import metrics  # noqa: E402


def numpy_topk(scores, histories, k=metrics.K):
    """The former selection: argpartition of the negated, masked scores, then a stable sort."""
    s = metrics.mask_seen(scores, histories)
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1) + 1


def runner_argpartition(scores, seen, k):
    """The device runner's former selection: masked_topk without its block prefilter (a block
    wider than the row leaves no whole block), i.e. argpartition of every negated, masked row."""
    from edgekd import device_runner as dr

    saved, dr.BLOCK = dr.BLOCK, scores.shape[1] + 1
    try:
        return dr.masked_topk(scores, seen, k)
    finally:
        dr.BLOCK = saved


def compare_runner(scores, hist, rounds):
    """Old and new runner selections, alternating which goes first; the same values chosen?"""
    from edgekd.device_runner import masked_topk

    seen = np.stack(hist)
    old, new = runner_argpartition(scores, seen, metrics.K), masked_topk(scores, seen, metrics.K)
    same = bool(np.array_equal(np.take_along_axis(scores, old - 1, 1), np.take_along_axis(scores, new - 1, 1)))
    times = {"argpartition": [], "prefilter": []}
    pairs = [("argpartition", runner_argpartition), ("prefilter", masked_topk)]
    for r in range(rounds):
        for name, fn in (pairs if r % 2 == 0 else pairs[::-1]):
            t = time.perf_counter()
            fn(scores, seen, metrics.K)
            times[name].append(time.perf_counter() - t)
    ratios = [o / n for o, n in zip(times["argpartition"], times["prefilter"])]
    return {"seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "old_over_new_per_round": [round(x, 2) for x in ratios],
            "old_over_new_median": round(statistics.median(ratios), 2), "same_top10_values": same}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runner", action="store_true", help="the device runner's selection, old against new")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((a.users, a.items), dtype=np.float32)
    hist = [rng.choice(np.arange(1, a.items + 1), size=a.history, replace=False) for _ in range(a.users)]
    targets = np.array([rng.integers(1, a.items + 1) for _ in range(a.users)])
    inputs = np.arange(a.users)[:, None]
    if a.runner:
        save("topk_eval.py", {"items": a.items, "users": a.users, "history": a.history, "rounds": a.rounds,
                              "what": "device runner masked_topk", **compare_runner(scores, hist, a.rounds)}, a.out)
        return 0

    def evaluate(fn):
        saved, metrics.topk = metrics.topk, fn
        try:
            return metrics.evaluate_scores(lambda b: scores[b[:, 0]], inputs, targets, hist, num_items=a.items)
        finally:
            metrics.topk = saved

    ref = numpy_topk(scores, hist)
    new = metrics.topk(scores, hist)
    same_sets = float(np.mean([set(x) == set(y) for x, y in zip(ref.tolist(), new.tolist())]))
    m_old, m_new = evaluate(numpy_topk)[0], evaluate(metrics.topk)[0]
    times = {"topk_numpy": [], "topk_torch": [], "eval_numpy": [], "eval_torch": []}
    for r in range(a.rounds):  # alternate which goes first
        pairs = [("numpy", numpy_topk), ("torch", metrics.topk)]
        for name, fn in (pairs if r % 2 == 0 else pairs[::-1]):
            t = time.perf_counter()
            fn(scores, hist)
            times[f"topk_{name}"].append(time.perf_counter() - t)
            t = time.perf_counter()
            evaluate(fn)
            times[f"eval_{name}"].append(time.perf_counter() - t)
    ratios = {w: [o / n for o, n in zip(times[f"{w}_numpy"], times[f"{w}_torch"])] for w in ("topk", "eval")}
    results = {
        "items": a.items, "users": a.users, "history": a.history, "rounds": a.rounds, "threads": a.threads,
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "numpy_over_torch_per_round": {k: [round(x, 2) for x in v] for k, v in ratios.items()},
        "numpy_over_torch_median": {k: round(statistics.median(v), 2) for k, v in ratios.items()},
        "same_top10_sets": same_sets,
        "same_metrics": m_old == m_new,
    }
    save("topk_eval.py", results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
