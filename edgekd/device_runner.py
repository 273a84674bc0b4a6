#!/usr/bin/env python3
"""edgekd device runner: measures one model file on the machine it runs on.

Standalone on purpose: standard library + numpy + one runtime (ONNX Runtime, LiteRT /
tflite-runtime, or torch), never edgekd itself, so the same file can be copied to a Raspberry
Pi or run locally and every target measures the same way.

    python device_runner.py --model model.onnx --inputs eval.npz --threads 1 --out result.json

eval.npz holds `inputs` [users, maxlen] item indices (left-padded with 0) and `seen`
[users, max_seen] (0-padded) item indices to exclude from each user's ranking. The result is
JSON: latency percentiles at batch 1, cold start, peak resident memory beside the runtime's own
baseline, and each user's top-K item indices, from which the host computes accuracy.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

RUNNER_VERSION = 3


# ---------------------------------------------------------------- memory

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set of this process: VmHWM where /proc exists, else ru_maxrss."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)
    return kib * 1024


# ---------------------------------------------------------------- the device's state

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def device_state() -> dict:
    """What was true of the device while it ran: CPU, governor, frequency, temperature and, on a
    Raspberry Pi, the firmware's throttling flags."""
    import shutil
    import subprocess

    cpu = None
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "Processor"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                cpu = line.split(":", 1)[1].strip()
                break
        if cpu:
            break
    state = {
        "machine": platform.machine(), "system": platform.system(), "release": platform.release(),
        "hostname": platform.node(), "cpu": cpu or platform.processor() or None,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cur_freq_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        "max_freq_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
    }
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    state["temperature_c"] = int(temp) / 1000 if temp and temp.lstrip("-").isdigit() else None
    state["throttled"] = None
    if shutil.which("vcgencmd"):  # Raspberry Pi firmware: 0x0 means never throttled
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
            state["throttled"] = out.stdout.strip().split("=")[-1] or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return state


# ---------------------------------------------------------------- runtimes

class DeviceUnavailable(RuntimeError):
    """The requested device (a GPU) is not there: the host reports the target unreachable."""


class OnnxModel:
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int, device: str = "cpu"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceUnavailable("ONNX Runtime has no CUDAExecutionProvider here "
                                        f"(available: {', '.join(ort.get_available_providers())})")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, so, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise DeviceUnavailable("ONNX Runtime could not start its CUDA provider")
        # session.run copies outputs to host memory before it returns: timings include the sync
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # A top-K graph (export --topk) returns item indices (integers) beside their scores: the
        # indices are what it is run for.
        outs = self.session.get_outputs()
        ints = [i for i, o in enumerate(outs) if o.type in ("tensor(int32)", "tensor(int64)")]
        self.topk_graph = len(outs) == 2 and len(ints) == 1
        self.out_index = ints[0] if self.topk_graph else 0
        self.dtype = np.int64 if "int64" in inp.type else np.int32
        batch = inp.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.version = ort.__version__

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: ids.astype(self.dtype, copy=False)})[self.out_index]


class TFLiteModel:
    def __init__(self, path: str, threads: int, prefer: str = "auto"):
        interp_cls, self.runtime, self.version = _tflite_interpreter(prefer)
        self.interp = interp_cls(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        outs = self.interp.get_output_details()
        # a top-K graph: its item indices (see OnnxModel); int8 scores of a quantised model are not
        ints = [o for o in outs if o["dtype"] in (np.int32, np.int64)]
        self.topk_graph = len(outs) == 2 and len(ints) == 1
        self.out = ints[0] if self.topk_graph else outs[0]
        self.dtype = self.inp["dtype"]
        self.fixed_batch = int(self.inp["shape"][0])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], ids.astype(self.dtype, copy=False))
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])


