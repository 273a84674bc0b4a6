"""The drift reference of an artifact: its own behaviour on validation users, which `edgekd
serve` compares live traffic against (edgekd.serve.drift).

The reference (drift_reference.json in the artifact directory, listed on the card as
`drift_reference`) holds two distributions measured on the validation users' histories with
seen items excluded, ranked by edgekd.ranking as the server ranks: the top-1 score (in bins cut
at the reference's deciles) and the popularity of the top-10 recommended items (items in
deciles of their training-interaction count rank; bin 0 holds the most popular tenth of the
catalogue).

The export stage measures it on the exported file before the artifact is saved (its card is
written once, naming the reference); `attach_reference` adds one to an artifact that has none
(`edgekd serve --reference`, an explicit request for an older artifact).
"""
from __future__ import annotations

import json
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
    from .evaluation import eval_inputs
    from .metrics import chunk_users
    from .ranking import Encoded

    x, _, hist = eval_inputs(ds, "valid", served.maxlen, users)
    counts = np.bincount(np.concatenate(ds.train_sequences()), minlength=ds.num_items + 1)[1:]
    item_bin = popularity_bins(counts)
    enc = [Encoded(row, sorted(set(h.tolist()) - {served.oov_index}), len(h), 0) for row, h in zip(x, hist)]
    top1, pop = [], []
    k = min(K, served.max_k)
    step = chunk_users(served.num_items)  # a chunk of users at a time: never users x items whole
    for i in range(0, len(enc), step):
        for r in served.recommend(enc[i:i + step], k):
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


def write_reference(a, ds, users: int | None = 2000) -> str:
    """Measure artifact `a`'s drift reference and write it into its directory (which may be the
    partial directory save_artifact is about to move in place); returns its file name, for the
    card's `drift_reference`."""
    from .ranking import ServedModel

    ref = compute_reference(ServedModel(a), ds, users)
    tmp = a.path / (REFERENCE + ".tmp")
    tmp.write_text(json.dumps(ref) + "\n")
    tmp.replace(a.path / REFERENCE)
    return REFERENCE


def attach_reference(a, ds, users: int | None = 2000):
    """Give an existing artifact that has none a drift reference (`edgekd serve --reference`):
    the file beside its payload, and its name on the card. Stages do not call this: the export
    stage writes the reference before its card (write_reference in save_artifact's `finish`)."""
    a.update_card(drift_reference=write_reference(a, ds, users))
    return a


def load_reference(a) -> dict | None:
    name = a.card.get("drift_reference") or (REFERENCE if (a.path / REFERENCE).is_file() else None)
    if not name or not (a.path / name).is_file():
        return None
    ref = json.loads((Path(a.path) / name).read_text())
    if ref.get("artifact", {}).get("sha256") != a.sha256:
        return None  # the reference of another payload
    return ref
