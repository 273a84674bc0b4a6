"""The host side of the device runner: the inputs it reads (the test split as an npz) and one
run of it on a target, for any artifact: ship the runner, the model and the inputs, run, bring
the JSON back. `bench` runs it for every cell; the quantize stage for its latencies."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .data import Dataset, pad_left
from .errors import BenchError, TargetError
from .evaluation import sample_users
from .targets import Target

RUNNER = Path(__file__).with_name("device_runner.py")
MODEL_CODE = Path(__file__).with_name("models.py")


def payload_kind(a: Artifact) -> str:
    return {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite", ".safetensors": "torch"}.get(a.file.suffix, "?")


def input_maxlen(a: Artifact) -> int:
    """The length of the id sequences the model reads, from its card's `input_spec` (the
    interface an app reads too): the one source the runner's inputs are built from."""
    return int(a.card["input_spec"][0]["shape"][1])


def write_inputs(ds: Dataset, maxlen: int, path: Path, users: int | None = None) -> tuple[np.ndarray, Path]:
    """The test split as the runner's npz: inputs and seen items; returns the targets too."""
    hist, targets = ds.eval_split("test")
    if users is not None and users < len(hist):
        idx = sample_users(len(hist), users)
        hist, targets = [hist[i] for i in idx], targets[idx]
    # Items to exclude from each ranking: those seen before, except the target itself (a
    # repeat is still a valid next item), the same protocol as metrics.full_ranks.
    seen = [np.setdiff1d(np.unique(h), [t]) for h, t in zip(hist, targets)]
    if ds.oov_index is not None:  # the out-of-vocabulary item is never recommended
        seen = [np.union1d(s, [ds.oov_index]) for s in seen]
    seen = pad_left(seen, max(1, max(len(s) for s in seen)))
    np.savez(path, inputs=pad_left(hist, maxlen).astype(np.int32), seen=seen.astype(np.int32))
    return targets, path


def runtime_for(a: Artifact, target: Target) -> str:
    kind = payload_kind(a)
    runtime = target.runtimes.get(kind)
    if runtime is None:
        raise BenchError(f"{a.name}: no runtime for {a.file.suffix} files on {target.name}")
    return runtime


def run_runner(a: Artifact, target: Target, inputs: Path, threads: int, transport=None) -> dict:
    """Ship the device runner, the model and the inputs to the target, run, bring the JSON back.
    The local CPU goes through the same steps, so every target measures the same way."""
    import posixpath

    if a.card.get("topk"):
        raise BenchError(f"{a.name}: a top-{a.card['topk']} export returns no full scores, so accuracy with "
                         "seen items excluded cannot be computed from it; bench the full-score export")
    tr = transport or target.transport()
    runtime = runtime_for(a, target)
    python = sys.executable if target.kind == "local" else target.python
    with tr.workdir() as wd:
        j = lambda name: posixpath.join(wd, name)  # noqa: E731
        tr.put(RUNNER, j("device_runner.py"))
        tr.put(a.file, j("model" + a.file.suffix))
        tr.put(inputs, j("inputs.npz"))
        argv = ["env", f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}",
                f"OPENBLAS_NUM_THREADS={threads}", "TF_CPP_MIN_LOG_LEVEL=2",
                python, j("device_runner.py"), "--model", j("model" + a.file.suffix), "--runtime", runtime,
                "--inputs", j("inputs.npz"), "--threads", str(threads), "--warmup", str(target.warmup),
                "--min-runs", str(target.min_runs), "--min-seconds", str(target.min_seconds),
                "--batch-sizes", ",".join(map(str, target.batch_sizes)), "--device", target.device,
                "--out", j("result.json")]
        if payload_kind(a) == "torch":
            tr.put(a.path / "artifact.json", j("artifact.json"))
            tr.put(MODEL_CODE, j("models.py"))
            argv += ["--card", j("artifact.json"), "--code", j("models.py")]
        p = tr.run(argv, timeout=target.timeout_s)
        err = p.stderr.decode(errors="replace").strip().splitlines()
        if p.returncode == 3 and err and err[-1].startswith("device unavailable"):
            raise TargetError(f"{target.name}: {err[-1]}")
        if p.returncode != 0:
            raise BenchError(f"{a.name}: the runner failed on {target.name} (exit {p.returncode}): "
                             f"{err[-1] if err else 'no output'}")
        return json.loads(tr.get(j("result.json")))
