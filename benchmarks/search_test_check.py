#!/usr/bin/env python3
"""After a search: did validation predict test? For every distinct completed candidate of a
search run directory, its validation share of the teacher's NDCG@10 (`kept`), the lower bound
the budget used (`kept_low`), and its test share, read from the test accuracy the search's own
bench records already hold (bench scores every file on the test split). The search itself never
reads these; this is a study of the search, made afterwards.

    python benchmarks/search_test_check.py RUN_DIR [--min-kept 0.95] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--min-kept", type=float, default=0.95)
    ap.add_argument("--search-command", default=None, help="the command that made RUN_DIR, kept in the record")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    recs = {}
    for f in (args.run_dir / "bench").glob("*.json"):
        r = json.loads(f.read_text())
        if isinstance(r, dict) and r.get("status") == "ok":
            recs[r["artifact"]["sha256"]] = r
    teacher = next(r for r in recs.values() if r["artifact"]["stage"] == "teacher")
    t_test = teacher["accuracy"]["ndcg@10"]
    summary = json.loads((args.run_dir / "search.json").read_text())
    rows, seen = [], set()
    for t in json.loads((args.run_dir / "trials.json").read_text()):
        u = t["user_attrs"]
        if t["state"] != "COMPLETE" or u["sha256"] in seen:
            continue
        seen.add(u["sha256"])
        test = recs[u["sha256"]]["accuracy"]["ndcg@10"] / t_test
        rows.append({"trial": t["number"], "artifact": u["artifact"], "kept": u["kept"], "kept_low": u.get("kept_low"),
                     "test_kept": test, "speedup_p50": u["speedup_p50"], "size_ratio": u["size_ratio"]})
    m = args.min_kept

    def held(sel):
        return {"candidates": len(sel), "test_kept_at_least_budget": sum(r["test_kept"] >= m for r in sel)}

    results = {
        "search_command": args.search_command,
        "run": {k: summary.get(k) for k in ("teacher", "target", "objective", "min_kept", "confidence", "min_speedup",
                                            "min_smaller", "trials", "hypervolume", "conclusion")},
        "teacher_test_ndcg@10": t_test, "test_users": teacher["accuracy"]["users"],
        "candidates": rows,
        "budget_on_kept": held([r for r in rows if r["kept"] >= m]),
        "budget_on_kept_low": held([r for r in rows if r["kept_low"] is not None and r["kept_low"] >= m]),
    }
    save("search_test_check.py", results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
