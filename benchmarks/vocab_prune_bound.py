#!/usr/bin/env python3
"""How much of a student's NDCG@10 vocabulary pruning must lose, before any recovery.

A test user whose target item is pruned can no longer be served (the item is never
recommended), so the share of NDCG@10 those users carry is lost whatever the recovery does.
For each artifact and coverage: the items kept, the share of test targets pruned, and the best
share of NDCG@10 a pruned model can keep if every other user ranked as before.

    python benchmarks/vocab_prune_bound.py models/STUDENT [--coverage 0.95]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from edgekd.artifact import load_artifact
from edgekd.metrics import full_ranks, ndcg_gains
from edgekd.pruning import items_to_keep
from edgekd.train import dataset_for, eval_inputs, load_torch_model, model_scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.95])
    args = ap.parse_args()
    for path in args.artifacts:
        a = load_artifact(path)
        model, ds = load_torch_model(a), dataset_for(a)
        x, targets, hist = eval_inputs(ds, "test", model.maxlen)
        with torch.no_grad():
            scores = np.concatenate([model_scores(model, x[i:i + 256]) for i in range(0, len(x), 256)])
        ndcg = ndcg_gains(full_ranks(scores, targets, hist))
        for cov in args.coverage:
            keep = set(items_to_keep(ds, coverage=cov))
            kept = np.array([ds.items[t - 1] in keep for t in targets])
            print(f"{path}: coverage {cov}: {len(keep)} of {ds.num_items} items kept; "
                  f"{1 - kept.mean():.1%} of test targets pruned; NDCG@10 {ndcg.mean():.4f}, of which "
                  f"{ndcg[~kept].sum() / ndcg.sum():.1%} on pruned targets: at most "
                  f"{ndcg[kept].sum() / ndcg.sum():.1%} can be kept with the other users unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
