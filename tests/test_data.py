from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import (DataSpec, SyntheticConfig, build_dataset, generate_synthetic, load_csv, load_data,
                         load_movielens, load_sasrec, pad_left, training_pairs, write_sasrec_text)
from edgekd.errors import ConfigError, DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_movielens_udata_orders_by_timestamp_and_keeps_file_order_on_ties(tmp_path):
    p = write(tmp_path, "u.data", "1\t30\t5\t300\n1\t10\t4\t100\n1\t20\t3\t200\n1\t40\t3\t200\n2\t10\t1\t5\n")
    ds = build_dataset(load_movielens(p), "t", min_events=1)
    items = ds.items
    seq = [items[i - 1] for i in ds.sequences[0]]
    assert seq == ["10", "20", "40", "30"]  # 20 and 40 tie at t=200: file order kept


def test_movielens_ratings_dat_separator(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::5::3::10\n1::6::3::11\n1::7::3::12\n")
    ev = load_movielens(p)
    assert ev == [("1", "5", 10.0), ("1", "6", 11.0), ("1", "7", 12.0)]


def test_ids_are_remapped_contiguously_and_vocab_maps_back(tmp_path):
    p = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t1\t{t}\n" for t, (u, i) in
                                          enumerate([(7, 100), (7, 5), (7, 42), (9, 42), (9, 100), (9, 7)])))
    ds = build_dataset(load_movielens(p), "t")
    assert ds.items == ["5", "7", "42", "100"]  # numeric ids sorted as numbers
    assert sorted(np.concatenate(ds.sequences).tolist()) == [1, 2, 3, 3, 4, 4]
    assert [ds.items[i - 1] for i in ds.sequences[0]] == ["100", "5", "42"]
    assert ds.vocab()["padding_index"] == 0


@pytest.mark.parametrize("text,line,needle", [
    ("1\t2\t3\t4\n1\t2\t3\n", 2, "expected 4 fields"),
    ("1\t2\t3\t4\n\n1\t2\t3\tsoon\n", 3, "timestamp 'soon' is not a number"),
    ("1\t2\tgood\t4\n", 1, "rating 'good'"),
    ("1\t\t3\t4\n", 1, "empty item id"),
    ("1\t2\t3\tnan\n", 1, "not finite"),
])
def test_malformed_movielens_names_file_and_line(tmp_path, text, line, needle):
    p = write(tmp_path, "u.data", text)
    with pytest.raises(DataError) as e:
        load_movielens(p)
    assert f"{p}:{line}:" in str(e.value)
    assert needle in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_movielens(tmp_path / "nope.data")
    with pytest.raises(DataError, match="no interactions"):
        load_movielens(write(tmp_path, "empty", "\n\n"))
    with pytest.raises(DataError, match="not UTF-8"):
        (tmp_path / "bin").write_bytes(b"\xff\xfe\x00\x01")
        load_movielens(tmp_path / "bin")


def test_sasrec_text_keeps_line_order(tmp_path):
    p = write(tmp_path, "seq.txt", "1 3\n1 1\n1 2\n2 1\n")
    assert [e[1] for e in load_sasrec(p)] == ["3", "1", "2", "1"]
    with pytest.raises(DataError, match=r"seq2.txt:2: expected 2 fields"):
        load_sasrec(write(tmp_path, "seq2.txt", "1 3\n1 3 4\n"))


def test_csv_with_named_columns_in_any_order(tmp_path):
    p = write(tmp_path, "x.csv", "timestamp,item,rating,user\n3,b,1,u1\n1,a,1,u1\n2,c,1,u1\n")
    ds = build_dataset(load_csv(p), "x")
    assert [ds.items[i - 1] for i in ds.sequences[0]] == ["a", "c", "b"]


def test_csv_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"x.csv:1: header lacks column\(s\) timestamp"):
        load_csv(write(tmp_path, "x.csv", "user,item\n1,2\n"))
    with pytest.raises(DataError, match=r"y.csv:3: expected 3 columns, got 2"):
        load_csv(write(tmp_path, "y.csv", "user,item,timestamp\n1,2,3\n1,2\n"))


def test_users_with_too_few_events_are_dropped_and_counted(tmp_path):
    p = write(tmp_path, "u.data", "1\t1\t1\t1\n1\t2\t1\t2\n2\t1\t1\t1\n2\t2\t1\t2\n2\t3\t1\t3\n")
    ds = build_dataset(load_movielens(p), "t")
    assert ds.num_users == 1 and ds.dropped_users == 1
    with pytest.raises(DataError, match="no user has at least 4 events"):
        build_dataset(load_movielens(p), "t", min_events=4)


