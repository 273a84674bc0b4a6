#!/usr/bin/env python3
"""The same file benched twice in one run: how often do the two copies come out equal?

Two copies of one artifact (a small synthetic model exported to ONNX fp32) under different
names are timed together, `--runs` times, by three designs, alternated within each run (the
order of the designs rotates from run to run so that none always goes first):

- interleaved-warm: edgekd.timing as bench uses it: one warm runner process per copy, the copies
  timed in turns for `--rounds` rounds (A B, B A, A B, ...), p50 = median over rounds;
- interleaved-fresh: the same rounds, but a fresh runner process per copy per round;
- sequential: what bench did before: one runner process per copy, one after the other, each
  timing as long as its rounds together do in the other designs.

A run "agrees" when the two copies' p50s are within 5% of each other; the copies are the same
bytes, so every disagreement is measurement noise. The machine's load (load average, other
processes' CPU share from /proc) is recorded per run: this machine is shared.

    python benchmarks/same_artifact_twice.py [--runs 10] [--rounds 5] [--round-seconds 0.2]
        [--out benchmarks/ratios/same_artifact_twice.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgekd import timing
from edgekd.artifact import load_artifact
from edgekd.runner import run_runner, time_artifacts, write_inputs
from edgekd.targets import load_target

AGREE = 0.05


def make_copies(store: Path, payload: str):
    """A small synthetic model (trained briefly), exported to ONNX fp32, copied under a second name."""
    from edgekd.data import DataSpec, load_data
    from edgekd.export import export
    from edgekd.train import TrainConfig, train_teacher

    ds = load_data(DataSpec(format="synthetic", synthetic={"users": 400, "items": 1000, "mean_length": 30,
                                                            "tastes": 4, "seed": 3}))
    t = train_teacher(ds, TrainConfig(model="sasrec", d=32, maxlen=50, epochs=1, patience=1, eval_users=None,
                                      seed=0), store=store, name="twice-student")
    if payload == "onnx":
        a = export(t, "onnx-fp32", store=store, ds=ds, name="twice-copy-a")
    else:
        a = t
    shutil.copytree(a.path, store / "twice-copy-b")
    b = load_artifact(store / "twice-copy-b")
    b.update_card(name="twice-copy-b")
    b = load_artifact(store / "twice-copy-b")
    assert a.sha256 == b.sha256 and a.name != b.name
    return a, b, ds


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpu_count": __import__("os").cpu_count(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.2, help="timing per copy per round")
    ap.add_argument("--round-runs", type=int, default=50, help="at least this many timed runs per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--payload", choices=["onnx", "torch"], default="onnx",
                    help="time the ONNX fp32 export (onnxruntime) or the torch file itself (torch)")
    ap.add_argument("--designs", default="interleaved-warm,interleaved-fresh,sequential",
                    help="comma-separated subset of the designs (interleaved-fresh is the slowest)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/ratios/same_artifact_twice.json"))
    args = ap.parse_args()
    t_start = time.time()
    tgt = replace(load_target("local-cpu"), threads=args.threads, warmup=10, min_runs=args.round_runs,
                  min_seconds=args.round_seconds, batch_sizes=(1,))
    # sequential: one block per copy, as long as its rounds together
    seq = replace(tgt, min_runs=args.round_runs * args.rounds, min_seconds=args.round_seconds * args.rounds)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not designs or set(designs) - {"interleaved-warm", "interleaved-fresh", "sequential"}:
        ap.error(f"--designs: a subset of interleaved-warm, interleaved-fresh, sequential; got {args.designs!r}")
    runs = []
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "models"
        a, b, ds = make_copies(store, args.payload)
        _, npz = write_inputs(ds, 50, Path(d) / "in.npz", users=50)

        def measure(design: str) -> dict:
            if design == "interleaved-warm":
                m, _ = time_artifacts([(a, npz), (b, npz)], tgt, args.threads, rounds=args.rounds, reference=0)
                return {"a": m.summary(a.name)["p50_ms"], "b": m.summary(b.name)["p50_ms"],
                        "a_rounds": m.p50s[a.name], "b_rounds": m.p50s[b.name], "ratio": m.ratio(b.name)}
            if design == "interleaved-fresh":
                m = timing.interleave({n: (lambda x=x: run_runner(x, tgt, npz, args.threads)["latency"]["p50_ms"])
                                       for n, x in ((a.name, a), (b.name, b))}, args.rounds, reference=a.name,
                                      design="interleaved rounds, a fresh runner process per cell per round")
                return {"a": m.summary(a.name)["p50_ms"], "b": m.summary(b.name)["p50_ms"],
                        "a_rounds": m.p50s[a.name], "b_rounds": m.p50s[b.name], "ratio": m.ratio(b.name)}
            pa = run_runner(a, seq, npz, args.threads)["latency"]["p50_ms"]
            pb = run_runner(b, seq, npz, args.threads)["latency"]["p50_ms"]
            return {"a": pa, "b": pb}

        for k in range(args.runs):
            order = designs[k % len(designs):] + designs[:k % len(designs)]
            row = {"run": k + 1, "order": order}
            for design in order:
                load = timing.MachineLoad().start()
                t0 = time.monotonic()
                r = measure(design)
                r["seconds"] = round(time.monotonic() - t0, 2)
                r["b_over_a"] = r["b"] / r["a"]
                r["agree"] = abs(r["b"] / r["a"] - 1) <= AGREE
                r["machine_load"] = load.stop()
                row[design] = r
            runs.append(row)
            print(f"run {k + 1}: " + ", ".join(
                f"{dz} {row[dz]['a']:.4f}/{row[dz]['b']:.4f} ms ({'agree' if row[dz]['agree'] else 'DISAGREE'}, "
                f"{row[dz]['seconds']:.0f} s)" for dz in designs), flush=True)

    summary = {}
    for dz in designs:
        dev = [abs(r[dz]["b_over_a"] - 1) for r in runs]
        summary[dz] = {"agree_within_5pct": sum(r[dz]["agree"] for r in runs), "runs": len(runs),
                       "median_abs_diff": float(np.median(dev)), "max_abs_diff": float(np.max(dev)),
                       "median_seconds": float(np.median([r[dz]["seconds"] for r in runs]))}
        if dz != "sequential":
            summary[dz]["median_round_spread"] = float(np.median(
                [timing.spread(r[dz][k])["rel"] for r in runs for k in ("a_rounds", "b_rounds")]))
            summary[dz]["intervals_containing_1"] = sum(
                r[dz]["ratio"]["low"] <= 1.0 <= r[dz]["ratio"]["high"] for r in runs)
    loads = [r[dz]["machine_load"] for r in runs for dz in designs]
    m = machine()
    record = {
        "command": "python " + " ".join(sys.argv),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": (f"{m['cpu_count']} {m['machine']} cores ({m['cpu']}), {m['system']}, Python {m['python']}; "
                    "shared with other engineers' jobs during the run (see results.load)"),
        "date": time.strftime("%Y-%m-%d"),
        "results": {
            "machine_detail": m, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "what": f"two copies of one {args.payload} file (small synthetic SASRec, d=32, maxlen 50, 1000 items) timed "
                    "together; a run agrees when their p50s are within 5%",
            "config": {"runs": args.runs, "rounds": args.rounds, "round_seconds": args.round_seconds,
                       "round_runs": args.round_runs, "threads": args.threads, "payload": args.payload,
                       "sequential_block_seconds": seq.min_seconds},
            "summary": summary,
            "load": {"loadavg_1min_median": float(np.median([l["loadavg_before"][0] for l in loads])),
                     "loadavg_1min_max": float(np.max([l["loadavg_before"][0] for l in loads])),
                     "other_cpu_share_median": float(np.median([l["other_cpu_share"] for l in loads])),
                     "other_cpu_share_max": float(np.max([l["other_cpu_share"] for l in loads]))},
            "runs": runs, "wall_seconds": round(time.time() - t_start, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
