#!/usr/bin/env python3
"""Distillation at catalogue scale: what one epoch of a student costs (seconds, peak RSS) with
the live teacher, with a teacher cache but the student's whole catalogue scored, and bounded
(a teacher cache and sampled negatives: the student scored at the cached top-K only).

Each mode is one `edgekd distill` in its own process under GNU time, from the same teacher and
data, in turns over `--rounds` (A B C, C B A, ...). The student's epoch seconds come from its
card (training only, validation excluded); the peak RSS is the whole process's.

    python benchmarks/kd_scale.py --teacher STORE/student-100k \
        --synthetic users=20000,items=110000,mean_length=50,zipf=0.5 --store SCRATCH \
        --out benchmarks/scale/kd-scale-100k.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import save, timed  # noqa: E402

MODES = {
    "live teacher": ["--negatives", "{neg}"],
    "teacher cache, student over the whole catalogue": ["--teacher-cache", "{k}", "--negatives", "0"],
    "teacher cache, bounded": ["--teacher-cache", "{k}", "--negatives", "{neg}"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--synthetic", required=True, help="KEY=VALUE,KEY=VALUE: the teacher's synthetic data")
    ap.add_argument("--store", type=Path, required=True, help="scratch artifact store (outside the repository)")
    ap.add_argument("--loss", default="rd")
    ap.add_argument("--cache", type=int, default=100)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    synth = [a for pair in args.synthetic.split(",") for a in ("--synthetic", pair)]
    modes = [m.strip() for m in args.modes.split(",")]
    (args.store / "logs").mkdir(parents=True, exist_ok=True)
    runs: dict = {m: [] for m in modes}
    for r in range(args.rounds):
        for i, mode in enumerate(modes if r % 2 == 0 else modes[::-1]):
            name = f"kd-{modes.index(mode)}-r{r}"
            shutil.rmtree(args.store / name, ignore_errors=True)
            extra = [a.format(neg=args.negatives, k=args.cache) for a in MODES[mode]]
            cmd = [sys.executable, "-m", "edgekd", "distill", str(args.teacher), *synth, "--loss", args.loss,
                   "--model", "sasrec-student", "--d", str(args.d), "--epochs", "1", "--patience", "1",
                   *extra, "--out", str(args.store), "--name", name]
            res = timed(cmd, args.store / "logs" / f"{name}.log")
            res["command"] = " ".join(["edgekd", *cmd[3:]])
            if not res["rc"]:
                card = json.loads((args.store / name / "artifact.json").read_text())
                res["epoch_s"] = card["history"][0]["epoch_s"]
                res["teacher_cache"] = card.get("teacher_cache")
                res["test_ndcg@10"] = card["metrics"]["test_ndcg@10"]
                res["items"] = card["arch_kwargs"]["num_items"]
            runs[mode].append(res)
            print(mode, {k: v for k, v in res.items() if k != "command"}, flush=True)
    save("kd_scale.py", {"settings": {k: getattr(args, k) for k in ("loss", "cache", "negatives", "d", "rounds")},
                         "teacher": str(args.teacher.name), "synthetic": args.synthetic, "runs": runs},
         args.out, note=f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
