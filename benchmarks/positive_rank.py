#!/usr/bin/env python3
"""Where trained models put each training position's own next item: the positive's mean
sigmoid, the mean sigmoid over all items, and the positive's median rank among all items, on
the first USERS users' training windows. A check that a loss taught the model to rank, not
only to lower its loss (gBCE on MovieLens-100k, benchmarks/scale/README.md).

    python benchmarks/positive_rank.py STORE/q-sampled1024-uniform-gbce-s0 STORE/q-sampled1024-uniform-ce-s0 \
        --out benchmarks/scale/positive-rank-gbce-vs-ce-20261201.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import torch

    from edgekd.artifact import load_artifact
    from edgekd.data import training_pairs
    from edgekd.torch_io import dataset_for, load_torch_model
    from record import save

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for path in args.artifacts:
        a = load_artifact(path)
        model = load_torch_model(a).eval()
        ds = dataset_for(a)
        x, y = (torch.tensor(v) for v in training_pairs(ds.train_sequences()[:args.users], a.card["arch_kwargs"]["maxlen"]))
        with torch.no_grad():
            mask = y > 0
            scores = model.hidden(x)[mask] @ model.item_table()[1:].T
            pos = scores.gather(1, (y[mask] - 1)[:, None]).squeeze(1)
            rank = (scores > pos[:, None]).sum(1).float() + 1
        rows.append({"artifact": a.name, "sha256": a.sha256, "loss": a.card["config"]["train"].get("loss_type"),
                     "positions": int(mask.sum()), "items": int(scores.shape[1]),
                     "positive_sigmoid_mean": float(torch.sigmoid(pos).mean()),
                     "all_items_sigmoid_mean": float(torch.sigmoid(scores).mean()),
                     "positive_rank_median": float(rank.median())})
        print(rows[-1])
    save("positive_rank.py", {"users": args.users, "models": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
