"""MovieLens-100k, read in place from ../shared/data (never copied: its licence forbids it)."""
import pytest

from tests.conftest import ML100K

pytestmark = pytest.mark.skipif(not ML100K.is_file(), reason=f"MovieLens-100k not found at {ML100K}")


@pytest.fixture(scope="module")
def ml():
    from edgekd.data import DataSpec, load_data

    return load_data(DataSpec(format="movielens", path=str(ML100K)))


def test_loads_all_of_ml100k(ml):
    assert (ml.num_users, ml.num_items, ml.num_events) == (943, 1682, 100000)
    assert ml.dropped_users == 0
    assert ml.name == "ml-100k"


def test_floors_on_the_split_match_the_published_figures(ml):
    """Popularity 0.045, first-order Markov 0.079, third-order 0.093 (test NDCG@10, full
    ranking, seen excluded), as measured on this split outside edgekd."""
    from edgekd.baselines import baseline_metrics

    m = baseline_metrics(ml)
    assert m["popularity"]["ndcg@10"] == pytest.approx(0.045, abs=0.003)
    assert m["markov-1"]["ndcg@10"] == pytest.approx(0.079, abs=0.003)
    assert m["markov-3"]["ndcg@10"] == pytest.approx(0.093, abs=0.003)


def test_a_short_training_beats_popularity(ml, tmp_path):
    from edgekd.baselines import baseline_metrics
    from edgekd.train import TrainConfig, train_teacher

    cfg = TrainConfig(model="sasrec", maxlen=100, epochs=6, patience=6, eval_users=300)
    a = train_teacher(ml, cfg, store=tmp_path, name="ml-short")
    assert a.metrics["test_ndcg@10"] > baseline_metrics(ml)["popularity"]["ndcg@10"]
