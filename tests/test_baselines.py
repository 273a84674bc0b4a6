"""The floors from sparse counts, scored in user chunks: the same numbers as the dense
implementation they replaced (kept here as the reference)."""
import numpy as np
import pytest

from edgekd import baselines, metrics
from edgekd.metrics import full_ranks, ranking_metrics
from tests.conftest import ML100K


def dense_popularity(ds, histories):
    pop = np.zeros(ds.num_items)
    for h in histories:
        np.add.at(pop, np.asarray(h) - 1, 1)
    return np.tile(pop, (len(histories), 1))


def dense_markov(ds, histories, order=1):
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
        out[u] = trans[np.asarray(h[-order:])].sum(0) + 0.01 * pop / max(pop.max(), 1)
    return out


def dense_metrics(ds, split="test"):
    hist, targets = ds.eval_split(split)
    return {
        "popularity": ranking_metrics(full_ranks(dense_popularity(ds, hist), targets, hist)),
        "markov-1": ranking_metrics(full_ranks(dense_markov(ds, hist, 1), targets, hist)),
        "markov-3": ranking_metrics(full_ranks(dense_markov(ds, hist, 3), targets, hist)),
    }


def check_same_as_dense(ds):
    for split in ("valid", "test"):
        hist, _ = ds.eval_split(split)
        np.testing.assert_array_equal(baselines.popularity_scores(ds, hist), dense_popularity(ds, hist))
        for order in (1, 3):
            np.testing.assert_allclose(baselines.markov_scores(ds, hist, order), dense_markov(ds, hist, order),
                                       rtol=1e-12, atol=1e-12)
        assert baselines.baseline_metrics(ds, split) == dense_metrics(ds, split)


def test_sparse_floors_equal_the_dense_ones(tiny_ds):
    check_same_as_dense(tiny_ds)


@pytest.mark.skipif(not ML100K.is_file(), reason=f"MovieLens-100k not found at {ML100K}")
def test_sparse_floors_equal_the_dense_ones_on_ml100k():
    from edgekd.data import DataSpec, load_data

    check_same_as_dense(load_data(DataSpec(format="movielens", path=str(ML100K))))


def test_no_chunk_holds_more_than_its_bound(tiny_ds, monkeypatch):
    hist, targets = tiny_ds.eval_split("test")
    want = baselines.baseline_metrics(tiny_ds)
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 7 * tiny_ds.num_items)
    sizes = []
    scorer = baselines.markov_scorer(tiny_ds, hist, 3)
    got = baselines.score_metrics(lambda u: sizes.append(len(u)) or scorer(u), targets, hist, tiny_ds.num_items)
    assert max(sizes) == 7 and sum(sizes) == len(hist)
    assert got == want["markov-3"]
    # without the catalogue's size: the first chunk is `batch` users, the rest bounded
    sizes.clear()
    m, _ = metrics.evaluate_scores(lambda b: sizes.append(len(b)) or scorer(b[:, 0]), np.arange(len(hist))[:, None],
                                   targets, hist, batch=50, sampled=False)
    assert sizes[0] == 50 and max(sizes[1:]) == 7 and m == want["markov-3"]


def test_the_transition_table_is_sparse():
    from edgekd.data import build_dataset

    events = [(f"u{u}", f"i{(u * 7 + t) % 5000}", float(t)) for u in range(200) for t in range(5)]
    ds = build_dataset(events, "wide")
    hist, _ = ds.eval_split("test")
    t = baselines.transitions(ds.num_items, hist, 3)
    assert tuple(t.shape) == (ds.num_items + 1, ds.num_items) and t._nnz() <= 200 * 6


def test_markov_scores_equal_a_dense_computation():
    """The sparse table and product give what dense counting gives (duplicates summed, a row
    listed twice counted twice, empty rows zero)."""
    from edgekd.data import build_dataset

    rng = np.random.default_rng(0)
    events = [(f"u{u}", f"i{int(i)}", float(t)) for u in range(40) for t, i in enumerate(rng.integers(0, 12, 9))]
    ds = build_dataset(events, "dense-check")
    hist, _ = ds.eval_split("test")
    n = ds.num_items
    for order in (1, 3):
        dense = np.zeros((n + 1, n))
        for h in hist:
            for lag in range(1, order + 1):
                for a, b in zip(h[:-lag], h[lag:]):
                    dense[a, b - 1] += 1.0 / lag
        pop = baselines.item_counts(n, hist)
        tie = 0.01 * pop / pop.max()
        want = np.stack([dense[np.asarray(h[-order:])].sum(0) for h in hist]) + tie
        np.testing.assert_allclose(baselines.markov_scores(ds, hist, order), want, rtol=1e-12)
