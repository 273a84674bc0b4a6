#!/usr/bin/env python3
"""The distillation study: teachers, then students x losses, several seeds each, one table.

    python benchmarks/distill_study.py --data ../shared/data/ml-100k/u.data --format movielens \
        --seeds 0 1 2 --out benchmarks/results/distill-study

Every run is an edgekd artifact in --store (default: <out>/models); a run whose artifact is
already there is reused, so an interrupted study continues where it stopped. The table is
built from the artifact cards only: params, full-ranking NDCG@10 / HR@10 / MRR and sampled-100
NDCG@10 on the test split, top-10 overlap with the (first) teacher, training time. Each row is
the mean over seeds with the standard deviation; `vs no-KD` is the relative change of mean
NDCG@10 against the same student trained alone with the same seeds.

Rows (see GRID): every loss on the <=10%-of-teacher student, every student with kl and alone,
combined losses, two teachers (SASRec + BERT4Rec), teacher initialisation, online mutual
learning, and the cross-domain case (teacher on the early half of the events by time, student on
the late half, against the same late-half student alone).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgekd.artifact import load_artifact
from edgekd.data import DataSpec, load_data
from edgekd.distill import DistillConfig, distill
from edgekd.errors import ArtifactError
from edgekd.train import TrainConfig, train_teacher

# name -> (student model, student kwargs, distill kwargs, teachers, data period)
SMALL = {"model": "sasrec-student", "d": 8}


def grid(small_only: bool = False) -> list[tuple[str, dict, dict, tuple, str | None]]:
    rows = []
    for loss in ("off", "kl", "mse", "rd", "rrd", "hint", "kl+hint", "kl+rrd"):
        kd = {"kd": "off"} if loss == "off" else {"loss": loss}
        rows.append((f"sasrec d8 {'no-KD' if loss == 'off' else loss}", SMALL, kd, ("sasrec",), None))
    rows += [
        # is distillation more than the regularisation label smoothing also gives?
        ("sasrec d8 no-KD, label smoothing 0.2", SMALL, {"kd": "off", "label_smoothing": 0.2}, ("sasrec",), None),
        ("sasrec d8 kl init-from-teacher", SMALL, {"loss": "kl", "init_from_teacher": True}, ("sasrec",), None),
        # the teacher run once before training, its top-100 per position kept (--teacher-cache)
        ("sasrec d8 rd, teacher cache 100", SMALL, {"loss": "rd", "teacher_cache": 100}, ("sasrec",), None),
        ("sasrec d8 kl, teacher cache 100", SMALL, {"loss": "kl", "teacher_cache": 100}, ("sasrec",), None),
        ("sasrec d8 kl sasrec+bert4rec", SMALL, {"loss": "kl"}, ("sasrec", "bert4rec"), None),
        ("sasrec d8 kl bert4rec", SMALL, {"loss": "kl"}, ("bert4rec",), None),
        ("sasrec d8 online (mutual)", SMALL, {"loss": "kl", "online": True}, ("sasrec",), None),
        ("sasrec d8 no-KD, late half", SMALL, {"kd": "off"}, ("sasrec-late",), "late:0.5"),
        ("sasrec d8 kl, late half, teacher early half", SMALL, {"loss": "kl"}, ("sasrec-early",), "late:0.5"),
    ]
    if not small_only:
        for student in ({"model": "sasrec-student", "d": 16}, {"model": "sasrec-student", "d": 32},
                        {"model": "gru4rec", "d": 32}):
            label = f"{student['model'].replace('-student', '')} d{student['d']}"
            rows.append((f"{label} no-KD", student, {"kd": "off"}, ("sasrec",), None))
            rows.append((f"{label} kl", student, {"loss": "kl"}, ("sasrec",), None))
    return rows


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").replace("--", "-")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="movielens")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--student-maxlen", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    ap.add_argument("--teacher", default="{}", help="JSON TrainConfig overrides for the SASRec teacher")
    ap.add_argument("--bert", default="{}", help="JSON TrainConfig overrides for the BERT4Rec teacher")
    ap.add_argument("--only", nargs="*", default=None, help="run only the rows with these exact names, in this order")
    ap.add_argument("--small-only", action="store_true", help="only the d=8 student's rows")
    ap.add_argument("--report-only", action="store_true", help="train nothing: build the table from the runs "
                    "already in --store (rows or seeds not run are left out)")
    args = ap.parse_args()
    store = args.store or args.out / "models"
    args.out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(format=args.format, path=args.data)
    data = {None: load_data(spec)}
    for period in ("early:0.5", "late:0.5"):
        data[period] = load_data(replace(spec, period=period))
    rows = grid(args.small_only)
    if args.only:
        unknown = set(args.only) - {r[0] for r in rows}
        if unknown:
            ap.error(f"no such rows: {sorted(unknown)}; rows: {[r[0] for r in rows]}")
        by_name = {r[0]: r for r in rows}
        rows = [by_name[n] for n in dict.fromkeys(args.only)]   # in the order given
    needed = {t for r in rows for t in r[3]}

    class Missing(Exception):
        pass

    def get(name: str, make):
        try:
            a = load_artifact(store / name)
            print(f"reusing {name}", flush=True)
            return a
        except ArtifactError:
            if args.report_only:
                raise Missing(name) from None
            t0 = time.perf_counter()
            a = make()
            print(f"{name}: test NDCG@10 {a.metrics['test_ndcg@10']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            return a

    tcfg = json.loads(args.teacher)
    bcfg = json.loads(args.bert)
    results: dict[str, list[dict]] = {}
    teacher_rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        teachers = {}
        plan = {"sasrec": (None, {"model": "sasrec", **tcfg}), "bert4rec": (None, {"model": "bert4rec", **bcfg}),
                "sasrec-early": ("early:0.5", {"model": "sasrec", **tcfg}),
                "sasrec-late": ("late:0.5", {"model": "sasrec", **tcfg})}
        for key, (period, kw) in plan.items():
            if key not in needed:
                continue
            ds = data[period]
            cfg = TrainConfig(**{"epochs": args.epochs, "seed": seed, "threads": args.threads, **kw})
            try:
                teachers[key] = get(f"teacher-{key}-s{seed}", lambda: train_teacher(ds, cfg, store=store,
                                                                                     name=f"teacher-{key}-s{seed}"))
            except Missing:
                continue
            teacher_rows.setdefault(key, []).append(card_row(teachers[key]))
        for name, student, kd, tnames, period in rows:
            ds = data[period]
            cfg = DistillConfig(**{"maxlen": args.student_maxlen, "epochs": args.epochs, "seed": seed,
                                   "threads": args.threads, **student, **kd})
            if any(t not in teachers for t in tnames):
                continue
            arts = [teachers[t] for t in tnames]
            run = f"{slug(name)}-s{seed}"
            try:
                a = get(run, lambda: distill(arts, ds, cfg, store=store, name=run))
            except Missing:
                continue
            results.setdefault(name, []).append(card_row(a))
        write(args, teacher_rows, results, rows)
    return 0


def card_row(a) -> dict:
    m = a.metrics
    tr = a.card.get("training", {})
    return {"seed": a.card.get("seed"), "params": a.card["params"], "ndcg": m["test_ndcg@10"], "hr": m["test_hr@10"], "mrr": m["test_mrr"],
            "sampled_ndcg": m.get("test_sampled_ndcg@10"), "overlap": m.get("test_top10_overlap"),
            "train_s": tr.get("train_seconds"), "s_per_epoch": tr.get("seconds_per_epoch"),
            "epochs": tr.get("epochs_run"), "online_teacher_ndcg": m.get("online_teacher_test_ndcg@10"),
            "valid_ndcg": m.get("best_valid_ndcg@10")}


def stats(vals: list) -> tuple[float | None, float | None]:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired_test(a: list[float], b: list[float]) -> dict | None:
    """Paired t-test of a against b over the same seeds (two-sided): is the gain more than the
    seed-to-seed noise? None below 3 seeds."""
    if len(a) < 3:
        return None
    from scipy.stats import ttest_rel

    r = ttest_rel(a, b)
    return {"t": float(r.statistic), "p": float(r.pvalue), "n": len(a)}


def summarise(rows: list[dict]) -> dict:
    out = {"seeds": len(rows), "params": rows[0]["params"]}
    for k in ("ndcg", "hr", "mrr", "sampled_ndcg", "overlap", "train_s", "s_per_epoch", "epochs",
              "online_teacher_ndcg", "valid_ndcg"):
        out[k], out[k + "_std"] = stats([r[k] for r in rows])
    return out


def write(args, teacher_rows, results, grid_rows) -> None:
    teachers = {k: summarise(v) for k, v in teacher_rows.items()}
    students = {k: summarise(v) for k, v in results.items()}
    per_seed = {k: {r["seed"]: r["ndcg"] for r in v} for k, v in results.items()}
    t = teachers.get("sasrec") or next(iter(teachers.values()))
    baseline_of = {}
    for name, student, kd, tnames, period in grid_rows:
        label = name.split(" ")[0] + " " + name.split(" ")[1]
        if kd.get("kd") == "off":
            baseline_of.setdefault((label, period), name)
    lines = ["| model | params | % of teacher params | NDCG@10 | HR@10 | MRR | sampled NDCG@10 | top-10 overlap "
             "| % of teacher NDCG | vs no-KD | train s | seeds |", "|" + "---|" * 12]

    def fmt(v, std=None, digits=4):
        if v is None:
            return "-"
        return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")

    for key, s in teachers.items():
        lines.append(f"| teacher {key} | {s['params']:,} | 100% | {fmt(s['ndcg'], s['ndcg_std'])} | "
                     f"{fmt(s['hr'], s['hr_std'])} | {fmt(s['mrr'], s['mrr_std'])} | "
                     f"{fmt(s['sampled_ndcg'], s['sampled_ndcg_std'])} | - | - | - | {fmt(s['train_s'], digits=0)} "
                     f"({fmt(s['s_per_epoch'], digits=2)} s/epoch) | {s['seeds']} |")
    for name, student, kd, tnames, period in grid_rows:
        if name not in students:
            continue
        s = students[name]
        label = name.split(" ")[0] + " " + name.split(" ")[1]
        ref = teachers.get("sasrec-late", t) if period == "late:0.5" else t
        vs = "-"
        base_name = baseline_of.get((label, period))
        # every other row against the plain student, the label-smoothing row too (is KD more
        # than the regularisation label smoothing gives?)
        if name != base_name and base_name in per_seed:
            common = sorted(set(per_seed[name]) & set(per_seed[base_name]))
            if common:
                mine = statistics.fmean(per_seed[name][x] for x in common)
                theirs = statistics.fmean(per_seed[base_name][x] for x in common)
                each = ", ".join(f"{100 * (per_seed[name][x] / per_seed[base_name][x] - 1):+.1f}" for x in common)
                vs = f"{100 * (mine / theirs - 1):+.1f}% (seeds: {each})"
                s["vs_nokd"] = {"relative": mine / theirs - 1, "seeds": common,
                                "per_seed": [per_seed[name][x] / per_seed[base_name][x] - 1 for x in common]}
                test = paired_test([per_seed[name][x] for x in common], [per_seed[base_name][x] for x in common])
                if test:
                    s["vs_nokd"].update(test)
                    vs += f"; paired t {test['t']:.2f}, p {test['p']:.2f}"
        extra = f" (online teacher {s['online_teacher_ndcg']:.4f})" if s.get("online_teacher_ndcg") else ""
        lines.append(f"| {name}{extra} | {s['params']:,} | {100 * s['params'] / t['params']:.1f}% | "
                     f"{fmt(s['ndcg'], s['ndcg_std'])} | {fmt(s['hr'], s['hr_std'])} | {fmt(s['mrr'], s['mrr_std'])} | "
                     f"{fmt(s['sampled_ndcg'], s['sampled_ndcg_std'])} | {fmt(s['overlap'], digits=3)} | "
                     f"{100 * s['ndcg'] / ref['ndcg']:.1f}% | {vs} | {fmt(s['train_s'], digits=0)} | {s['seeds']} |")
    note = (f"\nMovieLens-100k ({args.data}), leave-one-out, full ranking with seen items excluded; "
            f"student window {args.student_maxlen} items; mean ± standard deviation over seeds {args.seeds}. "
            "'% of teacher NDCG' is against the SASRec teacher (the late-half rows: against the late-half teacher's "
            "own data, the SASRec teacher trained there). 'vs no-KD': the same student trained alone, same seeds.\n")
    (args.out / "study.md").write_text("\n".join(lines) + "\n" + note)
    from record import machine, wrap  # benchmarks/record.py: the standard record shape

    rec = wrap({"teachers": teachers, "students": students, "per_seed_test_ndcg@10": per_seed,
                "config": {k: str(v) for k, v in vars(args).items()}},
               " ".join(["python", "benchmarks/distill_study.py", *sys.argv[1:]]),
               machine_=machine() + "; runs may have shared the CPUs with other work (train s is not a clean timing)")
    (args.out / "study.json").write_text(json.dumps(rec, indent=2))
    print("\n".join(lines) + "\n" + note, flush=True)


if __name__ == "__main__":
    sys.exit(main())
