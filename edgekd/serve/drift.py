"""Drift of a served student against its own behaviour on validation users: the server keeps
the reference's two distributions (edgekd.drift_reference: the top-1 score and the popularity of
the top-10 recommended items) over a window of recent requests and exposes the population
stability index (PSI) of each against the reference.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

from ..drift_reference import K, psi


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
