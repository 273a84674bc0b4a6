"""Benchmark artifacts on a target: each in its own process, through the device runner.

One record (a BenchResult, JSON) per (artifact, target, runtime), written the moment it
finishes. The teacher, run in torch fp32, is always benchmarked as the baseline and every
record carries its change against it: accuracy, latency, size and memory.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, timing
from .artifact import Artifact, check_name, find_teacher, write_json
from .errors import ArtifactError, BenchError, ConfigError, TargetError
from .metrics import ranking_metrics, ranks_from_topk
from .runner import input_maxlen, payload_kind, run_runner, time_artifacts, write_inputs
from .targets import LocalTransport, Target
from .torch_io import dataset_for

SCHEMA = 1
DEFAULT_OUT = Path("benchmarks/results")


PROBE = r"""
import json, platform, sys
out = {"python": platform.python_version(), "machine": platform.machine(), "runtimes": {}}
for mod, dist in (("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("ai_edge_litert", "ai-edge-litert"),
                  ("tflite_runtime", "tflite-runtime"), ("torch", "torch")):
    try:
        m = __import__(mod)
        v = getattr(m, "__version__", None)
        if v is None:
            from importlib.metadata import version
            v = version(dist)
        out["runtimes"][dist] = v
        if mod == "onnxruntime":
            out["onnxruntime_providers"] = m.get_available_providers()
        if mod == "torch":
            out["torch_cuda"] = bool(m.cuda.is_available())
    except Exception:
        pass
print(json.dumps(out))
"""


def check_target(target: Target) -> dict:
    """Is the target reachable, and which runtimes (and versions) does it have? Raises
    TargetError when it cannot be reached or cannot run anything edgekd exports."""
    tr = target.transport()
    info: dict = {"target": target.name, "kind": target.kind, "via": tr.describe(), "device": target.device}
    if target.kind == "adb":
        tr.state()
        for prop in ("ro.product.model", "ro.build.version.release", "ro.product.cpu.abi"):
            info[prop] = tr.run(["getprop", prop], timeout=30).stdout.decode().strip()
        info["benchmark_binary"] = _binary_status(target.benchmark_binary)
        info["perf_test_binary"] = _binary_status(target.perf_test_binary)
        return info
    python = sys.executable if target.kind == "local" else target.python
    p = tr.run([python, "-c", PROBE], timeout=max(60, target.connect_timeout_s * 3))
    if p.returncode != 0:
        raise TargetError(f"{target.name}: `{python}` does not run on {tr.describe()}: "
                          f"{(p.stderr.decode(errors='replace').strip().splitlines() or ['no output'])[-1]}")
    info.update(json.loads(p.stdout.decode().strip().splitlines()[-1]))
    if "numpy" not in info["runtimes"]:
        raise TargetError(f"{target.name}: numpy is missing on {tr.describe()}; the device runner needs it")
    if target.device == "cuda":
        has = info.get("torch_cuda") or "CUDAExecutionProvider" in info.get("onnxruntime_providers", [])
        if not has:
            raise TargetError(f"{target.name}: no CUDA device: torch sees none and ONNX Runtime has no "
                              "CUDA provider here")
    return info


def _binary_status(path: str | None) -> str:
    if not path:
        return "not configured"
    return "ok" if Path(path).expanduser().is_file() else f"missing: {path}"


# The fixed flags for each allowed delegate / execution provider (targets.TFLITE_DELEGATES and
# targets.ONNX_EXECUTION_PROVIDERS). "cpu" for TFLite switches XNNPACK off explicitly: recent
# benchmark_model builds apply it by default otherwise.
TFLITE_DELEGATE_FLAGS = {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"],
                         "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}
ORT_PROVIDER_FLAGS = {"cpu": ["-e", "cpu"], "xnnpack": ["-e", "xnnpack"], "nnapi": ["-e", "nnapi"]}


def android_delegate(kind: str, target: Target) -> dict:
    """Which delegate (TFLite) or execution provider (ONNX Runtime) an adb cell runs with, the
    target field that chose it, and the flags passed to the tool."""
    if kind == "tflite":
        return {"field": "tflite_delegate", "name": target.tflite_delegate,
                "flags": list(TFLITE_DELEGATE_FLAGS[target.tflite_delegate])}
    return {"field": "onnx_execution_provider", "name": target.onnx_execution_provider,
            "flags": list(ORT_PROVIDER_FLAGS[target.onnx_execution_provider])}


def run_android(a: Artifact, target: Target, threads: int) -> dict:
    """Time the file with the device's own benchmark tool (TFLite benchmark_model, or
    onnxruntime_perf_test for ONNX) through adb, and parse what it prints."""
    import posixpath

    from .android import parse_ort_perf_test, parse_tflite_benchmark

    kind = payload_kind(a)
    binary = {"tflite": target.benchmark_binary, "onnx": target.perf_test_binary}.get(kind)
    tool = {"tflite": "benchmark_binary", "onnx": "perf_test_binary"}.get(kind)
    if tool is None:
        raise BenchError(f"{a.name}: {a.format} files cannot be benchmarked over adb (tflite and onnx can)")
    if not binary or not Path(binary).expanduser().is_file():
        raise BenchError(f"{target.name}: {tool} {binary or '(not set)'} is missing; set `{tool}` in "
                         f"{target.source} to the Android build of the tool")
    tr = target.transport()
    with tr.workdir() as wd:
        exe, model = posixpath.join(wd, Path(binary).name), posixpath.join(wd, "model" + a.file.suffix)
        tr.put(Path(binary).expanduser(), exe)
        tr.run(["chmod", "755", exe], check=True)
        tr.put(a.file, model)
        pre = ["taskset", target.taskset] if target.taskset else []
        flags = android_delegate(kind, target)["flags"]
        if kind == "tflite":
            argv = pre + [exe, f"--graph={model}", f"--num_threads={threads}", f"--warmup_runs={target.warmup}",
                          f"--num_runs={target.min_runs}", f"--min_secs={target.min_seconds}",
                          "--report_peak_memory_footprint=true", *flags]
        else:
            argv = pre + [exe, *flags, "-x", str(threads), "-r", str(target.min_runs), "-I", model]
        p = tr.run(argv, timeout=target.timeout_s)
        text = p.stdout.decode(errors="replace") + "\n" + p.stderr.decode(errors="replace")
        parsed = parse_tflite_benchmark(text) if kind == "tflite" else parse_ort_perf_test(text)
    return parsed


def _rel(x: float | None, base: float | None) -> float | None:
    if x is None or not base:
        return None
    return (x - base) / base


def record_head(a: Artifact, target: Target, run_id: str, status: str) -> dict:
    """What every record starts with: which file, on which target, in which run, how it went."""
    return {
        "schema": SCHEMA, "run_id": run_id, "status": status,
        "target": {"name": target.name, "kind": target.kind, "device": target.device, "source": target.source},
        "artifact": {"name": a.name, "path": str(a.path), "sha256": a.sha256, "stage": a.card["stage"],
                     "format": a.format, "precision": a.card.get("precision", "fp32"),
                     "params": a.card.get("params"), "arch": a.card.get("arch")},
    }


def make_record(a: Artifact, target: Target, raw: dict, targets: np.ndarray, run_id: str) -> dict:
    acc = ranking_metrics(ranks_from_topk(np.asarray(raw["topk"]), targets))
    return {
        **record_head(a, target, run_id, "ok"),
        "runtime": raw["runtime"], "runtime_version": raw["runtime_version"],
        "threads": raw["threads"], "batch": raw["batch"], "timing_source": "edgekd device runner",
        "latency_ms": raw["latency"], "batch_sweep": raw.get("batch_sweep", {}),
        "cold_start_ms": raw["cold_start_ms"], "load_ms": raw["load_ms"],
        "first_inference_ms": raw["first_inference_ms"],
        "peak_rss_bytes": raw["peak_rss_bytes"], "baseline_rss_bytes": raw["baseline_rss_bytes"],
        "model_rss_bytes": raw["peak_rss_bytes"] - raw["baseline_rss_bytes"],
        "size_bytes": a.file.stat().st_size,
        "accuracy": accuracy_block(acc, raw["eval_users"], "this file's own outputs on the target"
                                   + (": its in-graph top-K, seen items removed from it (the history can take "
                                      "places in it, so this is at most the full ranking's figure)"
                                      if raw.get("topk_graph") else "")),
        "device": raw["device"],
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def accuracy_block(acc: dict, users: int, source: str) -> dict:
    return {"split": "test", "users": users, "hr@10": acc["hr@10"], "ndcg@10": acc["ndcg@10"],
            "note": f"full ranking, seen items excluded, from {source}"}


def make_android_record(a: Artifact, target: Target, parsed: dict, host_raw: dict, targets: np.ndarray,
                        run_id: str, threads: int, device_info: dict) -> dict:
    """An Android cell: timings and memory from the device's benchmark tool, accuracy from the
    same file run on the host (the tools time; they do not return outputs)."""
    acc = ranking_metrics(ranks_from_topk(np.asarray(host_raw["topk"]), targets))
    lat = {k: parsed.get(f"{k}_ms") for k in ("p50", "p90", "p99")}
    lat = {f"{k}_ms": v for k, v in lat.items()}
    lat.update({"mean_ms": parsed.get("avg_ms"), "std_ms": parsed.get("std_ms"), "min_ms": parsed.get("min_ms"),
                "runs": parsed.get("runs")})
    if lat["p50_ms"] is None:  # older tools print no percentiles: the average stands in, and says so
        lat["p50_ms"] = parsed.get("avg_ms")
        lat["p50_is_mean"] = True
    cold = None
    if parsed.get("init_ms") is not None and parsed.get("first_inference_ms") is not None:
        cold = parsed["init_ms"] + parsed["first_inference_ms"]
    return {
        **record_head(a, target, run_id, "ok"),
        "runtime": parsed["tool"], "runtime_version": None, "threads": threads, "batch": 1,
        "timing_source": parsed["tool"], "latency_ms": lat, "batch_sweep": {},
        "cold_start_ms": cold, "load_ms": parsed.get("init_ms"), "first_inference_ms": parsed.get("first_inference_ms"),
        "peak_rss_bytes": parsed.get("peak_memory_bytes"), "baseline_rss_bytes": None,
        "model_rss_bytes": parsed.get("overall_memory_delta_bytes"),
        "size_bytes": a.file.stat().st_size,
        "accuracy": accuracy_block(acc, host_raw["eval_users"], "the same file run on the host"),
        "device": device_info, "tool_output": parsed,
        # what the tool was asked to run with; tool_output["delegates_reported"] is what it said
        "delegate": {**android_delegate(payload_kind(a), target), "reported": parsed.get("delegates_reported")},
        "edgekd_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_deltas(rec: dict, base: dict) -> dict:
    """The change against the teacher's record from the same run and target."""
    def ratio(x, y):
        return x / y if x and y else None

    rec["vs_teacher"] = {
        "teacher": base["artifact"]["name"],
        "ndcg@10_rel": _rel(rec["accuracy"]["ndcg@10"], base["accuracy"]["ndcg@10"]),
        "hr@10_rel": _rel(rec["accuracy"]["hr@10"], base["accuracy"]["hr@10"]),
        # paired by round where both were timed in the same rounds (speedup_vs_teacher has the interval)
        "speedup_p50": (rec.get("speedup_vs_teacher") or {}).get("ratio")
        or ratio(base["latency_ms"]["p50_ms"], rec["latency_ms"]["p50_ms"]),
        "size_ratio": ratio(base["size_bytes"], rec["size_bytes"]),
        "peak_rss_ratio": ratio(base["peak_rss_bytes"], rec["peak_rss_bytes"]),
    }
    return rec


