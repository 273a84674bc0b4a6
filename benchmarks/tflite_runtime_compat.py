#!/usr/bin/env python3
"""Do edgekd's .tflite exports load and rank the same in tflite-runtime 2.14 (what older
devices run; it needs numpy < 2, so it lives in its own venv) as in ai-edge-litert?

    python benchmarks/tflite_runtime_compat.py models/X-tflite-fp32 models/X-tflite-int8 ...

Makes (once) a venv at $EDGEKD_TFLRT_VENV (default /var/tmp/edgekd-tflite-runtime) with
tflite-runtime==2.14.0 and numpy<2, runs the device runner there and here on the same file and
inputs, and compares each user's top-10.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekd.artifact import load_artifact
from edgekd.runner import RUNNER, input_maxlen, write_inputs
from edgekd.torch_io import dataset_for

VENV = Path(os.environ.get("EDGEKD_TFLRT_VENV", "/var/tmp/edgekd-tflite-runtime"))


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2"], check=True)
    return py


def run(python: str, model: Path, runtime: str, npz: Path, out: Path) -> dict:
    subprocess.run([python, str(RUNNER), "--model", str(model), "--runtime", runtime, "--inputs", str(npz),
                    "--min-runs", "50", "--min-seconds", "0.2", "--out", str(out)], check=True,
                   capture_output=True)
    return json.loads(out.read_text())


def main() -> int:
    py = ensure_venv()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as d:
        for path in sys.argv[1:]:
            a = load_artifact(path)
            npz = Path(d) / "inputs.npz"
            write_inputs(dataset_for(a), input_maxlen(a), npz)
            old = run(str(py), a.file, "tflite-runtime", npz, Path(d) / "old.json")
            new = run(sys.executable, a.file, "litert", npz, Path(d) / "new.json")
            t_old, t_new = np.array(old["topk"])[:, :10], np.array(new["topk"])[:, :10]
            same = float((t_old == t_new).all(1).mean())
            rows.append({"artifact": a.name, "format": a.format,
                         "tflite_runtime": old["runtime_version"], "litert": new["runtime_version"],
                         "numpy_old": old["device"]["numpy"], "identical_top10_users": same,
                         "p50_ms_tflite_runtime": old["latency"]["p50_ms"], "p50_ms_litert": new["latency"]["p50_ms"]})
            print(json.dumps(rows[-1]), flush=True)
            ok &= same >= 0.99
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
