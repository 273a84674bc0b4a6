#!/usr/bin/env python3
"""The same artifacts benchmarked on the local CPU and through the SSH target, side by side in
one run, against a real sshd started on 127.0.0.1 (Debian's openssh-server). Shows that the two
paths measure alike (same rankings, close latencies) and that SSH leaves nothing behind.

    python benchmarks/ssh_vs_local.py models/X-teacher models/X-student-kd-tflite-int8 ... [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sshd import start_sshd, unavailable_reason  # noqa: E402

from edgekd.artifact import load_artifact  # noqa: E402
from edgekd.bench import bench  # noqa: E402
from edgekd.targets import load_target, target_from_dict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ssh-vs-local.json"))
    args = ap.parse_args()
    if unavailable_reason():
        sys.exit(unavailable_reason())
    arts = [load_artifact(a) for a in args.artifacts]
    local = replace(load_target("local-cpu"), threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_sshd(tmp / "sshd")
        try:
            remote_tmp = tmp / "remote"
            remote_tmp.mkdir()
            ssh = target_from_dict("ssh-localhost", {
                "kind": "ssh", "host": server.alias, "ssh_config": str(server.config), "python": sys.executable,
                "remote_tmp": str(remote_tmp), "threads": args.threads, "min_runs": local.min_runs,
                "min_seconds": local.min_seconds, "warmup": local.warmup}, "benchmarks/ssh_vs_local.py")
            rows = []
            # alternate the two targets per artifact so drift hits both
            for a in arts:
                _, (r_local,) = bench([], local, out=tmp / "r", teacher=a)
                _, (r_ssh,) = bench([], ssh, out=tmp / "r", teacher=a)
                rows.append({"artifact": a.name, "format": a.format,
                             "local_p50_ms": r_local["latency_ms"]["p50_ms"], "ssh_p50_ms": r_ssh["latency_ms"]["p50_ms"],
                             "p50_ratio": r_ssh["latency_ms"]["p50_ms"] / r_local["latency_ms"]["p50_ms"],
                             "local_ndcg@10": r_local["accuracy"]["ndcg@10"], "ssh_ndcg@10": r_ssh["accuracy"]["ndcg@10"],
                             "local_peak_mb": r_local["peak_rss_bytes"] / 1e6, "ssh_peak_mb": r_ssh["peak_rss_bytes"] / 1e6})
                print(json.dumps(rows[-1]), flush=True)
            left = sorted(p.name for p in remote_tmp.iterdir())
        finally:
            server.stop()
    result = {"what": "local-cpu vs ssh://127.0.0.1, same files and threads, one run", "threads": args.threads,
              "rows": rows, "remote_files_left": left, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"remote files left behind: {left or 'none'} -> {args.out}")
    return 0 if not left and all(r["local_ndcg@10"] == r["ssh_ndcg@10"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