def record_path(out: Path, a: Artifact, target: Target) -> Path:
    return out / f"{a.name}__{target.name}.json"


def _finished(path: Path, a: Artifact, threads: int, users: int) -> dict | None:
    """A finished (ok) record for this very file, measured the same way, or None."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (rec.get("status") == "ok" and rec.get("artifact", {}).get("sha256") == a.sha256
            and rec.get("threads") == threads and rec.get("accuracy", {}).get("users") == users):
        return rec
    return None


def _write_record(path: Path, rec: dict) -> None:
    """Atomically: an interrupted write leaves the old record or none, never half of one."""
    write_json(path, rec)


def bench(artifacts: list[Artifact], target: Target, *, out: Path = DEFAULT_OUT,
          teacher: Artifact | None = None, threads: int | None = None, run_id: str | None = None,
          users: int | None = None, on_result=None, resume: bool = False,
          rounds: int = timing.DEFAULT_ROUNDS) -> tuple[Path, list[dict]]:
    """Benchmark `artifacts` (and their teacher, first) on `target`; returns (run dir, records).

    Each record is written the moment its cell finishes. With `resume`, cells that already
    have a finished record for the same file in the run directory (`run_id`, or the latest run
    on this target) are kept and skipped. A cell that fails (a runner error, a dropped
    connection) is recorded as failed and the rest go on.

    Latency (local and ssh targets) is timed in `rounds` interleaved rounds, one warm runner
    process per file (edgekd.timing); memory, accuracy and the batch sweep come from the same
    processes afterwards. Records are written once the rounds are done. adb cells use the
    phone's own tools, one after another."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if not artifacts and teacher is None:
        raise ArtifactError("nothing to benchmark", hint="pass one or more artifact directories")
    if users is not None and users < 1:
        raise ConfigError(f"users must be >= 1, got {users}")
    if run_id is not None:
        check_name(run_id, "bench run name")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    teacher = teacher or find_teacher(artifacts[0])
    ds = dataset_for(teacher)
    todo = [teacher] + [a for a in artifacts if a.sha256 != teacher.sha256]
    # Every artifact is scored on its own data: the teacher's, or (vocabulary pruning) the same
    # users and targets with the pruned items mapped to the out-of-vocabulary item.
    data = {ds.fingerprint(): ds}
    for a in todo:
        fp = (a.card.get("dataset") or {}).get("fingerprint")
        if fp not in data:
            other = dataset_for(a)
            if other.users != ds.users or other.spec is None or other.spec.keep_items is None:
                a.check_dataset(ds.fingerprint())  # not a vocabulary-pruned view of the same data: refuse
            data[fp] = other
    threads = threads or target.threads
    device_info = check_target(target)  # unreachable: TargetError (exit 3) before any cell runs
    if resume and run_id is None:
        try:
            run_id = latest_run(out, target.name).name
        except ArtifactError:
            pass
    run_id = check_name(run_id or time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9._-]", "_", target.name),
                        "bench run name")
    run_dir = Path(out) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs: dict[tuple, tuple[np.ndarray, Path]] = {}
    done: dict[str, dict] = {}      # artifact sha -> its record
    timed: list[tuple[Artifact, Path, np.ndarray]] = []
    host = None
    n_users = min(users, ds.num_users) if users else ds.num_users
    fail = lambda a, status, e: {**record_head(a, target, run_id, status), "error": str(e),  # noqa: E731
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        for a in todo:
            rec = _finished(record_path(run_dir, a, target), a, threads, n_users) if resume else None
            if rec is not None:
                rec["resumed"] = True
                done[a.sha256] = rec
                continue
            maxlen = input_maxlen(a)
            a_ds = data[(a.card.get("dataset") or {}).get("fingerprint")]
            key = (a_ds.fingerprint(), maxlen)
            if key not in inputs:
                inputs[key] = write_inputs(a_ds, maxlen, run_dir / f"inputs-{len(inputs)}-maxlen{maxlen}.npz",
                                           users)
            targets, npz = inputs[key]
            if target.kind != "adb":
                timed.append((a, npz, targets))
                continue
            try:  # a phone: its own benchmark tool, one cell after another (no rounds)
                if payload_kind(a) == "torch":
                    raise _Skip(f"{a.name}: torch files do not run on a phone; its accuracy is on the host "
                                "(local-cpu), and exports are compared with each other here")
                parsed = run_android(a, target, threads)
                host = host or _host_twin(target)
                host_raw = run_runner(a, host, npz, threads, LocalTransport(host))
                done[a.sha256] = make_android_record(a, target, parsed, host_raw, targets, run_id, threads,
                                                     device_info)
            except _Skip as e:
                done[a.sha256] = fail(a, "skipped", e)
            except (BenchError, TargetError) as e:
                done[a.sha256] = fail(a, "failed", e)
        if timed:
            names = [a.name for a, _, _ in timed]
            ref = next((k for k, (a, _, _) in enumerate(timed) if a.sha256 == teacher.sha256), None)
            m, raws = time_artifacts([(a, npz) for a, npz, _ in timed], target, threads, rounds=rounds,
                                     reference=ref, finish=True, names=names)
            for a, _, targets in timed:
                raw = raws.get(a.name)
                if isinstance(raw, dict):
                    rec = make_record(a, target, raw, targets, run_id)
                    add_rounds(rec, m, a.name)
                else:
                    rec = fail(a, "failed", raw or m.errors.get(a.name, "not measured"))
                done[a.sha256] = rec
        records, base = [], None
        for a in todo:
            rec = done[a.sha256]
            if rec["status"] == "ok":
                base = base or (rec if a.sha256 == teacher.sha256 else None)
                if base is not None and not rec.get("resumed"):
                    add_deltas(rec, base)
            if not rec.get("resumed"):  # a kept record stays exactly as it was written
                _write_record(record_path(run_dir, a, target), rec)
            records.append(rec)
            if on_result:
                on_result(rec)
    finally:
        # The inputs are derived from the dataset, which may not be redistributable: drop them.
        for _, npz in inputs.values():
            npz.unlink(missing_ok=True)
    return run_dir, records


# ---------------------------------------------------------------- bring your own model file

PLAIN_SUFFIXES = (".onnx", ".ort", ".tflite")


@dataclass(frozen=True)
class PlainFile:
    """A model file from outside the artifact store, timed like an artifact's payload. It
    takes int item indices [batch, maxlen] (1..N, 0 = padding) and returns N scores."""

    file: Path
    name: str
    sha256: str
    format: str
    card: dict

    @property
    def path(self) -> Path:
        return self.file


def plain_file(path: Path) -> PlainFile:
    from .artifact import sha256_file
    from .errors import ConfigError

    p = Path(path)
    if p.suffix not in PLAIN_SUFFIXES or not p.is_file():
        raise ConfigError(f"{p}: not a model file to bench (a {', '.join(PLAIN_SUFFIXES)} file)")
    return PlainFile(file=p, name=p.name, sha256=sha256_file(p), format=p.suffix.lstrip("."),
                     card={"stage": "file", "precision": None})


def bench_file(f: PlainFile, target: Target, *, out: Path = DEFAULT_OUT, threads: int | None = None,
               users: int | None = None, ds: Dataset | None = None, vocab: dict | None = None,
               run_id: str | None = None) -> tuple[Path, dict]:
    """Latency and memory of a plain model file on `target`; accuracy too when the dataset and
    the vocabulary the file was trained with are given (the vocabulary must match the data's)."""
    from .errors import ConfigError
    from .inspection import inspect_path

    if target.kind == "adb":
        raise ConfigError(f"{target.name}: plain files are benched on local and ssh targets; "
                          "export an artifact for a phone")
    sig = inspect_path(f.file)
    try:
        maxlen = int(sig["inputs"][0]["shape"][-1])
        n_items = int(sig["outputs"][0]["shape"][-1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ConfigError(f"{f.file}: needs one int input [batch, maxlen] and one output [batch, items] with "
                          f"fixed maxlen and items; the file has {sig.get('inputs')} -> {sig.get('outputs')}") from None
    if (ds is None) != (vocab is None):
        raise ConfigError("accuracy needs both --vocab (the file's vocab.json) and --data")
    if ds is not None and (list(vocab.get("items", [])) != list(ds.items) or ds.num_items != n_items):
        raise ConfigError(f"{f.name}: its vocabulary ({len(vocab.get('items', []))} items) is not the one this "
                          f"data gives ({ds.num_items} items): item indices would not match")
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{target.name}"
    run_dir = Path(out) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    npz = run_dir / f"inputs-{f.name}.npz"
    try:
        if ds is not None:
            targets, _ = write_inputs(ds, maxlen, npz, users)
        else:  # latency and memory only: random valid item indices
            rng = np.random.default_rng(0)
            n = min(users or 256, 256)
            np.savez(npz, inputs=rng.integers(1, n_items + 1, size=(n, maxlen)).astype(np.int32),
                     seen=np.zeros((n, 1), np.int32))
            targets = np.zeros(n, dtype=np.int64)
        threads = threads or target.threads
        check_target(target)
        try:
            rec = make_record(f, target, run_runner(f, target, npz, threads), targets, run_id)
        except (BenchError, TargetError) as e:
            rec = {**record_head(f, target, run_id, "failed"), "error": str(e),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if rec["status"] == "ok" and ds is None:
            rec["accuracy"] = None  # random inputs: no accuracy
        _write_record(record_path(run_dir, f, target), rec)
    finally:
        npz.unlink(missing_ok=True)
    return run_dir, rec


def add_rounds(rec: dict, m: timing.Measurement, name: str) -> dict:
    """The interleaved rounds into a record: p50_ms becomes the median of the per-round p50s;
    the rounds, their spread, the ratio against the teacher with its interval, and the
    machine's load go beside it."""
    lat = rec["latency_ms"]
    sp = m.summary(name)
    lat["p50_pooled_ms"] = lat["p50_ms"]  # the p50 of all samples of every round together
    lat["p50_ms"] = sp["p50_ms"]
    lat["p50_rounds_ms"] = m.p50s[name]
    lat["p50_spread"] = sp
    lat["noisy"] = sp["rel"] is not None and sp["rel"] > timing.NOISY_SPREAD
    rec["timing"] = {"design": timing.DESIGN, "rounds": m.rounds, "order": m.order,
                     "reference": m.reference, "noisy_threshold": timing.NOISY_SPREAD}
    if m.reference is not None and m.reference != name:
        rec["speedup_vs_teacher"] = m.ratio(name)
    elif m.reference == name:
        rec["speedup_vs_teacher"] = {"ratio": 1.0, "low": 1.0, "high": 1.0, "confidence": timing.CONFIDENCE,
                                     "rounds": len(m.p50s[name]), "verdict": "reference"}
    rec["machine_load"] = m.load
    return rec


class _Skip(Exception):
    """A cell that cannot run on this kind of target by design (not a failure)."""


def _host_twin(target: Target) -> Target:
    """The local CPU with few timed runs: computes an adb cell's accuracy from the same file."""
    from dataclasses import replace

    return replace(target, kind="local", device="cpu", warmup=1, min_runs=5, min_seconds=0.0,
                   batch_sizes=(1,), name=f"{target.name}-host")


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


def latest_run(out: Path = DEFAULT_OUT, target: str | None = None) -> Path:
    pattern = f"*__{target}.json" if target else "*__*.json"
    # by the newest record in each run: writing a report into an old run does not make it newer
    runs = sorted((p for p in Path(out).glob("*") if p.is_dir() and any(p.glob(pattern))),
                  key=lambda p: max(r.stat().st_mtime for r in p.glob(pattern)))
    if not runs:
        raise ArtifactError(f"no bench runs under {out}", hint="run `edgekd bench` first")
    return runs[-1]
