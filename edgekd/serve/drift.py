"""Drift of a served student against its own behaviour on validation users.

The reference (drift_reference.json in the artifact directory, listed on the card as
`drift_reference`) holds two distributions measured on the validation users' histories with
seen items excluded, as the server ranks: the top-1 score (in bins cut at the reference's
deciles) and the popularity of the top-10 recommended items (items in deciles of their
training-interaction count rank; bin 0 holds the most popular tenth of the catalogue). The
server keeps the same distributions over a window of recent requests and exposes the
population stability index (PSI) of each against the reference.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path

import numpy as np

REFERENCE = "drift_reference.json"
SCHEMA = 1
POPULARITY_BINS = 10
TOP1_QUANTILES = np.linspace(0.1, 0.9, 9)
K = 10
EPS = 1e-4  # a bin's share is floored here so that an empty bin does not make PSI infinite


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored at EPS."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def popularity_bins(counts: np.ndarray, bins: int = POPULARITY_BINS) -> np.ndarray:
    """The popularity bin of each item (0 = the most popular tenth), from interaction counts."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return (rank * bins // max(1, len(order))).astype(np.int64)


def shares(values: np.ndarray, bins: int) -> list[float]:
    c = np.bincount(np.asarray(values, dtype=np.int64), minlength=bins)[:bins].astype(np.float64)
    return (c / max(1.0, c.sum())).tolist()


def compute_reference(served, ds, users: int | None = 2000) -> dict:
    """The served model's distributions on the dataset's validation users."""
    from ..evaluation import eval_inputs

    from .runtime import Encoded

    x, _, hist = eval_inputs(ds, "valid", served.maxlen, users)
    counts = np.bincount(np.concatenate(ds.train_sequences()), minlength=ds.num_items + 1)[1:]
    item_bin = popularity_bins(counts)
    enc = [Encoded(row, sorted(set(h.tolist()) - {served.oov_index}), len(h), 0) for row, h in zip(x, hist)]
    top1, pop = [], []
    k = min(K, served.max_k)
    for i in range(0, len(enc), 256):
        for r in served.recommend(enc[i:i + 256], k):
            if r.scores:
                top1.append(r.scores[0])
                pop.extend(item_bin[np.asarray(r.indices) - 1].tolist())
    top1 = np.asarray(top1)
    cuts = np.unique(np.quantile(top1, TOP1_QUANTILES)).tolist()
    return {
        "schema": SCHEMA, "artifact": {"name": served.name, "sha256": served.sha256},
        "split": "valid", "users": int(len(enc)), "k": k,
        "top1_score": {"cuts": cuts, "shares": shares(np.searchsorted(cuts, top1, side="right"), len(cuts) + 1)},
        "popularity": {"bins": POPULARITY_BINS, "item_bins": item_bin.tolist(),
                       "shares": shares(np.asarray(pop), POPULARITY_BINS),
                       "meaning": "bin of items[i] by training-interaction count rank; 0 = most popular tenth"},
    }


def attach_reference(a, ds, users: int | None = 2000):
    """Compute the artifact's drift reference and write it beside its payload (listed on the card)."""
    from .runtime import ServedModel

    ref = compute_reference(ServedModel(a), ds, users)
    tmp = a.path / (REFERENCE + ".tmp")
    tmp.write_text(json.dumps(ref) + "\n")
    tmp.replace(a.path / REFERENCE)
    a.update_card(drift_reference=REFERENCE)
    return a


def load_reference(a) -> dict | None:
    name = a.card.get("drift_reference") or (REFERENCE if (a.path / REFERENCE).is_file() else None)
    if not name or not (a.path / name).is_file():
        return None
    ref = json.loads((Path(a.path) / name).read_text())
    if ref.get("artifact", {}).get("sha256") != a.sha256:
        return None  # the reference of another payload
    return ref


class DriftMonitor:
    """PSI of recent requests' top-1 score and recommended items' popularity against a reference."""

    def __init__(self, ref: dict, window: int = 1000, min_requests: int = 100):
        self.ref = ref
        self.cuts = np.asarray(ref["top1_score"]["cuts"], dtype=np.float64)
        self.top1_ref = np.asarray(ref["top1_score"]["shares"])
        self.item_bin = np.asarray(ref["popularity"]["item_bins"], dtype=np.int64)
        self.pop_ref = np.asarray(ref["popularity"]["shares"])
        self.k = int(ref.get("k", K))
        self.top1 = deque(maxlen=window)
        self.pop = deque(maxlen=window * self.k)
        self.min_requests = min_requests
        self._lock = threading.Lock()

    def observe(self, scores: list[float], indices: list[int]) -> None:
        if not scores:
            return
        with self._lock:
            self.top1.append(int(np.searchsorted(self.cuts, scores[0], side="right")))
            ix = np.asarray(indices[: self.k], dtype=np.int64) - 1
            ix = ix[(ix >= 0) & (ix < len(self.item_bin))]
            self.pop.extend(self.item_bin[ix].tolist())

    def index(self) -> dict[str, float] | None:
        """PSI per signal over the window, or None until min_requests have been seen."""
        with self._lock:
            if len(self.top1) < self.min_requests:
                return None
            t = np.bincount(np.fromiter(self.top1, np.int64), minlength=len(self.top1_ref))
            p = np.bincount(np.fromiter(self.pop, np.int64), minlength=len(self.pop_ref))
        return {"top1_score": psi(self.top1_ref, t / t.sum()),
                "popularity": psi(self.pop_ref, p / max(1, p.sum()))}

    @property
    def observations(self) -> int:
        return len(self.top1)
