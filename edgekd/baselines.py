"""Simple floors a sequence model must clear, scored like any model (full ranking, seen items
excluded): item popularity and a k-th order Markov chain over the training data.

Counts are kept sparse (torch sparse tensors: an items x items transition table has
as many entries as distinct transitions, not items squared) and users are scored a chunk at a
time, so neither a users x items nor an items x items dense matrix is ever held whole."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .data import Dataset
from .metrics import evaluate_scores

CHUNK = 256  # users scored at a time (evaluate_scores narrows it further on a large catalogue)


def item_counts(num_items: int, histories: list[np.ndarray]) -> np.ndarray:
    """How often each item (column k = item k + 1) occurs in the histories."""
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0, np.int64)
    return np.bincount(flat[flat > 0] - 1, minlength=num_items)[:num_items].astype(np.float64)


def transitions(num_items: int, histories: list[np.ndarray], order: int = 1) -> torch.Tensor:
    """Sparse (torch COO, coalesced: duplicates summed) [num_items + 1, num_items] float64:
    row a, column b - 1 is the weight of b following a within `order` steps (1/lag each time;
    row 0 unused)."""
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for lag in range(1, order + 1):
        for h in histories:
            h = np.asarray(h, dtype=np.int64)
            if len(h) > lag:
                rows.append(h[:-lag])
                cols.append(h[lag:] - 1)
                vals.append(np.full(len(h) - lag, 1.0 / lag))
    return _sparse(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), (num_items + 1, num_items))


def _sparse(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    idx = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(vals.astype(np.float64)), shape,
                                   check_invariants=True).coalesce()


def _last_items(histories: list[np.ndarray], users: np.ndarray, order: int, num_items: int) -> torch.Tensor:
    """Sparse [len(users), num_items + 1]: how often each item is among a user's last `order` items."""
    lasts = [np.asarray(histories[u][-order:], dtype=np.int64) for u in users]
    rows = np.repeat(np.arange(len(users)), [len(x) for x in lasts])
    items = np.concatenate(lasts) if lasts else np.zeros(0, np.int64)
    return _sparse(rows, items, np.ones(len(items)), (len(users), num_items + 1))


def popularity_scorer(ds: Dataset, histories: list[np.ndarray]):
    """A function of user indices -> their popularity scores [len(users), num_items]."""
    pop = item_counts(ds.num_items, histories)
    return lambda users: np.broadcast_to(pop, (len(users), len(pop)))


def markov_scorer(ds: Dataset, histories: list[np.ndarray], order: int = 1):
    """A function of user indices -> scores from the transitions out of each user's last
    `order` items (older ones weigh less), with popularity breaking ties. Transitions are counted
    on the histories themselves, so nothing about the targets leaks in."""
    n = ds.num_items
    trans = transitions(n, histories, order)
    pop = item_counts(n, histories)
    # popularity breaks ties; 0.01 keeps it below any difference in transition weight and
    # above float32 resolution, in which the ranks are computed
    tie = 0.01 * pop / max(pop.max(initial=0.0), 1)

    def score(users):
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        with warnings.catch_warnings():  # torch says its sparse product is "beta"; it is what we test
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            product = torch.sparse.mm(_last_items(histories, users, order, n), trans)
        return product.to_dense().numpy() + tie

    return score


def popularity_scores(ds: Dataset, histories: list[np.ndarray]) -> np.ndarray:
    """Every user's popularity scores at once (small data and tests only)."""
    return np.array(popularity_scorer(ds, histories)(np.arange(len(histories))))


def markov_scores(ds: Dataset, histories: list[np.ndarray], order: int = 1) -> np.ndarray:
    """Every user's Markov scores at once (small data and tests only)."""
    return markov_scorer(ds, histories, order)(np.arange(len(histories)))


def score_metrics(scorer, targets: np.ndarray, histories: list[np.ndarray], num_items: int,
                  never: int | None = None) -> dict:
    """Full-ranking metrics of a scorer of user indices, a chunk of users at a time."""
    users = np.arange(len(histories))[:, None]
    m, _ = evaluate_scores(lambda b: scorer(b[:, 0]), users, targets, histories, batch=CHUNK,
                           sampled=False, never=never, num_items=num_items)
    return m


def baseline_metrics(ds: Dataset, split: str = "test") -> dict[str, dict]:
    hist, targets = ds.eval_split(split)
    return {
        "popularity": score_metrics(popularity_scorer(ds, hist), targets, hist, ds.num_items),
        "markov-1": score_metrics(markov_scorer(ds, hist, 1), targets, hist, ds.num_items),
        "markov-3": score_metrics(markov_scorer(ds, hist, 3), targets, hist, ds.num_items),
    }
