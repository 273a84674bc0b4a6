import math

import numpy as np
import pytest

from edgekd.metrics import (full_ranks, mask_seen, ranking_metrics, ranks_from_topk, sampled_ranks, topk,
                            topk_overlap)


def test_full_rank_excludes_seen_items_but_not_the_target():
    # items 1..5 -> columns 0..4; target item 3 (score 0.5)
    scores = np.array([[0.9, 0.8, 0.5, 0.7, 0.1]])
    assert full_ranks(scores, np.array([3]), [np.array([])]).tolist() == [3]
    # items 1 and 2 were seen: they no longer rank above the target
    assert full_ranks(scores, np.array([3]), [np.array([1, 2])]).tolist() == [1]
    # a seen target (a repeat) is still ranked
    assert full_ranks(scores, np.array([3]), [np.array([1, 2, 3])]).tolist() == [1]


def test_ties_count_against_the_target():
    scores = np.zeros((1, 5))
    assert full_ranks(scores, np.array([1]), [np.array([])]).tolist() == [4]


def test_hand_computed_metrics():
    ranks = np.array([0, 1, 9, 10, 50])
    m = ranking_metrics(ranks, k=10)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 51) / 5)


def test_sampled_ranks_use_unseen_negatives_only():
    n = 300
    scores = np.arange(n, dtype=float)[None].repeat(2, 0)  # item i+1 scores i
    # target = best item: rank 0 whatever the negatives
    assert sampled_ranks(scores[:1], np.array([n]), [np.array([])]).tolist() == [0]
    # target = worst unseen item: every negative beats it
    r = sampled_ranks(scores[:1], np.array([1]), [np.array([])], negatives=100)
    assert r.tolist() == [100]
    # seen items are never negatives: if all items above the target were seen, rank is 0
    seen = np.arange(151, n + 1)
    assert sampled_ranks(scores[:1], np.array([150]), [seen]).tolist() == [0]


def test_topk_masks_seen_and_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert topk(scores, [np.array([2])], k=2).tolist() == [[4, 3]]


def test_topk_is_the_best_unseen_items_best_first_ties_in_item_order_never_nan():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(30, 60)).astype(np.float32)  # many ties
    scores[:, 7] = np.nan
    hist = [rng.choice(np.arange(1, 61), size=6, replace=False) for _ in range(30)]
    top = topk(scores, hist, k=10)
    for u in range(30):
        s = np.where(np.isnan(scores[u]), -np.inf, scores[u])
        s[hist[u] - 1] = -np.inf
        got = top[u] - 1
        assert sorted(s[got].tolist(), reverse=True) == sorted(s.tolist(), reverse=True)[:10]  # the best
        assert sorted(got.tolist(), key=lambda j: (-s[j], j)) == got.tolist()  # best first, ties by item
    assert top.dtype == np.int64 and 8 not in top


def test_ranks_from_topk_agree_with_full_ranks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 40))
    hist = [rng.choice(np.arange(1, 41), size=5, replace=False) for _ in range(50)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, 41), h)) for h in hist])
    full = full_ranks(scores, targets, hist)
    top = topk(scores, hist, k=20)
    from_top = ranks_from_topk(top, targets)
    assert np.array_equal(np.minimum(full, 20), from_top)
    assert ranking_metrics(full) == pytest.approx(
        {**ranking_metrics(from_top), "mrr": ranking_metrics(full)["mrr"]})


def test_topk_overlap():
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[4, 3, 2, 1], [5, 6, 9, 10]])
    assert topk_overlap(a, b) == pytest.approx((1.0 + 0.5) / 2)


def test_mask_seen_ignores_padding():
    out = mask_seen(np.ones((1, 3)), [np.array([0, 2])])
    assert out[0].tolist() == [1.0, -np.inf, 1.0]


def test_a_nan_score_is_a_miss_not_a_hit():
    scores = np.array([[0.1, np.nan, 0.3]])
    assert full_ranks(scores, np.array([2]), [np.array([])]).tolist() == [2]
    assert ranking_metrics(full_ranks(scores, np.array([2]), [np.array([])]))["hr@10"] == 1.0  # 3 items: still top 10
    big = np.full((1, 50), 0.5)
    big[0, 7] = np.nan
    assert full_ranks(big, np.array([8]), [np.array([])]).tolist() == [49]
    assert sampled_ranks(big, np.array([8]), [np.array([])], negatives=20).tolist() == [20]
