#!/usr/bin/env python3
"""Load test of `edgekd serve` on loopback: throughput and client-side latency percentiles.

Each model is served by a real `python -m edgekd serve` process (uvicorn, one worker) on
127.0.0.1; an async httpx client keeps C requests in flight for a bounded time and count per
cell. Cells: an echo endpoint on the same stack (request parsing and JSON, no model: the
floor), the torch teacher and each student, at every concurrency; optionally the students with
micro-batching; optionally a soak (one student, hot reloads every N seconds, zero failures
expected). Requests are the artifact's validation users' histories (its training data, loaded
from the card), so the drift monitor sees in-distribution traffic.

    python benchmarks/serve_load.py --store /var/tmp/serve-models --teacher syn-teacher \
        --student syn-student-onnx-int8 --student syn-student-tflite-int8 --seconds 10 \
        --batching 8,32 --soak 60 --reload-every 5

Writes benchmarks/serve/<date>-<label>.json: {"command", "commit", "machine", "date", "results"}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edgekd serve` in its own process on a free loopback port."""

    def __init__(self, artifact: str, store: str, extra: list[str] = (), token: str | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if token:
            env["EDGEKD_ADMIN_TOKEN"] = token
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", artifact, "--out", store,
                                      "--host", "127.0.0.1", "--port", str(self.port), "--echo-endpoint", *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        self.wait_ready()
        return self

    def __exit__(self, *exc):
        self.stop()


def histories(artifact: str, store: str, n: int = 500) -> list[list[str]]:
    """Validation users' histories (original ids) of the artifact's training data."""
    sys.path.insert(0, str(ROOT))
    from edgekd.artifact import load_artifact
    from edgekd.torch_io import dataset_for

    a = load_artifact(artifact, Path(store))
    ds = dataset_for(a)
    hist, _ = ds.eval_split("valid")
    return [[ds.items[i - 1] for i in h[-50:]] for h in hist[:n]]


async def load(base: str, path: str, bodies: list[dict], concurrency: int, seconds: float,
               max_requests: int) -> dict:
    """Keep `concurrency` requests in flight for `seconds` (or `max_requests`)."""
    import httpx

    lat, codes, errors = [], {}, []
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
        async def worker(w: int):
            nonlocal sent
            i = w
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    r = await c.post(path, json=body)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    continue
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1e3
    ok = codes.get(200, 0)
    return {"concurrency": concurrency, "seconds": round(wall, 3), "requests": int(sum(codes.values()) + len(errors)),
            "ok": ok, "failed": int(sum(codes.values()) - ok + len(errors)),
            "status_codes": {str(k): v for k, v in sorted(codes.items())}, "transport_errors": len(errors),
            "throughput_rps": ok / wall if wall else 0.0,
            "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None,
            "mean_ms": float(a.mean()) if len(a) else None}


def metric_value(base: str, name: str, **labels) -> float | None:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for f in text_string_to_metric_families(httpx.get(base + "/metrics").text):
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def cells(server: Server, label: str, path: str, bodies, concs, args) -> list[dict]:
    out = []
    for c in concs:
        asyncio.run(load(server.base, path, bodies, c, min(1.0, args.seconds), 2000))  # warm-up
        r = asyncio.run(load(server.base, path, bodies, c, args.seconds, args.max_requests))
        r["model"] = label
        print(f"{label:40} c={c:<3} {r['throughput_rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  failed {r['failed']}", flush=True)
        out.append(r)
    return out


async def soak(server: Server, bodies, args, artifacts: list[str]) -> dict:
    """Load at concurrency 8 while /admin/reload alternates between artifacts."""
    import httpx

    reloads = []

    n = int(args.soak // args.reload_every)  # reloads at every, 2 x every, ..., up to the soak's end
    tail = min(5.0, args.reload_every / 2)    # load goes on a little after the last swap

    async def reloader():
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as c:
            start = time.perf_counter()
            for i in range(1, n + 1):  # on a fixed schedule: a slow reload does not push the next ones out
                await asyncio.sleep(max(0.0, start + i * args.reload_every - time.perf_counter()))
                t0 = time.perf_counter()
                r = await c.post("/admin/reload", json={"artifact": artifacts[i % len(artifacts)]},
                                 headers={"authorization": f"Bearer {args.token}"})
                reloads.append({"status": r.status_code, "artifact": artifacts[i % len(artifacts)],
                                "at_s": round(t0 - start, 3), "seconds": round(time.perf_counter() - t0, 3)})

    res, _ = await asyncio.gather(load(server.base, "/v1/recommend", bodies, 8, args.soak + tail, 10**9), reloader())
    res.update({"reloads": len(reloads), "reloads_ok": sum(r["status"] == 200 for r in reloads),
                "reload_every_s": args.reload_every, "reload_log": reloads, "artifacts": artifacts})
    return res


def dynamic_batch(artifact: str, store: str) -> bool:
    """Micro-batching only applies to a payload with a dynamic batch (not TFLite's batch 1)."""
    from edgekd.artifact import load_artifact

    spec = load_artifact(artifact, Path(store)).card.get("input_spec") or [{}]
    return isinstance((spec[0].get("shape") or [1])[0], str)


def batch_gain(artifact: str, store: str, bodies: list[dict], sizes=(1, 8, 32), reps: int = 200) -> dict:
    """In-process: the model call and ranking per request at each batch size (the most that
    micro-batching can save; it adds up to --max-wait-ms of waiting)."""
    from edgekd.artifact import load_artifact
    from edgekd.ranking import ServedModel

    m = ServedModel(load_artifact(artifact, Path(store)))
    enc = [m.encode(b["history"]) for b in bodies[:max(sizes)]]
    out = {}
    for b in sizes:
        if b > 1 and not m.dynamic_batch:
            continue
        m.recommend(enc[:b], 10)
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            m.recommend(enc[:b], 10)
            t.append((time.perf_counter() - t0) / b)
        out[str(b)] = {"per_request_ms_p50": float(np.percentile(t, 50) * 1e3)}
    return out


def machine() -> dict:
    cpu = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import fastapi
    import uvicorn

    return {"hostname": platform.node(), "machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "note": "client and server share the same CPUs (loopback)"}


def machine_line(d: dict) -> str:
    la = d["loadavg_1_5_15"]
    return (f"{d['cpu_count']} {d['machine']} cores ({d['cpu']}), Python {d['python']}, fastapi {d['fastapi']}, "
            f"uvicorn {d['uvicorn']}; client and server on the same CPUs; 1-minute load average "
            f"{la['start'][0]:.1f} at the start, {la['end'][0]:.1f} at the end (results.machine_detail)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--teacher", help="torch teacher artifact")
    ap.add_argument("--student", action="append", default=[], help="student artifact (repeatable)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated; empty: no cells (a soak only)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per cell")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per cell")
    ap.add_argument("--batching", default="", help="also run the students with these --max-batch values, e.g. 8,32")
    ap.add_argument("--max-wait-ms", type=float, default=0.5)
    ap.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: none)")
    ap.add_argument("--reload-every", type=float, default=5.0)
    ap.add_argument("--token", default="bench-token")
    ap.add_argument("--label", default="short")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "serve"))
    args = ap.parse_args()
    if args.seconds > 60 or args.soak > 600:
        ap.error("cells are bounded: --seconds <= 60, --soak <= 600")
    concs = [int(c) for c in args.concurrency.split(",") if c.strip()]
    first = args.student[0] if args.student else args.teacher
    bodies = [{"history": h, "k": 10} for h in histories(first, args.store)]
    load_start = os.getloadavg()
    results: dict = {"cells": [], "settings": {"seconds_per_cell": args.seconds, "max_requests_per_cell": args.max_requests,
                                              "k": 10, "histories": len(bodies), "threads": 1, "workers": 1}}
    for name in ([first] if concs else []):
        with Server(name, args.store) as s:
            results["cells"] += cells(s, "echo (no model; same stack)", "/v1/echo", bodies, concs, args)
    for name in ([args.teacher] if args.teacher else []) + args.student if concs else []:
        with Server(name, args.store) as s:
            results["cells"] += cells(s, name, "/v1/recommend", bodies, concs, args)
            inf = metric_value(s.base, "edgekd_inference_duration_seconds_sum")
            n = metric_value(s.base, "edgekd_inference_duration_seconds_count")
            results["cells"][-1]["server_mean_inference_ms"] = inf / n * 1e3 if n else None
    load_before = os.getloadavg()
    results["inference_per_request_by_batch"] = {n: batch_gain(n, args.store, bodies) for n in args.student if concs}
    for mb in [int(b) for b in args.batching.split(",") if b.strip()]:
        for name in [n for n in args.student if dynamic_batch(n, args.store)]:
            with Server(name, args.store, ["--max-batch", str(mb), "--max-wait-ms", str(args.max_wait_ms)]) as s:
                label = f"{name} --max-batch {mb} --max-wait-ms {args.max_wait_ms:g}"
                results["cells"] += cells(s, label, "/v1/recommend", bodies, concs, args)
                n = metric_value(s.base, "edgekd_inference_batch_size_count")
                tot = metric_value(s.base, "edgekd_inference_batch_size_sum")
                results["cells"][-1]["mean_batch_size_all_cells"] = tot / n if n else None
    if args.soak:
        arts = args.student[:2] if len(args.student) >= 2 else [first, first]
        with Server(arts[0], args.store, token=args.token) as s:
            r = asyncio.run(soak(s, bodies, args, arts))
            r["model"] = arts[0]
            print(f"soak {args.soak:g}s: {r['requests']} requests, {r['failed']} failed, {r['reloads_ok']}/"
                  f"{r['reloads']} reloads ok, p99 {r['p99_ms']:.2f} ms", flush=True)
            results["soak"] = r
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    detail = machine()
    detail["loadavg_1_5_15"] = {"start": load_start, "before_batching": load_before, "end": os.getloadavg()}
    results["machine_detail"] = detail
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rec = {"command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
           "commit": commit + ("-dirty" if dirty else ""), "machine": machine_line(detail),
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{args.label}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
