"""Exports must load in tflite-runtime 2.14, what older devices run. It needs numpy < 2, so it
lives in its own venv ($EDGEKD_TFLRT_VENV, default /var/tmp/edgekd-tflite-runtime, made by
.ci/run or benchmarks/tflite_runtime_compat.py); the test skips when that venv is absent."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

VENV = Path(os.environ.get("EDGEKD_TFLRT_VENV", "/var/tmp/edgekd-tflite-runtime"))
PY = VENV / "bin" / "python"
pytestmark = pytest.mark.skipif(not PY.exists(), reason=f"no tflite-runtime venv at {VENV}")


@pytest.mark.parametrize("fmt", ["tflite-fp32", "tflite-int8"])
def test_exports_rank_the_same_in_tflite_runtime_2_14(fmt, tiny_student, tiny_ds, store, tmp_path):
    from edgekd.runner import RUNNER, write_inputs
    from edgekd.export import export

    e = export(tiny_student, fmt, store=store, ds=tiny_ds, name=f"compat-{fmt}")
    _, npz = write_inputs(tiny_ds, 20, tmp_path / "in.npz")
    tops = {}
    for rt, py in (("tflite-runtime", str(PY)), ("litert", None)):
        import sys
        out = tmp_path / f"{rt}.json"
        subprocess.run([py or sys.executable, str(RUNNER), "--model", str(e.file), "--runtime", rt, "--inputs",
                        str(npz), "--min-runs", "5", "--min-seconds", "0", "--out", str(out)], check=True,
                       capture_output=True, timeout=300)
        r = json.loads(out.read_text())
        assert r["runtime"] == rt.replace("litert", "ai-edge-litert")
        tops[rt] = np.array(r["topk"])[:, :10]
    assert (tops["tflite-runtime"] == tops["litert"]).all(1).mean() >= 0.99
