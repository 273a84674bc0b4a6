"""The host side of the device runner: the inputs it reads (the test split as an npz), one
run of it on a target, and files timed against each other in interleaved rounds of warm runner
processes (edgekd.timing), for any artifact. `bench` runs it for every cell; the quantize and
prune stages for their latency gates."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import timing
from .artifact import Artifact
from .data import Dataset, pad_left
from .errors import BenchError, TargetError
from .evaluation import sample_users
from .targets import Target, load_target

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


def _stage(a: Artifact, target: Target, tr, wd: str, inputs: Path, threads: int) -> tuple[list[str], str]:
    """Ship the device runner, the model and the inputs into `wd`; the runner's argv and where
    its result will be."""
    import posixpath

    runtime = runtime_for(a, target)
    python = sys.executable if target.kind == "local" else target.python
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
        # the card as the artifact object holds it: one the prune stage times before saving
        # it is not on disk yet
        with tempfile.TemporaryDirectory(prefix="edgekd-card-") as d:
            card = Path(d) / "artifact.json"
            card.write_text(json.dumps(a.card))
            tr.put(card, j("artifact.json"))
        tr.put(MODEL_CODE, j("models.py"))
        argv += ["--card", j("artifact.json"), "--code", j("models.py")]
    return argv, j("result.json")


def run_runner(a: Artifact, target: Target, inputs: Path, threads: int, transport=None) -> dict:
    """Ship the device runner, the model and the inputs to the target, run once, bring the JSON
    back. The local CPU goes through the same steps, so every target measures the same way.
    (A fresh process, one measurement: bench and the gates time in rounds, `time_artifacts`.)"""
    tr = transport or target.transport()
    with tr.workdir() as wd:
        argv, result = _stage(a, target, tr, wd, inputs, threads)
        p = tr.run(argv, timeout=target.timeout_s)
        err = p.stderr.decode(errors="replace").strip().splitlines()
        if p.returncode == 3 and err and err[-1].startswith("device unavailable"):
            raise TargetError(f"{target.name}: {err[-1]}")
        if p.returncode != 0:
            raise BenchError(f"{a.name}: the runner failed on {target.name} (exit {p.returncode}): "
                             f"{err[-1] if err else 'no output'}")
        return json.loads(tr.get(result))


def time_artifacts(cells: list[tuple[Artifact, Path]], target: Target, threads: int, *,
                   rounds: int = timing.DEFAULT_ROUNDS, reference: int | None = 0, finish: bool = False,
                   names: list[str] | None = None) -> tuple[timing.Measurement, dict]:
    """Time files against each other in interleaved rounds (edgekd.timing), one warm runner
    process per file on `target`. `cells`: (artifact, inputs npz). Returns the measurement
    (keyed by `names`, default the artifact names) and, with `finish`, each cell's full runner
    result (accuracy outputs, memory, batch sweep) or the error that stopped it. The machine's
    load while it ran is in `measurement.load`."""
    import contextlib

    names = names or [a.name for a, _ in cells]
    if len(set(names)) != len(names):
        raise BenchError("time_artifacts: two cells with the same name; pass distinct `names`")
    tr = target.transport()
    procs: dict[str, timing.RunnerProcess] = {}
    results: dict[str, dict | str] = {}
    where: dict[str, str] = {}
    load = timing.MachineLoad().start()
    with contextlib.ExitStack() as stack:
        try:
            for name, (a, npz) in zip(names, cells):
                try:
                    wd = stack.enter_context(tr.workdir())
                    argv, where[name] = _stage(a, target, tr, wd, npz, threads)
                    procs[name] = timing.RunnerProcess(tr._cmd(argv + ["--serve"]), f"{a.name} on {target.name}",
                                                       target.timeout_s, check_link=tr._check_link)
                except (BenchError, TargetError) as e:
                    results[name] = str(e)
            for name in list(procs):  # all loading at once; then wait for each
                try:
                    procs[name].wait_ready()
                except (BenchError, TargetError) as e:
                    results[name] = str(e)
                    procs.pop(name).kill()
            m = timing.interleave(procs, rounds, reference=names[reference] if reference is not None else None)
            for name, err in m.errors.items():
                results[name] = err
                procs.pop(name).kill()
            if finish:
                for name, p in procs.items():
                    try:
                        p.finish()
                        results[name] = json.loads(tr.get(where[name]))
                    except (BenchError, TargetError) as e:
                        results[name] = str(e)
            else:
                for p in procs.values():
                    p.send("stop")
        finally:
            for p in procs.values():
                p.kill()
    m.errors.update({n: r for n, r in results.items() if isinstance(r, str)})
    m.load = load.stop()
    return m, results


def _time_files(cells: list[tuple[Artifact, object]], names: list[str], threads: int, users: int,
                rounds: int):
    """Time files against the first in interleaved rounds on the local CPU (edgekd.timing, through
    the device runner, as bench does), each on its own dataset's test inputs."""
    # per round: at least 100 runs and 0.3 s; the rounds together time each file as long as one
    # 1.5 s measurement did
    target = replace(load_target("local-cpu"), threads=threads, min_runs=100, min_seconds=0.3, batch_sizes=(1,))
    with tempfile.TemporaryDirectory() as d:
        npz = []
        for k, (a, ds) in enumerate(cells):
            npz.append(write_inputs(ds, input_maxlen(a), Path(d) / f"in{k}.npz", users)[1])
        m, _ = time_artifacts([(a, f) for (a, _), f in zip(cells, npz)], target, threads, rounds=rounds,
                              reference=0, names=names)
    return m


def _latency_gate(m, name: str) -> dict:
    """A cell's latency beside the reference: median p50, spread, speed-up with its interval and
    the verdict ("slower" only when the interval excludes 1.0)."""
    iv = m.ratio(name)
    return {"p50_ms": m.summary(name)["p50_ms"], "p50_rounds_ms": m.p50s[name], "p50_spread": m.summary(name),
            "speedup": iv["ratio"], "speedup_interval": [iv["low"], iv["high"]], "latency_verdict": iv["verdict"],
            "not_slower": iv["verdict"] != "slower"}
