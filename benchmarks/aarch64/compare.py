#!/usr/bin/env python3
"""Compare device_runner.py results for the same model and inputs on two machines.

    python compare.py --pair tflite-fp32 x86.json aarch64.json [--pair ...] [--k 10]
                      [--max-diff 0.02] [--manifest manifest.json] [--meta meta.json] [--out summary.json]

For each pair: the fraction of users whose top-k lists are identical (in order, and as sets),
the mean top-k and top-K overlap (K = the runner's --topk), each side's device, runtime and
latency. Exits 1 when, for any pair, more than --max-diff of the users' top-k lists differ.
Standard library only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def overlap(a: list[int], b: list[int], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


def side(r: dict) -> dict:
    lat = r.get("latency", {})
    return {
        "machine": r["device"]["machine"],
        "device": {k: r["device"].get(k) for k in ("machine", "system", "cpu", "cpu_count", "python", "numpy")},
        "runtime": r["runtime"], "runtime_version": r["runtime_version"],
        "p50_ms": lat.get("p50_ms"), "mean_ms": lat.get("mean_ms"), "runs": lat.get("runs"),
        "cold_start_ms": r.get("cold_start_ms"), "eval_seconds": r.get("eval_seconds"),
    }


def compare(host: dict, arm: dict, k: int) -> dict:
    a, b = host["topk"], arm["topk"]
    if len(a) != len(b):
        raise SystemExit(f"different user counts: {len(a)} vs {len(b)}")
    big_k = min(len(a[0]), len(b[0])) if a else 0
    k = min(k, big_k)
    n = len(a)
    same = [x[:k] == y[:k] for x, y in zip(a, b)]
    diff_users = [i for i, s in enumerate(same) if not s]
    examples = []
    for i in diff_users[:5]:
        first = next(r for r in range(k) if a[i][r] != b[i][r])
        examples.append({"user_row": i, "first_differing_rank": first + 1,
                         "x86": a[i][:k], "aarch64": b[i][:k]})
    return {
        "users": n, "k": k, "K": big_k,
        f"top{k}_identical_frac": sum(same) / n,
        f"top{k}_same_set_frac": sum(set(x[:k]) == set(y[:k]) for x, y in zip(a, b)) / n,
        f"top{k}_overlap": sum(overlap(x, y, k) for x, y in zip(a, b)) / n,
        f"top{big_k}_identical_frac": sum(x[:big_k] == y[:big_k] for x, y in zip(a, b)) / n,
        f"top{big_k}_overlap": sum(overlap(x, y, big_k) for x, y in zip(a, b)) / n,
        "users_differing": len(diff_users), "examples": examples,
        "x86": side(host), "aarch64": side(arm),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=3, action="append", required=True, metavar=("LABEL", "X86", "AARCH64"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-diff", type=float, default=0.02,
                    help="largest fraction of users whose top-k may differ (near-tie reorders)")
    ap.add_argument("--manifest", help="make_artifacts.py's manifest.json (data, models, versions)")
    ap.add_argument("--meta", help="run.sh's meta.json (how the root was made, timings)")
    ap.add_argument("--out", help="also write the summary JSON here")
    args = ap.parse_args(argv)

    results = {}
    for label, x86, arm in args.pair:
        results[label] = compare(load(x86), load(arm), args.k)
        results[label]["ok"] = results[label]["users_differing"] <= args.max_diff * results[label]["users"]

    meta = load(args.meta) if args.meta else {}
    for label, r in results.items():
        k, big_k = r["k"], r["K"]
        logs = meta.get("logs", {})
        xnn = {s: logs.get(f"{s}-{label}", {}).get("xnnpack_delegate") for s in ("x86", "aarch64")}
        r["xnnpack_delegate"] = xnn
        if xnn["x86"] is not None and xnn["x86"] != xnn["aarch64"]:
            print(f"   WARNING {label}: XNNPACK delegate x86={xnn['x86']} aarch64={xnn['aarch64']}: "
                  "the two sides ran different kernels", file=sys.stderr)
        print(f"== {label}: {r['users']} users", file=sys.stderr)
        print(f"   top-{k} identical: {r[f'top{k}_identical_frac']:.4f} ({r['users_differing']} users differ), "
              f"same set: {r[f'top{k}_same_set_frac']:.4f}, overlap: {r[f'top{k}_overlap']:.4f}; "
              f"top-{big_k} identical: {r[f'top{big_k}_identical_frac']:.4f}, overlap: {r[f'top{big_k}_overlap']:.4f}"
              f"  -> {'OK' if r['ok'] else 'DIFFERENT'}", file=sys.stderr)
        for name in ("x86", "aarch64"):
            s = r[name]
            d = s["device"]
            print(f"   {name:8s} machine={s['machine']} python={d.get('python')} numpy={d.get('numpy')} "
                  f"{s['runtime']}={s['runtime_version']} p50={s['p50_ms']:.3f} ms "
                  f"cold_start={s['cold_start_ms']:.1f} ms xnnpack={r['xnnpack_delegate'][name]}",
                  file=sys.stderr)
        for ex in r["examples"]:
            print(f"   differs: row {ex['user_row']} from rank {ex['first_differing_rank']}: "
                  f"x86 {ex['x86']} vs aarch64 {ex['aarch64']}", file=sys.stderr)
    print("   (aarch64 runs under qemu emulation: its latencies say nothing about real arm64 hardware)",
          file=sys.stderr)

    summary = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "check": f"device_runner.py top-{args.k} on x86 vs aarch64 (qemu-user) for the same model and inputs",
        "ok": all(r["ok"] for r in results.values()),
        "max_diff": args.max_diff,
        "results": results,
        "latency_note": "aarch64 runs under qemu-user emulation: its latencies are not meaningful",
    }
    if args.manifest:
        m = load(args.manifest)
        summary["data"] = m.get("data")
        summary["models"] = {f: {k: v for k, v in info.items() if k != "file"}
                             for f, info in m.get("models", {}).items()}
        summary["inputs_sha256"] = m.get("inputs", {}).get("sha256")
        summary["host_versions"] = m.get("versions")
    if meta:
        summary["run"] = meta
    text = json.dumps(summary, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
