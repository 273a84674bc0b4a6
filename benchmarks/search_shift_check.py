#!/usr/bin/env python3
"""After a search: is a candidate's move from validation to test (its share of the teacher's
NDCG@10) larger than the 943-odd users of the data can resolve, and does it follow the targets'
popularity? For the teacher and every distinct completed candidate of RUN_DIR, each exported
file is scored per user on validation and on test (full ranking, every user); then

- `shift`: test share minus validation share, with a 90% interval from a paired bootstrap
  (each resample draws users and keeps all four of a user's figures: teacher and candidate,
  validation and test), so the interval is the spread the users alone would give;
- the same for the difference between two candidates' shifts (`--pair A B`, trial numbers);
- each share by the target's popularity in the training split (tertiles of the training
  events by their item's count, a third of the interactions each), and how many validation and
  test targets fall in each.

The search itself never reads test; this is a study of the search, made afterwards.

    python benchmarks/search_shift_check.py RUN_DIR --store STORE [--pair 6 0] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402

RESAMPLES = 4000


def per_user(a, split: str):
    """NDCG@10 per user (every user, as the search reads them), the artifact's dataset, and
    each user's target in it."""
    from edgekd.search import per_user_ndcg
    from edgekd.torch_io import dataset_for

    ds = dataset_for(a)
    return per_user_ndcg(a, ds, split), ds, ds.eval_split(split)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--pair", type=int, nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="trial numbers whose shifts are compared (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-command", default=None, help="the command that made RUN_DIR, kept in the record")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from edgekd.artifact import load_artifact
    from edgekd.search import describe

    summary = json.loads((args.run_dir / "search.json").read_text())
    teacher = load_artifact(summary["teacher"], store=args.store)
    tv, tds, _ = per_user(teacher, "valid")
    tt, _, _ = per_user(teacher, "test")
    # the targets' popularity: training counts over the teacher's dataset (every candidate's
    # users are the teacher's; a pruned vocabulary maps items differently, so targets are read here)
    train_items = np.concatenate(tds.train_sequences())
    counts = np.bincount(train_items, minlength=tds.num_items + 1)
    vt, tt_items = tds.eval_split("valid")[1], tds.eval_split("test")[1]
    # tertiles of the training events by their item's count: each holds a third of the interactions
    edges = np.quantile(counts[train_items], [1 / 3, 2 / 3])

    def tertile(items):
        return np.digitize(counts[items], edges)  # 0 rare, 1 middle, 2 popular

    vtert, ttert = tertile(vt), tertile(tt_items)

    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(tv), size=(RESAMPLES, len(tv)))

    def shares(sv, st):
        kv = sv[idx].sum(1) / tv[idx].sum(1)
        kt = st[idx].sum(1) / tt[idx].sum(1)
        return kv, kt

    rows, by_trial, seen = [], {}, set()
    for t in json.loads((args.run_dir / "trials.json").read_text()):
        u = t["user_attrs"]
        if t["state"] != "COMPLETE" or u["sha256"] in seen:
            continue
        seen.add(u["sha256"])
        a = load_artifact(u["artifact"], store=args.store)
        if a.sha256 != u["sha256"]:
            raise SystemExit(f"{u['artifact']}: the store's file is not the one trial {t['number']} measured")
        sv, ds, cv = per_user(a, "valid")
        st, _, ct = per_user(a, "test")
        if ds.users != tds.users:
            raise SystemExit(f"{a.name}: its users are not the teacher's; shares cannot be paired by user")
        kv, kt = shares(sv, st)
        by_trial[t["number"]] = (sv, st)
        pop = {}
        for k, name in enumerate(("rare", "middle", "popular")):
            mv, mt = vtert == k, ttert == k
            pop[name] = {"valid_targets": int(mv.sum()), "test_targets": int(mt.sum()),
                         "valid_kept": float(sv[mv].sum() / max(tv[mv].sum(), 1e-12)),
                         "test_kept": float(st[mt].sum() / max(tt[mt].sum(), 1e-12))}
        # targets outside a pruned vocabulary are misses whatever the model ranks: the teacher's
        # NDCG@10 on those users is the share each split loses to the vocabulary alone
        oov = {}
        for split, c, tg in (("valid", cv, tv), ("test", ct, tt)):
            out = (c == ds.oov_index) if ds.oov_index is not None else np.zeros(len(c), bool)
            oov[split] = {"targets": int(out.sum()), "teacher_share_lost": float(tg[out].sum() / tg.sum())}
        rows.append({"trial": t["number"], "candidate": describe(t["params"]), "artifact": u["artifact"],
                     "out_of_vocabulary": oov,
                     "valid_kept": float(sv.sum() / tv.sum()), "test_kept": float(st.sum() / tt.sum()),
                     "search_kept": u["kept"], "search_kept_low": u.get("kept_low"),
                     "speedup_p50": u["speedup_p50"], "size_ratio": u["size_ratio"],
                     "shift": float(st.sum() / tt.sum() - sv.sum() / tv.sum()),
                     "valid_kept_90": [float(np.quantile(kv, q)) for q in (0.05, 0.95)],
                     "test_kept_90": [float(np.quantile(kt, q)) for q in (0.05, 0.95)],
                     "shift_90": [float(np.quantile(kt - kv, q)) for q in (0.05, 0.95)],
                     "shift_at_or_below_zero": float(np.mean(kt - kv <= 0)),
                     "by_target_popularity": pop})
    pairs = []
    for a_, b_ in args.pair:
        (sva, sta), (svb, stb) = by_trial[a_], by_trial[b_]
        kva, kta = shares(sva, sta)
        kvb, ktb = shares(svb, stb)
        d = (kta - kva) - (ktb - kvb)
        pairs.append({"a": a_, "b": b_, "shift_a_minus_shift_b": float(np.mean(d)),
                      "interval_90": [float(np.quantile(d, q)) for q in (0.05, 0.95)],
                      "share_at_or_below_zero": float(np.mean(d <= 0))})
    results = {
        "search_command": args.search_command, "resamples": RESAMPLES, "seed": args.seed,
        "run": {k: summary.get(k) for k in ("target", "objective", "min_kept", "confidence", "min_speedup",
                                            "min_smaller", "trials", "conclusion")},
        "teacher": {"artifact": teacher.name, "valid_ndcg@10": float(tv.mean()), "test_ndcg@10": float(tt.mean()),
                    "users": len(tv)},
        "popularity_tertile_edges_training_count": [float(e) for e in edges],
        "targets_by_tertile": {"valid": np.bincount(vtert, minlength=3).tolist(),
                               "test": np.bincount(ttert, minlength=3).tolist()},
        "candidates": rows, "pairs": pairs,
    }
    save("search_shift_check.py", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
