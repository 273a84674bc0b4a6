#!/usr/bin/env python3
"""What a download budget costs: a student vocabulary-pruned to several sizes (`edgekd prune
--method vocabulary --max-bytes`), each exported to an int8 format, with its items kept, its
real file size, and its test NDCG@10 beside the unpruned student's export.

    python benchmarks/vocab_budget.py STORE/STUDENT --fractions 1 0.75 0.5 0.25 --format onnx-int8 \
        --store STORE --out benchmarks/vocab-budget/RECORD.json

Each budget is a fraction of the unpruned student's int8 weight estimate; 1 means no pruning
(the student itself, exported). No recovery training: the pruned model ranks with its parent's
weights, so the loss is what the cut catalogue costs (a pruned item is never recommended).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student", type=Path)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    ap.add_argument("--format", default="onnx-int8")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from edgekd.artifact import load_artifact
    from edgekd.compress import PruneConfig, prune
    from edgekd.evaluation import evaluate_model
    from edgekd.export import export
    from edgekd.pruning import estimated_bytes
    from edgekd.torch_io import dataset_for, load_torch_model

    from record import save

    student = load_artifact(args.student)
    full = estimated_bytes(load_torch_model(student), "int8")
    rows = []
    for f in args.fractions:
        if f >= 1:
            a = student
        else:
            budget = int(full * f)
            a = prune(student, PruneConfig(method="vocabulary", max_bytes=budget), store=args.store)
        ds = dataset_for(a)
        e = export(a, args.format, store=args.store, ds=ds)
        test, _ = evaluate_model(load_torch_model(a), ds, "test", sampled=False)
        rows.append({"fraction": f, "max_bytes": None if f >= 1 else int(full * f), "artifact": a.name,
                     "items_kept": (a.card.get("pruning") or {}).get("items_kept", ds.num_items),
                     "estimated_int8_bytes": estimated_bytes(load_torch_model(a), "int8"),
                     "export": e.name, "export_bytes": e.card["size_bytes"],
                     "test_ndcg@10": test["ndcg@10"], "test_hr@10": test["hr@10"]})
        print(rows[-1], flush=True)
    base = rows[0]["test_ndcg@10"] if args.fractions[0] >= 1 else None
    for r in rows:
        r["ndcg_vs_unpruned"] = r["test_ndcg@10"] / base if base else None
    save("vocab_budget.py", {"student": student.name, "student_sha256": student.sha256, "format": args.format,
                             "dataset": dataset_for(student).stats(), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
