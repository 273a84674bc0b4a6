"""Ranking metrics: full ranking over the catalogue with the user's seen items excluded
(the headline), 100 sampled negatives (a second column, for comparison with papers), and the
agreement of a model's top-K with its teacher's.

Item indices here are internal (1..num_items); score column j is item j + 1.
Ties are counted against the target (pessimistic), so a model that gives every item the same
score ranks the target last, not first.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

K = 10
# Scores held at once while evaluating (float32; a few copies are made per chunk): 2**24 is
# 64 MB, 256 users on a 65k-item catalogue, 16 users on a million items.
MAX_CHUNK_SCORES = 1 << 24


def mask_seen(scores: np.ndarray, histories: list[np.ndarray], keep: np.ndarray | None = None) -> np.ndarray:
    """A copy of `scores` [U, N] with each user's seen items set to -inf, except `keep[u]`
    (the target: a repeated item is still a valid next item)."""
    out = np.array(scores, dtype=np.float32, copy=True)
    if not len(histories):
        return out
    lengths = [len(h) for h in histories]
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) - 1
    ok = cols >= 0
    if keep is not None:
        ok &= cols != np.asarray(keep, dtype=np.int64)[rows] - 1
    out[rows[ok], cols[ok]] = -np.inf
    return out


def full_ranks(scores: np.ndarray, targets: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """0-based rank of each target among all items not seen before."""
    s = mask_seen(scores, histories, keep=targets)
    t = s[np.arange(len(targets)), targets - 1][:, None]
    ranks = ((s > t).sum(1) + (s == t).sum(1) - 1).astype(np.int64)
    ranks[np.isnan(t[:, 0])] = s.shape[1] - 1  # a NaN score is a failure, not a perfect hit
    return ranks


def sampled_ranks(scores: np.ndarray, targets: np.ndarray, histories: list[np.ndarray],
                  negatives: int = 100, seed: int = 0) -> np.ndarray:
    """0-based rank of each target among `negatives` items drawn uniformly from those the user
    has not seen (the protocol of SASRec and most papers)."""
    rng = np.random.default_rng(seed)
    n = scores.shape[1]
    ranks = np.empty(len(targets), dtype=np.int64)
    for u in range(len(targets)):
        seen = set(np.asarray(histories[u]).tolist()) | {int(targets[u])}
        cand = []
        while len(cand) < negatives and len(seen) < n:
            c = int(rng.integers(1, n + 1))
            if c not in seen:
                cand.append(c)
        t = scores[u, targets[u] - 1]
        neg = scores[u, np.array(cand, dtype=np.int64) - 1] if cand else np.empty(0)
        ranks[u] = len(neg) if np.isnan(t) else int((neg > t).sum() + (neg == t).sum())
    return ranks


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ranks from top-K lists (internal indices, seen items already excluded); a target not
    in its list gets rank K, which counts as a miss for every cut-off <= K."""
    hit = topk == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), topk.shape[1]).astype(np.int64)


def ndcg_gains(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """Each user's NDCG@k from the 0-based rank of their one target (their mean is NDCG@k)."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ranking_metrics(ranks: np.ndarray, k: int = K, prefix: str = "") -> dict[str, float]:
    ranks = np.asarray(ranks)
    inside = ranks < k
    return {
        f"{prefix}hr@{k}": float(inside.mean()),
        f"{prefix}ndcg@{k}": float(ndcg_gains(ranks, k).mean()),
        f"{prefix}mrr": float((1.0 / (ranks + 1.0)).mean()),
    }


def topk(scores: np.ndarray, histories: list[np.ndarray], k: int = K) -> np.ndarray:
    """Internal indices of the k best unseen items per user, best first; equal scores in item
    order; a NaN score is never among them.

    torch.topk selects over the rows on every thread without a negated copy: numpy's
    argpartition of -scores was 71% of an evaluation's time at a million items (a py-spy
    profile), and torch's selection is many times faster (benchmarks/scale/README.md)."""
    import torch

    s = torch.from_numpy(mask_seen(scores, histories))  # a copy: changed in place below
    k = min(k, s.shape[1])
    s.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    vals, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
    # ties in item order: sort the k by index, then stably by score
    idx, pos = idx.sort(dim=1)
    order = torch.argsort(-vals.gather(1, pos), dim=1, stable=True)
    return (idx.gather(1, order) + 1).numpy().astype(np.int64)


def topk_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of shared items between two sets of top-K lists (order ignored)."""
    k = a.shape[1]
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]))


def chunk_users(num_items: int, batch: int = 256) -> int:
    """Users per evaluation chunk: at most `batch`, and at most MAX_CHUNK_SCORES scores."""
    return max(1, min(batch, MAX_CHUNK_SCORES // max(int(num_items), 1)))


def evaluate_scores(score_fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
                    targets: np.ndarray, histories: list[np.ndarray], *, batch: int = 256,
                    sampled: bool = True, reference_topk: np.ndarray | None = None,
                    seed: int = 0, never: int | None = None,
                    num_items: int | None = None, ranks: list | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Run `score_fn` over `inputs` [U, maxlen] in chunks of users and compute every metric; no
    users x items score matrix is held whole (a chunk holds at most MAX_CHUNK_SCORES scores).
    Returns (metrics, top-10 lists); with `reference_topk`, adds the overlap with it.
    `never`: an index that is not an item (the out-of-vocabulary item): it is never ranked, and
    a target that is it counts as a miss. `num_items`: the catalogue's size, to size the chunks
    from the first (else the first chunk is `batch` users whatever the catalogue). `ranks`: a
    list that receives each user's full-ranking rank (0-based; `ndcg_gains` turns them into
    per-user NDCG@10, whose mean is the metrics')."""
    full, samp, tops = [], [], []
    if num_items:
        batch = chunk_users(num_items, batch)
    i = 0
    while i < len(inputs):
        s = np.asarray(score_fn(inputs[i:i + batch]), dtype=np.float32)
        h, t = histories[i:i + batch], targets[i:i + batch]
        start, i = i, i + len(t)
        batch = chunk_users(s.shape[1], batch)  # without num_items: bounded from the second chunk on
        if never is not None:
            s = s.copy()
            s[:, never - 1] = -np.inf
        full.append(full_ranks(s, t, h))
        if sampled:
            samp.append(sampled_ranks(s, t, h, seed=seed + start))
        tops.append(topk(s, h, K))
    if ranks is not None:
        ranks.extend(np.concatenate(full).tolist())
    out = ranking_metrics(np.concatenate(full))
    if sampled:
        out.update(ranking_metrics(np.concatenate(samp), prefix="sampled_"))
    top = np.concatenate(tops)
    if reference_topk is not None:
        out["top10_overlap"] = topk_overlap(top, reference_topk)
    return out, top
