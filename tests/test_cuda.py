"""The CUDA target: ONNX Runtime's CUDA provider and torch on CUDA, synchronised. It runs for real
where there is a GPU and skips with the reason where there is none; without one, the target
reports itself unreachable (exit 3), never a traceback."""
import os
import subprocess
import sys

import pytest


def has_cuda() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    try:
        import onnxruntime as ort
        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


CUDA = has_cuda()


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine (torch sees none, ONNX Runtime has no CUDA provider)")
def test_bench_on_the_gpu(tiny_student, tiny_ds, store, tmp_path):
    from edgekd.bench import bench
    from edgekd.export import export
    from edgekd.targets import load_target

    e = export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, name="cuda-onnx")
    _, recs = bench([e], load_target("cuda"), out=tmp_path, teacher=tiny_student)
    for r in recs:
        assert r["status"] == "ok", r.get("error")
        assert r["target"]["device"] == "cuda" and r["latency_ms"]["p50_ms"] > 0
    assert recs[0]["accuracy"]["ndcg@10"] == pytest.approx(recs[1]["accuracy"]["ndcg@10"], abs=2e-3)


@pytest.mark.skipif(CUDA, reason="this machine has a GPU: the unreachable case cannot be shown here")
def test_without_a_gpu_the_cuda_target_is_unreachable():
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "edgekd", "targets", "check", "cuda"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 3
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0]
