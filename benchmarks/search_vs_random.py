#!/usr/bin/env python3
"""`edgekd search` against random sampling: the same space, trials, seed, teacher and target,
once with the search's sampler (multi-objective TPE with the budget as a constraint, by
default) and once with Optuna's RandomSampler; the hypervolume of each front side by side.

    python benchmarks/search_vs_random.py --trials 6 --out benchmarks/search/search-vs-random.json

Without --teacher a tiny teacher is trained on synthetic data first (--synthetic KEY=VALUE,
as for `edgekd train`). Both searches share one artifact store, so a student the first search
trained is looked up, not retrained, by the second (the outcome is the same; only its time
differs); each search benches its candidates in its own run directory.

Hypervolume: over the completed trials, in (validation NDCG@10 kept, cost on the target /
the teacher's cost in the same run), against the reference point (kept 0, the teacher's
cost): larger is better; a candidate slower (or larger) than the teacher adds nothing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import git_commit, machine, wrap  # noqa: E402

from edgekd.artifact import load_artifact, write_json
from edgekd.data import DataSpec, SyntheticConfig, load_data
from edgekd.search import SearchConfig, load_space, search
from edgekd.targets import load_target
from edgekd.train import TrainConfig, train_teacher

TINY = {"users": 150, "items": 60, "mean_length": 12, "tastes": 4, "seed": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, help="teacher artifact (default: train a tiny synthetic one)")
    ap.add_argument("--synthetic", action="append", default=[], help="KEY=VALUE for the synthetic data")
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--target", default="local-cpu")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objective", default="p50")
    ap.add_argument("--min-kept", type=float, default=0.95)
    ap.add_argument("--sampler", default="tpe", help="the search's sampler, compared with random")
    ap.add_argument("--space", type=Path, help="search space TOML (default: the search's)")
    ap.add_argument("--work", type=Path, help="store and run directories (default: a temporary directory)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    args = ap.parse_args()

    started = {"commit": git_commit(), "machine": machine()}  # before anything runs: the code measured
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekd-search-vs-random-"))
    store = work / "models"
    store.mkdir(parents=True, exist_ok=True)
    if args.teacher:
        teacher = load_artifact(args.teacher)
    else:
        synth = dict(TINY)
        for kv in args.synthetic:
            k, _, v = kv.partition("=")
            synth[k] = type(getattr(SyntheticConfig(), k))(v)
        ds = load_data(DataSpec(format="synthetic", synthetic=synth))
        name = "teacher"
        teacher = (load_artifact(store / name) if (store / name).is_dir() else
                   train_teacher(ds, TrainConfig(model="sasrec", d=16, maxlen=20, epochs=args.teacher_epochs,
                                                 patience=args.teacher_epochs, seed=args.seed),
                                 store=store, name=name))
    target = load_target(args.target)
    base = SearchConfig(target=target.name, min_kept=args.min_kept, objective=args.objective, trials=args.trials,
                        sampler=args.sampler, seed=args.seed, space=load_space(args.space))
    runs = {}
    for label, sampler in (("search", args.sampler), ("random", "random")):
        cfg = replace(base, sampler=sampler)
        t0 = time.perf_counter()
        summary = search(teacher, cfg, target, store=store, run_dir=work / label,
                         say=lambda m, label=label: print(f"[{label}] {m}", flush=True))
        trials = json.loads((work / label / "trials.json").read_text())
        runs[label] = {
            "sampler": sampler, "hypervolume": summary["hypervolume"], "trials": summary["trials"],
            "front": [{"number": t["number"], "params": t["params"],
                       **{k: t["user_attrs"].get(k) for k in ("kept", "p50_ms", "size_bytes", "peak_rss_bytes")}}
                      for t in trials if t["number"] in summary["front"]],
            "feasible": sum(t["state"] == "COMPLETE" and t["user_attrs"]["kept"] >= args.min_kept for t in trials),
            "chosen": (None if not summary["chosen"] else {
                "trial": summary["chosen"]["trial"], "params": summary["chosen"]["params"],
                **{k: summary["chosen"]["validation"][k] for k in ("kept", "p50_ms", "size_bytes", "peak_rss_bytes",
                                                                   "speedup_p50", "size_ratio")},
                "test": summary["chosen"]["test"]}),
            "conclusion": summary["conclusion"], "seconds": time.perf_counter() - t0,
        }
        png = work / label / "front.png"
        if png.is_file():
            dest = args.out.with_name(args.out.stem + f"-{label}-front.png")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dest)
            runs[label]["front_png"] = dest.name
    hv_s, hv_r = runs["search"]["hypervolume"], runs["random"]["hypervolume"]
    verdict = ("larger" if hv_s > hv_r else "smaller" if hv_s < hv_r else "equal")
    cmd = [Path(sys.executable).name] + sys.argv
    if args.work:  # a scratch directory: not part of what the record means
        cmd = [("SCRATCH" if a == str(args.work) else a) for a in cmd]
    record = wrap(commit=started["commit"], machine_=started["machine"], command=" ".join(cmd), results={
        "what": "hypervolume of the search's front against random sampling, same trials and seed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "teacher": {"name": teacher.name, "sha256": teacher.sha256, "dataset": teacher.card.get("dataset"),
                    "arch": teacher.card.get("arch"), "arch_kwargs": teacher.card.get("arch_kwargs")},
        "target": {"name": target.name, "threads": target.threads, "min_runs": target.min_runs,
                   "min_seconds": target.min_seconds},
        "settings": {"trials": args.trials, "seed": args.seed, "objective": args.objective,
                     "min_kept": args.min_kept, "space": base.space},
        "hypervolume_reference": "kept 0 and the teacher's cost on the target, costs divided by the teacher's",
        "runs": runs,
        "conclusion": f"{args.sampler} hypervolume {hv_s:.4f} vs random {hv_r:.4f}: {verdict} with "
                      f"{args.trials} trials, seed {args.seed} (one seed: not a significance test)",
    })
    write_json(args.out, record)
    print(record["results"]["conclusion"])
    print(args.out)


if __name__ == "__main__":
    main()
