"""Parity: an exported file run in its own runtime against its torch parent on validation
sequences (and the in-graph top-K head, checked against torch's top-K); the validation
sequences quantisation recipes are calibrated on."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..evaluation import eval_inputs, model_scores
from ..metrics import chunk_users, evaluate_scores
from .base import _quiet


# fp32 parity: the export must rank like its parent on validation users.
FP32_MIN_TOP10_OVERLAP = 0.99
FP32_MAX_ABS_DIFF = 1e-3

class TopKHead(nn.Module):
    """The model followed by top-K in the graph: returns the K best item indices (int32,
    column indices into vocab.json's items) and their scores, best first, instead of a score
    per item. Seen items are not excluded in the graph; an app filters them."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, int(k)
        self.maxlen = model.maxlen

    def forward(self, ids: torch.Tensor):
        values, idx = torch.topk(self.model(ids), self.k, dim=-1)
        return idx.to(torch.int32), values

    def with_int8_tables(self) -> "TopKHead":
        return TopKHead(self.model.with_int8_tables(), self.k)


def run_all_outputs(file: Path, ids: np.ndarray, rows: int | None = None) -> dict[str, np.ndarray]:
    """Every output of an exported model, by dtype kind ('items' int, 'scores' float), `rows`
    sequences per call (all at once by default; one at a time where the batch is fixed)."""
    if file.suffix in (".onnx", ".ort"):
        import onnxruntime as ort

        s = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        name, step = s.get_inputs()[0].name, rows or max(len(ids), 1)
        parts = [s.run(None, {name: ids[i:i + step].astype(np.int32)}) for i in range(0, len(ids), step)]
        outs = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
    else:
        from ..device_runner import _tflite_interpreter

        cls, _, _ = _tflite_interpreter("auto")
        it = cls(model_path=str(file))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        rows = []
        for r in ids:
            it.set_tensor(inp["index"], r[None].astype(np.int32))
            it.invoke()
            rows.append([it.get_tensor(o["index"]) for o in it.get_output_details()])
        outs = [np.concatenate([row[j] for row in rows]) for j in range(len(rows[0]))]
    return {("items" if np.issubdtype(o.dtype, np.integer) else "scores"): o for o in outs}


def topk_parity(parent: nn.Module, file: Path, ds: Dataset, k: int, users: int | None = 1000) -> dict:
    """The in-graph top-K against torch's top-K of the parent's full scores."""
    x, _, _ = eval_inputs(ds, "valid", parent.maxlen, users)
    step = chunk_users(ds.num_items)  # a chunk of users at a time: never users x items whole
    # (a copy of each chunk's first k columns: a slice would keep the chunk's whole argsort alive)
    ref = np.concatenate([np.argsort(-model_scores(parent, x[i:i + step]), axis=1, kind="stable")[:, :k].copy()
                          for i in range(0, len(x), step)])
    got = run_all_outputs(file, x, rows=step)["items"]
    same = (got == ref).all(1)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got.tolist(), ref.tolist())])
    return {"split": "valid", "users": int(len(x)), "k": k, "identical_topk_users": float(same.mean()),
            "topk_overlap": float(overlap)}


# ---------------------------------------------------------------- the stage

def parity(parent: nn.Module, file: Path, ds: Dataset, users: int | None = 1000) -> dict:
    """Compare an exported file with its torch parent on validation sequences."""
    from ..device_runner import load_model, run_batched

    x, targets, hist = eval_inputs(ds, "valid", parent.maxlen, users)
    with _quiet():  # TFLite announces its XNNPACK delegate on stderr
        exported = load_model(str(file), "auto", threads=os.cpu_count() or 1)
    diff, step = 0.0, chunk_users(ds.num_items)  # a chunk of users at a time: never users x items whole
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        diff = max(diff, float(np.max(np.abs(run_batched(exported, chunk) - model_scores(parent, chunk)))))
    ref, ref_top = evaluate_scores(lambda b: model_scores(parent, b), x, targets, hist, sampled=False,
                                   never=ds.oov_index, num_items=ds.num_items)
    got, _ = evaluate_scores(lambda b: run_batched(exported, b), x, targets, hist, sampled=False,
                             reference_topk=ref_top, never=ds.oov_index, num_items=ds.num_items)
    return {
        "split": "valid", "users": int(len(x)),
        "max_abs_diff": diff,
        "top10_overlap": got["top10_overlap"],
        "ndcg@10": got["ndcg@10"], "parent_ndcg@10": ref["ndcg@10"],
        "ndcg@10_rel_change": (got["ndcg@10"] - ref["ndcg@10"]) / ref["ndcg@10"] if ref["ndcg@10"] else 0.0,
        "hr@10": got["hr@10"], "parent_hr@10": ref["hr@10"],
        "runtime": exported.runtime, "runtime_version": exported.version,
    }


CALIBRATION_SEQUENCES = 256


def calibration_inputs(ds: Dataset, maxlen: int, n: int = CALIBRATION_SEQUENCES) -> np.ndarray:
    """Real validation sequences (a fixed sample) for calibrating activation ranges."""
    x, _, _ = eval_inputs(ds, "valid", maxlen, n, seed=1)
    return x
