"""Simple floors a sequence model must clear, scored like any model (full ranking, seen items
excluded): item popularity and a k-th order Markov chain over the training data.

Counts are kept sparse (a compressed-row table in numpy: an items x items transition table has
as many entries as distinct transitions, not items squared) and users are scored a chunk at a
time, so neither a users x items nor an items x items dense matrix is ever held whole."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Dataset
from .metrics import evaluate_scores

CHUNK = 256  # users scored at a time (evaluate_scores narrows it further on a large catalogue)


def item_counts(num_items: int, histories: list[np.ndarray]) -> np.ndarray:
    """How often each item (column k = item k + 1) occurs in the histories."""
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0, np.int64)
    return np.bincount(flat[flat > 0] - 1, minlength=num_items)[:num_items].astype(np.float64)


@dataclass(frozen=True)
class SparseRows:
    """A sparse [rows, cols] float64 table in compressed-row form: row r's entries are
    indices[indptr[r]:indptr[r + 1]] (columns, ascending) and the same slice of data."""
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return len(self.data)

    @classmethod
    def from_triples(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> "SparseRows":
        """Duplicate (row, col) entries are summed."""
        key = rows.astype(np.int64) * shape[1] + cols
        uniq, inverse = np.unique(key, return_inverse=True)  # sorted: by row, then column
        data = np.bincount(inverse.reshape(-1), weights=vals, minlength=len(uniq))
        r = uniq // shape[1]
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
        return cls(indptr, (uniq % shape[1]).astype(np.int64), data.astype(np.float64), shape)

    def sum_rows(self, groups: np.ndarray, rows: np.ndarray, num_groups: int) -> np.ndarray:
        """Dense [num_groups, cols]: out[g] is the sum of the table's rows rows[k] with
        groups[k] == g (a row listed twice counts twice)."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        # the positions of every entry of every listed row, in one flat array
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        cells = np.repeat(groups.astype(np.int64), lengths) * self.shape[1] + self.indices[offsets]
        out = np.bincount(cells, weights=self.data[offsets], minlength=num_groups * self.shape[1])
        return out.reshape(num_groups, self.shape[1])


def transitions(num_items: int, histories: list[np.ndarray], order: int = 1) -> SparseRows:
    """Sparse [num_items + 1, num_items]: row a, column b - 1 is the weight of b following a
    within `order` steps (1/lag each time; row 0 unused)."""
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for lag in range(1, order + 1):
        for h in histories:
            h = np.asarray(h, dtype=np.int64)
            if len(h) > lag:
                rows.append(h[:-lag])
                cols.append(h[lag:] - 1)
                vals.append(np.full(len(h) - lag, 1.0 / lag))
    return SparseRows.from_triples(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
                                   (num_items + 1, num_items))


def _last_items(histories: list[np.ndarray], users: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(position in `users`, item) for each of every user's last `order` items."""
    lasts = [np.asarray(histories[u][-order:], dtype=np.int64) for u in users]
    rows = np.repeat(np.arange(len(users)), [len(x) for x in lasts])
    items = np.concatenate(lasts) if lasts else np.zeros(0, np.int64)
    return rows, items


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
        rows, items = _last_items(histories, users, order)
        return trans.sum_rows(rows, items, len(users)) + tie

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