def _tflite_interpreter(prefer: str):
    """ai-edge-litert, falling back to tflite-runtime (what older devices have)."""
    errors = []
    order = {"litert": ["litert"], "tflite-runtime": ["tflite-runtime"]}.get(prefer, ["litert", "tflite-runtime"])
    for name in order:
        try:
            if name == "litert":
                from ai_edge_litert.interpreter import Interpreter
                from importlib.metadata import version

                return Interpreter, "ai-edge-litert", version("ai-edge-litert")
            from tflite_runtime.interpreter import Interpreter
            import tflite_runtime

            return Interpreter, "tflite-runtime", getattr(tflite_runtime, "__version__", "?")
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise RuntimeError("no TFLite runtime: " + "; ".join(errors))


class TorchModel:
    runtime = "torch"

    def __init__(self, path: str, threads: int, card_path: str, code_path: str, device: str = "cpu"):
        import torch
        from safetensors.torch import load_file

        if device == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable("torch sees no CUDA device")
        torch.set_num_threads(threads)
        self.device = device
        spec = importlib.util.spec_from_file_location("edgekd_models_standalone", code_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        with open(card_path) as f:
            card = json.load(f)
        self.model = module.create_model(card["arch"], **card["arch_kwargs"]).eval()
        self.model.load_state_dict(load_file(path), strict=True)
        self.model.to(device)
        self.torch = torch
        self.dtype = np.int64
        self.fixed_batch = None
        self.version = torch.__version__

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            x = self.torch.from_numpy(ids.astype(np.int64, copy=False)).to(self.device)
            y = self.model(x)
            if self.device == "cuda":
                self.torch.cuda.synchronize()  # CUDA runs asynchronously: time the finished work
            return y.cpu().numpy()


def load_model(path: str, runtime: str, threads: int, card: str | None = None, code: str | None = None,
               device: str = "cpu"):
    if runtime == "auto":
        runtime = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".tflite": "tflite",
                   ".safetensors": "torch"}.get(os.path.splitext(path)[1], "")
    if runtime == "onnxruntime":
        return OnnxModel(path, threads, device)
    if runtime in ("tflite", "litert", "tflite-runtime"):
        if device != "cpu":
            raise DeviceUnavailable(f"the TFLite runtime here runs on the CPU only, not {device}")
        return TFLiteModel(path, threads, prefer=runtime)
    if runtime == "torch":
        if not card or not code:
            raise ValueError("the torch runtime needs --card (artifact.json) and --code (models.py)")
        return TorchModel(path, threads, card, code, device)
    raise ValueError(f"unknown runtime {runtime!r} for {path}")


