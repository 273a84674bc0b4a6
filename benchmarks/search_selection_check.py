#!/usr/bin/env python3
"""Why do some searched students keep less of the teacher on test than on validation? Test one
explanation: that the search's validation figure is read on the same users that chose each
student's best epoch. Train a student as the search does (KD from TEACHER, its space's training
settings) but stop early on half the validation users (A, a fixed seeded sample); then read its
share of the teacher's NDCG@10 (full ranking) on A and on the other half (B), validation and test.
If selection explained the gap, validation would read higher on A than on B, and B's validation
would match B's test.

Then a second explanation: which part of the test read moves, its target or its history. Every
user is read four ways (full ranking, all users; s is the user's whole sequence, training is
s[:-2]): validation (s[-2] after s[:-2]), test (s[-1] after s[:-1]), the test target after the
training history (s[-1] after s[:-2]: test without its newest history item, the validation one),
and the validation target after a history one shorter (s[-2] after s[:-3]).

    python benchmarks/search_selection_check.py --data PATH/u.data --store STORE \
        --teacher teacher-sasrec-s0 --student mlp:16 --student sasrec-student:16 --out FILE

Students are kept in STORE (`selcheck-MODEL-dD-halfvalid`) and reused when there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402

ARCH = {"mlp": {"arch_options": (("layers", (64, 32)), ("pool", "weighted"))},  # the searches' MLP
        "sasrec-student": {"blocks": 1}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="movielens")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", required=True, help="MODEL:D, e.g. mlp:16 (repeatable)")
    ap.add_argument("--loss", default="kl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefix", default="selcheck", help="the students' names: PREFIX-MODEL-dD-halfvalid")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from edgekd.artifact import ArtifactError, load_artifact
    from edgekd.data import DataSpec, load_data
    from edgekd.distill import distill
    from edgekd.data import pad_left
    from edgekd.evaluation import evaluate_model, model_scores, sample_users
    from edgekd.metrics import evaluate_scores, ndcg_gains
    from edgekd.search import DEFAULT_SPACE, SearchDistillConfig
    from edgekd.torch_io import load_torch_model

    torch.set_num_threads(args.threads)
    ds = load_data(DataSpec(format=args.format, path=args.data))
    teacher = load_artifact(args.store / args.teacher, store=args.store)
    n = len(ds.eval_split("valid")[0])
    # A is the sample training validates on with eval_users=n // 2 (evaluation's fixed seed, not --seed)
    a_users = sample_users(n, n // 2)
    b_users = np.setdiff1d(np.arange(n), a_users)
    tr = {**DEFAULT_SPACE["train"], "epochs": 100, "patience": 10}  # the ML-100k spaces' schedule

    def gains(art) -> dict:
        m = load_torch_model(art).eval()
        out = {}
        for split in ("valid", "test"):
            ranks: list = []
            evaluate_model(m, ds, split, sampled=False, ranks=ranks)
            out[split] = ndcg_gains(np.asarray(ranks))
        return out

    seqs = ds.sequences
    reads = {"valid": ([q[:-2] for q in seqs], [q[-2] for q in seqs]),
             "test": ([q[:-1] for q in seqs], [q[-1] for q in seqs]),
             "test_target_after_training_history": ([q[:-2] for q in seqs], [q[-1] for q in seqs]),
             "valid_target_after_shorter_history": ([q[:-3] for q in seqs], [q[-2] for q in seqs])}

    def read_gains(art) -> dict:
        m = load_torch_model(art).eval()
        out = {}
        for what, (hist, targets) in reads.items():
            ranks: list = []
            evaluate_scores(lambda b: model_scores(m, b), pad_left(hist, m.maxlen), np.asarray(targets), hist,
                            sampled=False, never=ds.oov_index, num_items=ds.num_items, ranks=ranks)
            out[what] = ndcg_gains(np.asarray(ranks))
        return out

    t_gains = gains(teacher)
    t_reads = read_gains(teacher)
    assert all(np.allclose(t_reads[s_], t_gains[s_]) for s_ in ("valid", "test"))  # the same reads as evaluation's
    rows = []
    for spec in args.student:
        model, d = spec.split(":")
        cfg = SearchDistillConfig(model=model, maxlen=teacher.card["arch_kwargs"]["maxlen"], d=int(d),
                                  epochs=tr["epochs"], patience=tr["patience"], lr=tr["lr"],
                                  batch_size=tr["batch_size"], seed=args.seed, kd="on", loss=args.loss,
                                  eval_users=n // 2, **ARCH[model])
        name = f"{args.prefix}-{model}-d{d}-halfvalid"
        settings = json.loads(json.dumps(cfg.resolved(ds.num_items).to_dict()))
        try:
            art = load_artifact(args.store / name, store=args.store)
        except ArtifactError:
            art = distill(teacher, ds, cfg, store=args.store, name=name)
        if art.card.get("config", {}).get("distill") != settings:
            raise SystemExit(f"{name} in the store was trained with other settings: remove it or use --prefix")
        g = gains(art)
        row = {"student": name, "model": model, "d": int(d), "loss": args.loss,
               "best_epoch": art.card["training"]["best_epoch"],
               "epochs_run": art.card["training"]["epochs_run"]}
        for split in ("valid", "test"):
            for half, idx in (("A", a_users), ("B", b_users)):
                row[f"kept_{split}_{half}"] = float(g[split][idx].sum() / t_gains[split][idx].sum())
        r = read_gains(art)
        row["kept_all_users"] = {what: float(r[what].sum() / t_reads[what].sum()) for what in reads}
        row["ndcg@10_all_users"] = {what: float(r[what].mean()) for what in reads}
        rows.append(row)
        print(row, flush=True)
    save("search_selection_check.py", {"users": n, "A (early stopping)": len(a_users), "B (held out)": len(b_users),
                                        "teacher": args.teacher,
                                        "teacher_ndcg@10_all_users": {w: float(v.mean()) for w, v in t_reads.items()},
                                        "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
