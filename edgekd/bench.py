"""Benchmark artifacts on a target: each in its own process, through the device runner.

One record (a BenchResult, JSON) per (artifact, target, runtime), written the moment it
finishes. The teacher, run in torch fp32, is always benchmarked as the baseline and every
record carries its change against it: accuracy, latency, size and memory.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from .artifact import Artifact, load_artifact
from .data import Dataset, pad_left
from .distill import find_teacher
from .errors import ArtifactError, BenchError
from .metrics import ranking_metrics, ranks_from_topk
from .targets import Target
from .train import dataset_for

SCHEMA = 1
RUNNER = Path(__file__).with_name("device_runner.py")
MODEL_CODE = Path(__file__).with_name("models.py")
DEFAULT_OUT = Path("benchmarks/results")


def payload_kind(a: Artifact) -> str:
    return {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite", ".safetensors": "torch"}.get(a.file.suffix, "?")


def write_inputs(ds: Dataset, maxlen: int, path: Path, users: int | None = None) -> tuple[np.ndarray, Path]:
    """The test split as the runner's npz: inputs and seen items; returns the targets too."""
    hist, targets = ds.eval_split("test")
    if users is not None and users < len(hist):
        idx = np.sort(np.random.default_rng(0).choice(len(hist), size=users, replace=False))
        hist, targets = [hist[i] for i in idx], targets[idx]
    # Items to exclude from each ranking: those seen before, except the target itself (a
    # repeat is still a valid next item), the same protocol as metrics.full_ranks.
    seen = [np.setdiff1d(np.unique(h), [t]) for h, t in zip(hist, targets)]
    seen = pad_left(seen, max(1, max(len(s) for s in seen)))
    np.savez(path, inputs=pad_left(hist, maxlen).astype(np.int32), seen=seen.astype(np.int32))
    return targets, path


def host_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gov = None
    try:
        gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "governor": gov, "machine": platform.machine(), "system": platform.system()}


def run_local(a: Artifact, target: Target, inputs: Path, threads: int) -> dict:
    kind = payload_kind(a)
    runtime = target.runtimes.get(kind)
    if runtime is None:
        raise BenchError(f"{a.name}: no runtime for {a.file.suffix} files on {target.name}")
    with tempfile.TemporaryDirectory(prefix="edgekd-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(RUNNER), "--model", str(a.file), "--runtime", runtime,
               "--inputs", str(inputs), "--threads", str(threads), "--warmup", str(target.warmup),
               "--min-runs", str(target.min_runs), "--min-seconds", str(target.min_seconds),
               "--out", str(out)]
        if kind == "torch":
            cmd += ["--card", str(a.path / "artifact.json"), "--code", str(MODEL_CODE)]
        # One thread for the BLAS/OpenMP pools too, so "threads" means what it says.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OPENBLAS_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=target.timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{a.name}: the runner took longer than {target.timeout_s:g} s on {target.name}") from None
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"{a.name}: the runner failed on {target.name} (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())


def _rel(x: float | None, base: float | None) -> float | None:
    if x is None or not base:
        return None
    return (x - base) / base


