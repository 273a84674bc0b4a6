#!/usr/bin/env python3
"""How much of a student's NDCG@10 vocabulary pruning must lose, and what the pruned items in
users' histories cost, before any recovery.

A test user whose target item is pruned can no longer be served (the item is never
recommended), so the share of NDCG@10 those users carry is lost whatever the recovery does.
For each artifact and coverage: the items kept, the share of test targets pruned, and the best
share of NDCG@10 a pruned model can keep if every other user ranked as before.

With `--history`, the unpruned model itself ranks only the kept items (pruned targets are
misses) while the pruned items in the users' histories are: kept as they are; replaced by one
stand-in embedding (the mean of the pruned items', what `--unknown oov` starts from); set to
padding where they stand; or left out, the sequence closing up (what `--unknown skip` does).

    python benchmarks/vocab_prune_bound.py models/STUDENT... [--coverage 0.95] [--history]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from edgekd.artifact import load_artifact
from edgekd.data import pad_left
from edgekd.metrics import full_ranks, ndcg_gains
from edgekd.pruning import items_to_keep
from edgekd.evaluation import eval_inputs, model_scores
from edgekd.torch_io import dataset_for, load_torch_model


def _scores(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model_scores(model, x[i:i + 256]) for i in range(0, len(x), 256)])


def history_effects(model, x, targets, hist, pruned: np.ndarray) -> dict:
    """Mean NDCG@10 on the kept catalogue (pruned targets: 0) for each way of treating the
    pruned items in the histories. `pruned[i]` says whether internal index i is pruned."""
    def ndcg(inputs):
        s = _scores(model, inputs)
        s[:, pruned[1:]] = -np.inf  # column k is index k + 1
        g = ndcg_gains(full_ranks(s, targets, hist))
        g[pruned[targets]] = 0.0
        return float(g.mean())

    out = {"kept as they are": ndcg(x)}
    table = model.item_emb.weight
    saved = table.detach().clone()
    rows = torch.from_numpy(pruned)
    with torch.no_grad():
        table[rows] = saved[rows].mean(0)
    out["one stand-in embedding (oov)"] = ndcg(x)
    with torch.no_grad():
        table.copy_(saved)
    out["padding in place"] = ndcg(np.where(pruned[x] & (x > 0), 0, x))
    out["left out (skip)"] = ndcg(pad_left([h[~pruned[h]] for h in hist], model.maxlen))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.95])
    ap.add_argument("--history", action="store_true", help="also measure what the pruned items in the "
                    "histories cost, four ways")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for path in args.artifacts:
        a = load_artifact(path)
        model, ds = load_torch_model(a), dataset_for(a)
        x, targets, hist = eval_inputs(ds, "test", model.maxlen)
        ndcg = ndcg_gains(full_ranks(_scores(model, x), targets, hist))
        for cov in args.coverage:
            keep = set(items_to_keep(ds, coverage=cov))
            kept = np.array([ds.items[t - 1] in keep for t in targets])
            print(f"{path}: coverage {cov}: {len(keep)} of {ds.num_items} items kept; "
                  f"{1 - kept.mean():.1%} of test targets pruned; NDCG@10 {ndcg.mean():.4f}, of which "
                  f"{ndcg[~kept].sum() / ndcg.sum():.1%} on pruned targets: at most "
                  f"{ndcg[kept].sum() / ndcg.sum():.1%} can be kept with the other users unchanged")
            if args.history:
                pruned = np.array([False] + [i not in keep for i in ds.items])
                for how, v in history_effects(model, x, targets, hist, pruned).items():
                    print(f"    pruned history items {how}: NDCG@10 {v:.4f} ({v / ndcg.mean():.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