def test_leave_one_out_split():
    ds = build_dataset([("u", str(i), float(i)) for i in range(1, 6)], "t")
    hist, t = ds.eval_split("valid")
    assert hist[0].tolist() == [1, 2, 3] and t.tolist() == [4]
    hist, t = ds.eval_split("test")
    assert hist[0].tolist() == [1, 2, 3, 4] and t.tolist() == [5]
    assert ds.train_sequences()[0].tolist() == [1, 2, 3]


def test_pruned_items_are_skipped_or_fed_as_oov_in_inputs_but_stay_as_targets(tmp_path):
    # u1: 1 2 3 4 5 6, u2: 2 1 6 3 5 4; keep items 1, 2, 4: the rest become the OOV item (index 4)
    rows = [("u1", str(i), float(i)) for i in range(1, 7)] + \
           [("u2", str(i), float(k)) for k, i in enumerate([2, 1, 6, 3, 5, 4])]
    p = write(tmp_path, "d.csv", "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    spec = dict(format="csv", path=str(p), keep_items=("1", "2", "4"))
    oov = load_data(DataSpec(**spec, unknown_items="oov"))
    assert load_data(DataSpec(**spec)).unknown_items == "oov"  # the default: what older artifacts mean
    skip = load_data(DataSpec(**spec, unknown_items="skip"))
    assert oov.items == skip.items == ["1", "2", "4", "<oov>"] and oov.oov_index == 4
    assert [s.tolist() for s in oov.train_sequences()] == [[1, 2, 4, 3], [2, 1, 4, 4]]
    assert [s.tolist() for s in skip.train_sequences()] == [[1, 2, 3], [2, 1]]
    for split, want in (("valid", [4, 4]), ("test", [4, 3])):  # a pruned target stays: a miss
        (h_oov, t_oov), (h_skip, t_skip) = oov.eval_split(split), skip.eval_split(split)
        assert t_oov.tolist() == t_skip.tolist() == want
        assert all(4 not in h.tolist() for h in h_skip)
        assert [h[h != 4].tolist() for h in h_oov] == [h.tolist() for h in h_skip]
    assert skip.vocab()["unknown_items"] == "skip" and "leave them out" in skip.vocab()["oov_note"]
    assert oov.vocab()["unknown_items"] == "oov" and "feed index 4" in oov.vocab()["oov_note"]
    with pytest.raises(ConfigError, match="unknown_items"):
        DataSpec(**spec, unknown_items="drop")


def test_synthetic_is_deterministic_by_seed_and_configurable():
    a = generate_synthetic(SyntheticConfig(users=50, items=40, tastes=4, seed=1))
    b = generate_synthetic(SyntheticConfig(users=50, items=40, tastes=4, seed=1))
    c = generate_synthetic(SyntheticConfig(users=50, items=40, tastes=4, seed=2))
    assert a == b and a != c
    assert len({e[0] for e in a}) == 50
    with pytest.raises(ConfigError, match="tastes_per_user"):
        SyntheticConfig(tastes=1, tastes_per_user=2)


def test_synthetic_min_count_puts_every_item_in_use():
    """min_count=k: each item occurs at least k times, the added occurrences placed among a
    user's own events; the draws before them are the same events as without it."""
    base = SyntheticConfig(users=30, items=2000, mean_length=10, tastes=4, seed=3)
    plain = generate_synthetic(base)
    assert len({e[1] for e in plain}) < 2000  # the draws alone leave items out
    for k in (1, 2):
        ev = generate_synthetic(SyntheticConfig(**{**base.__dict__, "min_count": k}))
        assert ev[:len(plain)] == plain
        counts = Counter(e[1] for e in ev)
        assert len(counts) == 2000 and min(counts.values()) >= k
        last = {u: max(t for uu, _, t in plain if uu == u) for u in {e[0] for e in plain}}
        assert all(-0.5 <= t < last[u] for u, _, t in ev[len(plain):])
    ds = load_data(DataSpec(synthetic={**base.__dict__, "min_count": 1}))
    assert ds.num_items == 2000
    with pytest.raises(ConfigError, match="min_count"):
        SyntheticConfig(min_count=-1)


def test_synthetic_has_sequential_structure_popularity_lacks():
    """A first-order Markov chain fitted on training transitions predicts the validation item
    far better than popularity: the structure a sequence model must learn."""
    ds = load_data(DataSpec(synthetic={"users": 600, "seed": 0}))
    n = ds.num_items + 1
    trans = np.zeros((n, n))
    pop = np.zeros(n)
    for s in ds.train_sequences():
        np.add.at(pop, s, 1)
        np.add.at(trans, (s[:-1], s[1:]), 1)
    hist, targets = ds.eval_split("valid")
    top_pop = set(np.argsort(-pop)[:10].tolist())
    hr_pop = np.mean([t in top_pop for t in targets])
    hr_mc = np.mean([t in set(np.argsort(-trans[h[-1]])[:10].tolist()) for h, t in zip(hist, targets)])
    assert hr_mc > 2 * hr_pop


def test_convert_roundtrips_through_the_sasrec_loader(tmp_path, tiny_ds):
    p = write_sasrec_text(tiny_ds, tmp_path / "tiny.txt")
    back = load_data(DataSpec(format="sasrec", path=str(p)))
    assert [s.tolist() for s in back.sequences] == [s.tolist() for s in tiny_ds.sequences]


def test_padding_and_training_pairs():
    x = pad_left([np.array([1, 2, 3]), np.array([4])], 4)
    assert x.tolist() == [[0, 1, 2, 3], [0, 0, 0, 4]]
    xs, ys = training_pairs([np.array([5, 6, 7]), np.array([1])], 3)
    assert xs.tolist() == [[0, 5, 6]] and ys.tolist() == [[0, 6, 7]]


def test_data_spec_validation():
    with pytest.raises(ConfigError, match="unknown data format 'parquet'"):
        DataSpec(format="parquet", path="x")
    with pytest.raises(ConfigError, match="needs a path"):
        DataSpec(format="movielens")


def test_ids_that_differ_only_by_leading_zeros_map_the_same_way_every_time():
    events = [("u", i, float(t)) for t, i in enumerate(["7", "07", "007", "7", "07"])]
    assert build_dataset(events, "t").items == ["007", "07", "7"]


def test_long_histories_are_trained_on_in_windows_covering_every_transition_once():
    seq = np.arange(1, 12)  # 10 transitions
    x, y = training_pairs([seq], 4)
    pairs = sorted((int(a), int(b)) for xr, yr in zip(x, y) for a, b in zip(xr, yr) if b)
    assert pairs == [(i, i + 1) for i in range(1, 11)]
    x1, _ = training_pairs([seq], 4, windows=False)
    assert x1.tolist() == [[7, 8, 9, 10]]  # the most recent window only


def _synthetic_with_choice(cfg):
    """The generator as first written, one numpy `choice(a, p=p)` per draw (slow: every draw
    rebuilds a table over the catalogue): what the fast one must reproduce event for event."""
    import numpy as np

    from edgekd.data import MIN_EVENTS

    rng = np.random.default_rng(cfg.seed)
    n = cfg.items
    popularity = 1.0 / np.arange(1, n + 1) ** cfg.zipf
    popularity = popularity[rng.permutation(n)]
    taste_of = rng.integers(0, cfg.tastes, size=n)
    taste_of[rng.permutation(n)[: cfg.tastes]] = np.arange(cfg.tastes)
    members = [np.flatnonzero(taste_of == t) for t in range(cfg.tastes)]
    taste_p = [popularity[m] / popularity[m].sum() for m in members]
    succ = np.empty((n, cfg.successors), dtype=np.int64)
    for i in range(n):
        succ[i] = rng.choice(members[taste_of[i]], size=cfg.successors, replace=True, p=taste_p[taste_of[i]])
    succ_w = 0.5 ** np.arange(cfg.successors)
    succ_w /= succ_w.sum()
    global_p = popularity / popularity.sum()
    events = []
    for u in range(cfg.users):
        length = min(max(MIN_EVENTS, int(rng.geometric(1.0 / cfg.mean_length))), 8 * cfg.mean_length)
        tastes = rng.choice(cfg.tastes, size=cfg.tastes_per_user, replace=False)
        mix = rng.dirichlet(np.ones(cfg.tastes_per_user))
        cur = -1
        for t in range(length):
            r = rng.random()
            if cur >= 0 and r < cfg.p_markov:
                nxt = succ[cur, rng.choice(cfg.successors, p=succ_w)]
            elif r < cfg.p_markov + (1 - cfg.p_markov) * 0.8:
                k = tastes[rng.choice(cfg.tastes_per_user, p=mix)]
                nxt = rng.choice(members[k], p=taste_p[k])
            else:
                nxt = rng.choice(n, p=global_p)
            cur = int(nxt)
            events.append((f"u{u + 1}", f"i{cur + 1}", float(t)))
    return events


@pytest.mark.parametrize("kw", [{}, {"users": 300, "items": 2000, "mean_length": 9},
                                {"users": 120, "items": 300, "tastes": 7, "tastes_per_user": 3, "successors": 4,
                                 "p_markov": 0.3, "seed": 5}])
def test_synthetic_data_is_the_same_as_drawing_with_numpy_choice(kw):
    """Tables built once must not change a seed's data (every synthetic result was made with it)."""
    from edgekd.data import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(**kw)
    assert generate_synthetic(cfg) == _synthetic_with_choice(cfg)


def test_a_files_built_dataset_is_cached_and_checked(tmp_path, monkeypatch):
    """load_data(store=DIR): the first load builds and keeps the dataset under DIR; the next
    loads it without parsing; a changed file is parsed again; a damaged or tampered entry is
    detected (a warning), rebuilt and replaced."""
    import edgekd.data as data
    from edgekd.data import DATASET_CACHE, DataSpec, load_data
    from edgekd.errors import EdgeKDWarning

    f = tmp_path / "u.data"
    f.write_text("".join(f"{u}\t{i}\t5\t{t}\n" for t, (u, i) in enumerate(
        [(1, 10), (1, 11), (1, 12), (2, 10), (2, 13), (2, 11), (2, 14), (3, 12), (3, 10), (3, 15)])))
    store = tmp_path / "store"
    spec, cache = DataSpec(format="movielens", path=str(f)), store / DATASET_CACHE
    first = load_data(spec, store=store)
    (entry,) = cache.glob("*.npz")
    parsed = []
    real = data._load_uncached
    monkeypatch.setattr(data, "_load_uncached", lambda *a: parsed.append(1) or real(*a))
    again = load_data(spec, store=store)
    assert not parsed and again.fingerprint() == first.fingerprint()
    assert (again.items, again.users, again.dropped_users, again.name) == \
        (first.items, first.users, first.dropped_users, first.name)
    assert all(s.dtype == np.int64 for s in again.sequences)

    with open(f, "a") as fh:
        fh.write("3\t16\t5\t99\n")
    changed = load_data(spec, store=store)
    assert parsed == [1] and "16" in changed.items
    (entry,) = set(cache.glob("*.npz")) - {entry}  # the changed file's own entry

    with np.load(entry) as z:
        good = dict(z)
    for damage in (b"not a zip", {"offsets": good["offsets"].astype(float)}, {"dropped": np.array([1, 2])},
                   {"user_offsets": good["user_offsets"][:-1]}, {"items": np.array([0xff], dtype=np.uint8),
                                                                 "item_offsets": np.array([0, 1])}):
        if isinstance(damage, bytes):
            entry.write_bytes(damage)
        else:  # a readable zip of mistyped or inconsistent arrays
            with open(entry, "wb") as fh:
                np.savez(fh, **{**good, **damage})
        with pytest.warns(EdgeKDWarning, match="damaged dataset cache entry"):
            rebuilt = load_data(DataSpec(format="movielens", path=str(f)), store=store)
        assert rebuilt.fingerprint() == changed.fingerprint()

    # the spec is part of the key (but what the model's input does with unknown items)
    load_data(DataSpec(format="movielens", path=str(f), min_events=4), store=store)
    load_data(DataSpec(format="movielens", path=str(f), unknown_items="skip"), store=store)
    assert len(list(cache.glob("*.npz"))) == 3


def test_the_dataset_cache_keeps_long_ids_at_their_own_size(tmp_path):
    """Ids are stored as UTF-8 bytes, not as a fixed-width array 4 x the longest id per id."""
    from edgekd.data import DATASET_CACHE, DataSpec, load_data

    long_id = "u" * 200_000 + "é"
    f = tmp_path / "u.data"
    f.write_text("".join(f"{u}\t{i}\t5\t{k}\n" for k, (u, i) in enumerate(
        [(long_id, 1), (long_id, 2), (long_id, 3)] + [(f"x{k % 1000}", k % 7) for k in range(3000)])))
    first = load_data(DataSpec(format="movielens", path=str(f)), store=tmp_path / "c")
    (entry,) = (tmp_path / "c" / DATASET_CACHE).glob("*.npz")
    assert entry.stat().st_size < 300_000
    again = load_data(DataSpec(format="movielens", path=str(f)), store=tmp_path / "c")
    assert again.users == first.users and long_id in again.users


def test_stages_share_the_stores_dataset_cache(tmp_path):
    """dataset_for (every stage after training) keeps an artifact's dataset in its store."""
    from edgekd.data import DATASET_CACHE
    from edgekd.torch_io import dataset_for

    f = tmp_path / "u.data"
    f.write_text("".join(f"{u}\t{i}\t5\t{u * 10 + i}\n" for u in (1, 2) for i in (1, 2, 3, 4)))
    checked = []

    class Stub:  # what dataset_for reads of an artifact
        path = tmp_path / "store" / "some-model"
        card = {"dataset": {"spec": DataSpec(format="movielens", path=str(f)).to_dict()}}

        def check_dataset(self, fp):
            checked.append(fp)

    ds = dataset_for(Stub())
    assert checked == [ds.fingerprint()]
    assert len(list((tmp_path / "store" / DATASET_CACHE).glob("*.npz"))) == 1