def run_batched(model, ids: np.ndarray, batch: int = 256) -> np.ndarray:
    """Scores for every row of `ids`, in batches the model accepts."""
    step = model.fixed_batch or batch
    out = []
    for i in range(0, len(ids), step):
        chunk = ids[i:i + step]
        if model.fixed_batch and len(chunk) < step:  # pad a fixed-batch model's last chunk
            pad = np.zeros((step - len(chunk), ids.shape[1]), dtype=ids.dtype)
            out.append(model(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            out.append(model(chunk))
    return np.concatenate(out)


# Scores held at once by topk_batched (64 MB of float32), whatever the catalogue: metrics.py's
# MAX_CHUNK_SCORES, restated because this file runs alone on devices.
SCORE_CHUNK = 1 << 24


def topk_batched(model, ids: np.ndarray, seen: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """masked_topk of every row's scores, computed a chunk of rows at a time: memory for one
    chunk's scores (SCORE_CHUNK entries), never users x items (31k users x 15k items would be
    1.9 GB of scores and several times that to sort)."""
    if not len(ids):
        return np.zeros((0, k), dtype=np.int64)
    if getattr(model, "topk_graph", False):  # the graph ranked already: its lists, seen items left out
        return unseen_of(run_batched(model, ids).astype(np.int64) + 1, seen, k)
    # One call (a row, or a fixed batch) learns the catalogue's width; then as many rows a call
    # as SCORE_CHUNK allows (at most `batch`; whole fixed batches).
    step = model.fixed_batch or 1
    first = run_batched(model, ids[:step])
    rows = max(step, min(batch, SCORE_CHUNK // max(1, first.shape[1])) // step * step)
    tops = [masked_topk(first, seen[:step], k)]
    for i in range(step, len(ids), rows):
        tops.append(masked_topk(run_batched(model, ids[i:i + rows], batch=rows), seen[i:i + rows], k))
    return np.concatenate(tops)


def unseen_of(items: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """A top-K graph's lists (1-based items, best first) without each row's seen items, cut to
    k and 0-padded: what an app shows from them (a graph of K items leaves fewer than k unseen
    when the history takes places in its top-K)."""
    out = np.zeros((len(items), k), dtype=np.int64)
    for r, (row, s) in enumerate(zip(items, seen)):
        drop = set(int(i) for i in s if i > 0)
        keep = [int(i) for i in row if int(i) not in drop][:k]
        out[r, :len(keep)] = keep
    return out


BLOCK = 1024  # masked_topk's prefilter: columns a block


def top_blocks(s: np.ndarray, k: int) -> np.ndarray | None:
    """Columns of each row of `s` that hold a top-k of it: the columns of the k blocks (BLOCK
    columns each) with the largest maxima, and the columns after the last whole block. An item
    outside them is at most the k-th largest of those maxima, which are all candidates, so a
    top-k of the candidates is a top-k of the row. NaN is ignored in a block's maximum (a block
    of NaN only sorts last). One pass over the row instead of a partition of it: at a million
    items the partition was 72% of a runner's accuracy pass. None when rows are too short for
    it to pay (under 4k whole blocks)."""
    whole = s.shape[1] // BLOCK
    if whole < 4 * k:
        return None
    peak = np.fmax.reduce(s[:, :whole * BLOCK].reshape(len(s), whole, BLOCK), axis=2)
    best = np.argpartition(-peak, k - 1, axis=1)[:, :k]
    cols = (best[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(len(s), -1)
    tail = np.broadcast_to(np.arange(whole * BLOCK, s.shape[1]), (len(s), s.shape[1] - whole * BLOCK))
    return np.concatenate([cols, tail], axis=1)


def masked_topk(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    """1-based item indices of the k best items not in `seen` (0-padded), best first (ties in
    no set order; NaN last)."""
    s = np.array(scores, dtype=np.float32, copy=True)
    rows = np.repeat(np.arange(len(s)), seen.shape[1])
    cols = seen.reshape(-1) - 1
    ok = cols >= 0
    s[rows[ok], cols[ok]] = -np.inf
    k = min(k, s.shape[1])
    cand = top_blocks(s, k)
    if cand is not None:
        s = np.take_along_axis(s, cand, 1)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, 1)
    return (top if cand is None else np.take_along_axis(cand, top, 1)) + 1


# ---------------------------------------------------------------- measurement

def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "runs": int(len(a))}


def time_batch1(model, rows: np.ndarray, warmup: int, min_runs: int, min_seconds: float,
                max_runs: int) -> list[float]:
    for i in range(warmup):
        model(rows[i % len(rows)][None])
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_seconds):
        x = rows[len(samples) % len(rows)][None]
        t0 = time.perf_counter_ns()
        model(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def time_batches(model, rows: np.ndarray, sizes: list[int], min_runs: int, min_seconds: float,
                 max_runs: int) -> dict:
    """Latency percentiles and throughput for each batch size the model accepts."""
    out = {}
    for b in sizes:
        if b == 1:
            continue
        if model.fixed_batch and model.fixed_batch != b:
            out[str(b)] = {"skipped": f"the model's batch dimension is fixed at {model.fixed_batch}"}
            continue
        reps = -(-b // len(rows))
        batch = np.concatenate([rows] * reps)[:b]
        model(batch)  # warm-up for this shape
        samples = []
        start = time.perf_counter()
        while len(samples) < max_runs and (len(samples) < max(10, min_runs // 10)
                                           or time.perf_counter() - start < min_seconds / 3):
            t0 = time.perf_counter_ns()
            model(batch)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        p = percentiles(samples)
        p["items_per_s"] = b / (p["p50_ms"] / 1e3)
        out[str(b)] = p
    return out


def serve(model, rows: np.ndarray, args) -> list[dict] | None:
    """Rounds on request: the host sends `round`, this times one round of batch-1 runs and prints
    one line `EDGEKD {"round": {...}}`; `finish` returns the rounds (with their samples) for the
    full result, `stop` or the end of stdin returns None."""
    for i in range(args.warmup):
        model(rows[i % len(rows)][None])
    _say({"ready": True})
    rounds = []
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "round":
            s = time_batch1(model, rows, min(args.warmup, 5), args.min_runs, args.min_seconds, args.max_runs)
            p = percentiles(s)
            _say({"round": p})
            rounds.append({**p, "samples": s})
        elif cmd == "finish":
            return rounds
        elif cmd == "stop":
            return None
    return None


def _say(obj: dict) -> None:
    sys.stdout.write("EDGEKD " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--runtime", default="auto",
                    choices=["auto", "onnxruntime", "tflite", "litert", "tflite-runtime", "torch"])
    ap.add_argument("--inputs", required=True, help="npz with `inputs` and `seen`")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--min-runs", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-runs", type=int, default=20000)
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes to sweep, e.g. 1,8,32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--card", help="artifact.json (torch runtime)")
    ap.add_argument("--code", help="models.py (torch runtime)")
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    ap.add_argument("--serve", action="store_true",
                    help="load once, then time one round per `round` line on stdin (the host times "
                         "several files in turns); `finish` writes the result, `stop` exits")
    args = ap.parse_args(argv)

    data = np.load(args.inputs, allow_pickle=False)
    inputs, seen = data["inputs"], data["seen"]
    rss_start = peak_rss_bytes()

    # The runtime's own baseline: the same process with the runtime imported, no model.
    if args.runtime == "torch" or args.model.endswith(".safetensors"):
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    elif args.model.endswith((".onnx", ".ort")):
        import onnxruntime  # noqa: F401
    else:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            import tflite_runtime.interpreter  # noqa: F401
    baseline = peak_rss_bytes()

    t0 = time.perf_counter()
    try:
        model = load_model(args.model, args.runtime, args.threads, args.card, args.code, args.device)
    except DeviceUnavailable as e:
        sys.stderr.write(f"device unavailable: {e}\n")
        return 3
    load_ms = (time.perf_counter() - t0) * 1e3
    t1 = time.perf_counter()
    model(inputs[:1])
    first_ms = (time.perf_counter() - t1) * 1e3

    rows = inputs[: min(len(inputs), 256)]
    rounds = None
    if args.serve:
        rounds = serve(model, rows, args)
        if rounds is None:  # asked to stop (or the host went away): no result
            return 0
        lat = [x for r in rounds for x in r.pop("samples")]
        if not lat:  # finished before any round: one round now, so the result has latency
            lat = time_batch1(model, rows, args.warmup, args.min_runs, args.min_seconds, args.max_runs)
    else:
        lat = time_batch1(model, rows, args.warmup, args.min_runs, args.min_seconds, args.max_runs)
    peak = peak_rss_bytes()  # after batch-1 inference, before the accuracy pass batches up
    sweep = time_batches(model, inputs[: min(len(inputs), 256)],
                         [int(b) for b in args.batch_sizes.split(",") if b.strip()],
                         args.min_runs, args.min_seconds, args.max_runs)

    t2 = time.perf_counter()
    top = topk_batched(model, inputs, seen, args.topk)
    eval_s = time.perf_counter() - t2

    result = {
        "runner_version": RUNNER_VERSION,
        "runtime": model.runtime, "runtime_version": model.version,
        "threads": args.threads, "batch": 1, "device_kind": args.device,
        "latency": percentiles(lat), "rounds": rounds, "batch_sweep": sweep,
        "cold_start_ms": load_ms + first_ms, "load_ms": load_ms, "first_inference_ms": first_ms,
        "peak_rss_bytes": peak, "baseline_rss_bytes": baseline, "python_start_rss_bytes": rss_start,
        "eval_users": int(len(inputs)), "eval_seconds": eval_s,
        "topk": top.astype(int).tolist(), "topk_graph": bool(getattr(model, "topk_graph", False)),
        "device": device_state(),
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