def make_record(a: Artifact, target: Target, raw: dict, targets: np.ndarray, run_id: str) -> dict:
    acc = ranking_metrics(ranks_from_topk(np.asarray(raw["topk"]), targets))
    return {
        "schema": SCHEMA, "run_id": run_id, "status": "ok",
        "target": {"name": target.name, "kind": target.kind, "source": target.source},
        "artifact": {"name": a.name, "path": str(a.path), "sha256": a.sha256, "stage": a.card["stage"],
                     "format": a.format, "precision": a.card.get("precision", "fp32"),
                     "params": a.card.get("params"), "arch": a.card.get("arch")},
        "runtime": raw["runtime"], "runtime_version": raw["runtime_version"],
        "threads": raw["threads"], "batch": raw["batch"],
        "latency_ms": raw["latency"],
        "cold_start_ms": raw["cold_start_ms"], "load_ms": raw["load_ms"],
        "first_inference_ms": raw["first_inference_ms"],
        "peak_rss_bytes": raw["peak_rss_bytes"], "baseline_rss_bytes": raw["baseline_rss_bytes"],
        "model_rss_bytes": raw["peak_rss_bytes"] - raw["baseline_rss_bytes"],
        "size_bytes": a.file.stat().st_size,
        "accuracy": {"split": "test", "users": raw["eval_users"],
                     "hr@10": acc["hr@10"], "ndcg@10": acc["ndcg@10"],
                     "note": "full ranking, seen items excluded, from this file's own outputs"},
        "device": {**raw["device"], **host_info()},
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_deltas(rec: dict, base: dict) -> dict:
    """The change against the teacher's record from the same run."""
    rec["vs_teacher"] = {
        "teacher": base["artifact"]["name"],
        "ndcg@10_rel": _rel(rec["accuracy"]["ndcg@10"], base["accuracy"]["ndcg@10"]),
        "hr@10_rel": _rel(rec["accuracy"]["hr@10"], base["accuracy"]["hr@10"]),
        "speedup_p50": base["latency_ms"]["p50_ms"] / rec["latency_ms"]["p50_ms"],
        "size_ratio": base["size_bytes"] / rec["size_bytes"],
        "peak_rss_ratio": base["peak_rss_bytes"] / rec["peak_rss_bytes"],
    }
    return rec


def record_path(out: Path, a: Artifact, target: Target) -> Path:
    return out / f"{a.name}__{target.name}.json"


def bench(artifacts: list[Artifact], target: Target, *, out: Path = DEFAULT_OUT,
          teacher: Artifact | None = None, threads: int | None = None, run_id: str | None = None,
          users: int | None = None, on_result=None) -> tuple[Path, list[dict]]:
    """Benchmark `artifacts` (and their teacher, first) on `target`; returns (run dir, records)."""
    if not artifacts and teacher is None:
        raise ArtifactError("nothing to benchmark", hint="pass one or more artifact directories")
    teacher = teacher or find_teacher(artifacts[0])
    ds = dataset_for(teacher)
    todo = [teacher] + [a for a in artifacts if a.sha256 != teacher.sha256]
    for a in todo:
        a.check_dataset(ds.fingerprint())
    threads = threads or target.threads
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{target.name}"
    run_dir = Path(out) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs: dict[int, tuple[np.ndarray, Path]] = {}
    records = []
    base = None
    for a in todo:
        maxlen = int(a.card["arch_kwargs"]["maxlen"])
        if maxlen not in inputs:
            inputs[maxlen] = write_inputs(ds, maxlen, run_dir / f"inputs-maxlen{maxlen}.npz", users)
        targets, npz = inputs[maxlen]
        try:
            raw = run_local(a, target, npz, threads)
            rec = make_record(a, target, raw, targets, run_id)
        except BenchError as e:
            if base is None:
                raise  # no baseline, no comparison: stop here
            rec = {"schema": SCHEMA, "run_id": run_id, "status": "failed", "error": str(e),
                   "target": {"name": target.name, "kind": target.kind},
                   "artifact": {"name": a.name, "path": str(a.path), "sha256": a.sha256}}
        if rec["status"] == "ok":
            base = base or rec
            add_deltas(rec, base)
        path = record_path(run_dir, a, target)
        path.write_text(json.dumps(rec, indent=2) + "\n")  # written the moment it finishes
        records.append(rec)
        if on_result:
            on_result(rec)
    # The inputs are derived from the dataset, which may not be redistributable: drop them.
    for _, npz in inputs.values():
        npz.unlink(missing_ok=True)
    return run_dir, records


def load_records(run_dir: Path) -> list[dict]:
    recs = []
    for p in sorted(Path(run_dir).glob("*.json")):
        if p.name.startswith("report"):
            continue
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{p}: corrupt bench record ({e})") from None
        if isinstance(r, dict) and r.get("schema") == SCHEMA:
            recs.append(r)
    return recs


def latest_run(out: Path = DEFAULT_OUT) -> Path:
    runs = sorted((p for p in Path(out).glob("*") if p.is_dir() and any(p.glob("*__*.json"))),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ArtifactError(f"no bench runs under {out}", hint="run `edgekd bench` first")
    return runs[-1]
