#!/usr/bin/env python3
"""Wrap a benchmark's JSON output in the standard record shape before committing it.

    python benchmarks/record.py OUTPUT.json --command "python benchmarks/fidelity.py ..." \
        --out benchmarks/fidelity/fidelity-20261201.json

A committed record is one JSON object:

    {"command": "...", "commit": "...", "machine": "...", "date": "YYYY-MM-DD", "results": {...}}

`results` is the script's output unchanged. `commit` defaults to `git rev-parse HEAD` (with
"-dirty" when the tree has uncommitted changes), `machine` to the CPU model, core count, OS and
architecture of this machine, `date` to today (UTC). Pass them explicitly when the record was
made elsewhere; write "unknown" rather than guess.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

KEYS = ("command", "commit", "machine", "date", "results")


def git_commit() -> str:
    try:
        repo = str(Path(__file__).resolve().parents[1])  # the repository, whatever the working directory
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or 'unknown CPU'}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def wrap(results, command: str, commit: str | None = None, machine_: str | None = None,
         date: str | None = None) -> dict:
    return {"command": command, "commit": commit or git_commit(), "machine": machine_ or machine(),
            "date": date or dt.datetime.now(dt.timezone.utc).date().isoformat(), "results": results}


def save(script: str, results, out: Path | None, note: str = "") -> dict:
    """The standard record of `python benchmarks/SCRIPT ARGS` (this process's command line),
    printed and, with `out`, written there. `note` is added to the machine line."""
    rec = wrap(results, " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
               machine_=machine() + (f"; {note}" if note else ""))
    print(json.dumps(results, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under GNU time (/usr/bin/time): its wall seconds, peak RSS and exit status;
    its output goes to `log` (the last lines of which are kept when it fails)."""
    import subprocess

    tfile = log.with_suffix(".time")
    with open(log, "w") as f:
        rc = subprocess.call(["/usr/bin/time", "-f", "%e %M", "-o", str(tfile), *cmd], stdout=f, stderr=subprocess.STDOUT)
    wall, kb = tfile.read_text().strip().splitlines()[-1].split()
    out = {"rc": rc, "seconds": float(wall), "peak_rss_mb": round(int(kb) / 1024, 1)}
    if rc:
        out["error"] = log.read_text()[-600:]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path, help="the benchmark's JSON output")
    ap.add_argument("--command", required=True, help="the exact command that produced it")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--machine", default=None)
    ap.add_argument("--date", default=None, help="YYYY-MM-DD (default: today, UTC)")
    ap.add_argument("--out", type=Path, default=None, help="default: standard output")
    args = ap.parse_args()
    try:
        results = json.loads(args.output.read_text())
    except (OSError, ValueError) as e:
        print(f"error: {args.output}: {e}", file=sys.stderr)
        return 2
    text = json.dumps(wrap(results, args.command, args.commit, args.machine, args.date), indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
