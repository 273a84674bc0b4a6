#!/usr/bin/env python3
"""Does the search's validation-to-test gap come from how each read stands to the training data?
At validation (s[-2] after s[:-2]) the models were trained through s[-3]; at test (s[-1] after
s[:-1]) through s[-3] too, so the test history holds an item no model trained on. A refit puts
test where validation was: teacher and students trained again through s[-2], each for the epoch
count its early-stopped original chose (the teacher's settings from its card, the students'
as search_selection_check.py trains them), then read on test. If the relation to training
explained the gap, the refit students' test share of the teacher would come back to their
validation share.

    python benchmarks/search_refit_check.py --store STORE --teacher teacher-sasrec-s0 \
        --student mlp:16 --student sasrec-student:16 --prefix diag --work SCRATCH --out FILE

STORE holds the teacher and search_selection_check.py's students (PREFIX-MODEL-dD-halfvalid);
the refit artifacts go to SCRATCH and are reused when there. The refit runs skip validation
(fit is given a stand-in that rises every epoch, so it keeps the last epoch's weights): their
cards' validation figures are not measurements.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402
from search_selection_check import ARCH  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", action="append", required=True, help="MODEL:D, e.g. mlp:16 (repeatable)")
    ap.add_argument("--prefix", default="selcheck")
    ap.add_argument("--work", type=Path, required=True, help="store for the refit teacher and students")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    import edgekd.train as train_mod
    from edgekd.artifact import ArtifactError, load_artifact
    from edgekd.distill import distill
    from edgekd.evaluation import evaluate_model
    from edgekd.metrics import ndcg_gains
    from edgekd.search import SearchDistillConfig
    from edgekd.torch_io import dataset_for, load_torch_model
    from edgekd.train import TrainConfig, train_teacher

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = load_artifact(args.store / args.teacher, store=args.store)
    ds = dataset_for(teacher)
    # trained through s[-2]: train_sequences() is s[:-1]; the two items appended are never read
    refit = dataclasses.replace(ds, name=ds.name + "-refit",
                                sequences=[np.append(s[:-1], [s[-1], s[-1]]) for s in ds.sequences])
    assert all(np.array_equal(a, b[:-1]) for a, b in zip(refit.train_sequences(), ds.sequences))

    @contextmanager
    def last_epoch_kept():
        real = train_mod.evaluate_model
        rising = itertools.count(1)
        train_mod.evaluate_model = lambda *a, **k: ({"ndcg@10": float(next(rising)), "hr@10": 0.0}, None)
        try:
            yield
        finally:
            train_mod.evaluate_model = real

    def trained(name: str, make):
        try:
            return load_artifact(args.work / name, store=args.work)
        except ArtifactError:
            with last_epoch_kept():
                return make()

    def gains(art, split: str):
        ranks: list = []
        evaluate_model(load_torch_model(art).eval(), ds, split, sampled=False, ranks=ranks)
        return ndcg_gains(np.asarray(ranks))

    t_epochs = teacher.card["training"]["best_epoch"]
    r_teacher = trained("refit-teacher", lambda: train_teacher(
        refit, TrainConfig(**{**teacher.card["config"]["train"], "epochs": t_epochs}), store=args.work,
        name="refit-teacher"))
    tv, tt, rt = gains(teacher, "valid"), gains(teacher, "test"), gains(r_teacher, "test")
    rows = []
    for spec in args.student:
        model, d = spec.split(":")
        orig = load_artifact(args.store / f"{args.prefix}-{model}-d{d}-halfvalid", store=args.store)
        settings = orig.card["config"]["distill"]
        epochs = orig.card["training"]["best_epoch"]
        cfg = SearchDistillConfig(**{**settings, "epochs": epochs, "patience": epochs, "eval_users": None,
                                     "arch_options": ARCH[model].get("arch_options", ())})
        st = trained(f"refit-{model}-d{d}", lambda: distill(r_teacher, refit, cfg, store=args.work,
                                                            name=f"refit-{model}-d{d}"))
        sv, stt, rs = gains(orig, "valid"), gains(orig, "test"), gains(st, "test")
        row = {"student": f"{model} d={d}", "epochs": epochs,
               "kept_valid": float(sv.sum() / tv.sum()), "kept_test": float(stt.sum() / tt.sum()),
               "kept_test_refit": float(rs.sum() / rt.sum()),
               "ndcg@10": {"valid": float(sv.mean()), "test": float(stt.mean()), "test_refit": float(rs.mean())}}
        rows.append(row)
        print(row, flush=True)
    save("search_refit_check.py", {
        "users": len(ds.sequences), "teacher": args.teacher, "teacher_epochs": t_epochs,
        "teacher_ndcg@10": {"valid": float(tv.mean()), "test": float(tt.mean()), "test_refit": float(rt.mean())},
        "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
