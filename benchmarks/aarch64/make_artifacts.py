#!/usr/bin/env python3
"""Make the small models and inputs that run.sh measures on x86 and on emulated aarch64.

Synthetic data only (never MovieLens). Writes, under WORK (outside the repo):
models/ (edgekd artifact store), eval.npz, manifest.json (the files, their sha256, versions).

    python benchmarks/aarch64/make_artifacts.py WORK
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

SYNTHETIC = {"users": 300, "items": 120, "mean_length": 15, "tastes": 6, "seed": 0}
MAXLEN = 30
EPOCHS = 3
FORMATS = ("tflite-fp32", "tflite-int8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(work: Path) -> int:
    from edgekd.runner import write_inputs
    from edgekd.data import DataSpec, load_data
    from edgekd.export import export
    from edgekd.train import TrainConfig, train_teacher

    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    store = work / "models"
    ds = load_data(DataSpec(synthetic=dict(SYNTHETIC)))
    teacher = train_teacher(ds, TrainConfig(model="sasrec-student", maxlen=MAXLEN, epochs=EPOCHS),
                            store=store, name="arm-teacher")
    models = {}
    for fmt in FORMATS:
        a = export(teacher, fmt, store=store, ds=ds, name=f"arm-{fmt}")
        models[fmt] = {"file": str(a.file), "sha256": sha256(a.file), "bytes": a.file.stat().st_size,
                       "artifact": a.name, "export": a.card.get("config", {}).get("export"),
                       "parity": a.metrics.get("parity", {})}
    _, npz = write_inputs(ds, MAXLEN, work / "eval.npz")
    manifest = {
        "data": {"synthetic": SYNTHETIC, "maxlen": MAXLEN, "users": len(ds.sequences),
                 "items": ds.num_items},
        "teacher": {"model": "sasrec-student", "epochs": EPOCHS, "artifact": teacher.name},
        "models": models,
        "inputs": {"file": str(npz), "sha256": sha256(npz)},
        "versions": {p: version(p) for p in ("edgekd", "torch", "litert-torch", "ai-edge-litert",
                                                 "ai-edge-quantizer", "numpy")},
        "seconds": round(time.time() - t0, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps({k: manifest[k] for k in ("data", "versions", "seconds")}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    sys.exit(main(Path(sys.argv[1])))
