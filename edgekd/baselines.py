"""Simple floors a sequence model must clear, scored like any model (full ranking, seen items
excluded): item popularity and a k-th order Markov chain over the training data."""
from __future__ import annotations

import numpy as np

from .data import Dataset
from .metrics import full_ranks, ranking_metrics


def popularity_scores(ds: Dataset, histories: list[np.ndarray]) -> np.ndarray:
    pop = np.zeros(ds.num_items)
    for h in histories:
        np.add.at(pop, np.asarray(h) - 1, 1)
    return np.tile(pop, (len(histories), 1))


def markov_scores(ds: Dataset, histories: list[np.ndarray], order: int = 1) -> np.ndarray:
    """Scores from the transitions out of the last `order` items (older ones weigh less),
    with popularity breaking ties. Transitions are counted on the histories themselves, so
    nothing about the targets leaks in."""
    n = ds.num_items
    trans = np.zeros((n + 1, n))
    pop = np.zeros(n)
    for h in histories:
        h = np.asarray(h)
        np.add.at(pop, h - 1, 1)
        for lag in range(1, order + 1):
            if len(h) > lag:
                np.add.at(trans, (h[:-lag], h[lag:] - 1), 1.0 / lag)
    out = np.empty((len(histories), n))
    for u, h in enumerate(histories):
        # popularity breaks ties; 0.01 keeps it below any difference in transition weight and
        # above float32 resolution, in which the ranks are computed
        out[u] = trans[np.asarray(h[-order:])].sum(0) + 0.01 * pop / max(pop.max(), 1)
    return out


def baseline_metrics(ds: Dataset, split: str = "test") -> dict[str, dict]:
    hist, targets = ds.eval_split(split)
    return {
        "popularity": ranking_metrics(full_ranks(popularity_scores(ds, hist), targets, hist)),
        "markov-1": ranking_metrics(full_ranks(markov_scores(ds, hist, 1), targets, hist)),
        "markov-3": ranking_metrics(full_ranks(markov_scores(ds, hist, 3), targets, hist)),
    }
