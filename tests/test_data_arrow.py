"""The vectorised loaders (pyarrow + numpy) give the dataset the line-by-line parsers give,
or step aside for them (which name the line of anything wrong)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pyarrow", reason="the vectorised loaders are the [large] extra (pyarrow)")
from edgekd import data_arrow  # noqa: E402
from edgekd.data import DataSpec, load_data  # noqa: E402
from edgekd.errors import DataError, EdgeKDError  # noqa: E402
from tests.conftest import ML100K  # noqa: E402


def both(tmp_path, text, fmt, name="d.txt", **spec):
    p = tmp_path / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    s = DataSpec(format=fmt, path=str(p), **spec)
    return s, load_data(s, fast=True), load_data(s, fast=False)


def same(a, b):
    assert a.fingerprint() == b.fingerprint()
    assert (a.items, a.users, a.dropped_users, a.name) == (b.items, b.users, b.dropped_users, b.name)
    assert all(x.dtype == y.dtype for x, y in zip(a.sequences, b.sequences))


def fast_path_taken(s: DataSpec) -> bool:
    from edgekd.data import MAX_LINE_BYTES, _first_line

    try:
        data_arrow.read_columns(s.format, Path(s.path), _first_line(s), MAX_LINE_BYTES)
        return True
    except data_arrow.Fallback:
        return False


MOVIELENS = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in [
    (10, 7, 5, 3), (10, "008", 4, 1), (2, 7, 1, 2), (2, 3, 2, 2), (10, 3, 3, 3), (2, 12, 5, 1), (10, 12, 1, 0),
    (99, 1, 1, 1), (99, 2, 1, 1)])  # ties in time keep file order; user 99 has too few events


@pytest.mark.parametrize("fmt,text,fast", [
    ("movielens", MOVIELENS, True),
    ("movielens", MOVIELENS.replace("\t", "::"), True),                   # ratings.dat
    ("movielens", MOVIELENS.replace("\n", "\r\n"), True),
    ("movielens", "\ufeff" + MOVIELENS, True),
    ("movielens", MOVIELENS.replace("10\t", "u10\t"), True),              # text ids sort as text, after digits
    ("movielens", MOVIELENS.replace("2\t7", "007\t7").replace("2\t3", "7\t3"), True),  # leading zeros
    ("movielens", MOVIELENS.replace("10\t7", "-5\t-07"), True),           # negative ids
    ("movielens", MOVIELENS + "\n", False),                               # a blank line: Python reads it
    ("movielens", MOVIELENS.replace("12\t", " 12\t"), False),             # spaces around an id
    ("movielens", MOVIELENS.replace("99\t", "é\t"), False),               # non-ASCII id
    ("movielens", MOVIELENS.replace("\t5\t", "\t5_0\t"), False),          # a number only Python reads
    ("sasrec", "".join(f"u{k % 3} {k % 5}\n" for k in range(20)), True),
    ("sasrec", "".join(f"u{k % 3}  {k % 5}\n" for k in range(20)), False),  # two spaces: Python splits
    ("csv", "user,item,timestamp\n" + "".join(f"{k % 3},i{k % 4},{k // 2}\n" for k in range(20)), True),
    ("csv", "Timestamp, Item ,USER,x\n" + "".join(f'{k // 2},"i{k % 4}",{k % 3},z\n' for k in range(20)), True),
    ("csv", "user,item,timestamp\n" + "".join(f'{k % 3},"a,{k % 4}",{k}\n' for k in range(20)), True),
])
def test_fast_and_python_loaders_give_the_same_dataset(tmp_path, fmt, text, fast):
    s, a, b = both(tmp_path, text, fmt)
    same(a, b)
    assert fast_path_taken(s) == fast


@pytest.mark.parametrize("spec", [{"period": "early:0.5"}, {"period": "late:0.4"}, {"keep_items": ("7", "12")},
                                  {"min_events": 4}])
def test_periods_vocabularies_and_minimum_lengths_agree(tmp_path, spec):
    _, a, b = both(tmp_path, MOVIELENS * 3, "movielens", **spec)
    same(a, b)


def test_malformed_files_still_name_the_line(tmp_path):
    good = "".join(f"{k % 50}\t{k % 7}\t5\t{k}\n" for k in range(2000))
    lines = good.splitlines(keepends=True)
    for bad, match in [("1\t2\tfive\t4\n", "rating 'five' is not a number"), ("1\t2\t3\tnan\n", "not finite"),
                       ("1\t2\t3\n", "expected 4 fields"), ("1\t\x01\t3\t4\n", "control characters")]:
        p = tmp_path / "u.data"
        p.write_text("".join(lines[:1500] + [bad] + lines[1500:]))
        with pytest.raises(DataError, match=rf"u.data:1501: .*{match}"):
            load_data(DataSpec(format="movielens", path=str(p)))
    p.write_bytes(good.encode() + b"\xff\xfe\t1\t1\t1\n")
    with pytest.raises(DataError, match=r"u.data:2001: not UTF-8"):
        load_data(DataSpec(format="movielens", path=str(p)))
    p.write_text(good + "1\t2\t3\t" + "4" * (2 << 20) + "\n")
    with pytest.raises(DataError, match=r"u.data:2001: line longer"):
        load_data(DataSpec(format="movielens", path=str(p)))


def test_the_scan_counts_lines_like_python_and_refuses_lone_carriage_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(data_arrow, "SCAN_CHUNK", 7)  # lines straddle chunks
    p = tmp_path / "f"
    for text, lines in [(b"ab\ncd\n", 2), (b"ab\ncd", 2), (b"a\r\nbcdefghij\r\nk", 3), (b"", 0), (b"\n\n", 2)]:
        p.write_bytes(text)
        assert data_arrow._scan(p, 100) == lines
    for text in (b"ab\rcd\n", b"abcdef\r" + b"x\n", b"ab\r"):
        p.write_bytes(text)
        with pytest.raises(data_arrow.Fallback):
            data_arrow._scan(p, 100)
    p.write_bytes(b"ab\n" + b"x" * 30 + b"\n")
    with pytest.raises(data_arrow.Fallback, match="too long"):
        data_arrow._scan(p, 30)
    assert data_arrow._scan(p, 31) == 2


@pytest.mark.skipif(not ML100K.is_file(), reason=f"MovieLens-100k not found at {ML100K}")
def test_ml100k_has_the_same_fingerprint_either_way():
    s = DataSpec(format="movielens", path=str(ML100K))
    assert fast_path_taken(s)
    a, b = load_data(s), load_data(s, fast=False)
    same(a, b)
    assert a.fingerprint().startswith("722889a5b12eb717")  # today's parser's


FIELD = st.text(alphabet=st.sampled_from(list("0123456789-+.eE iu²\t,:\"\r\x00é")), max_size=6)
ID = st.one_of(st.integers(-20, 400).map(str), st.sampled_from(["007", "07", "-0", "u1", "a b", "x"]), FIELD)
NUM = st.one_of(st.integers(0, 50).map(str), st.sampled_from(["1.5", "1e2", " 3", "nan", "", "-0"]), FIELD)
ROWS = st.lists(st.tuples(ID, ID, NUM, NUM), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, fmt=st.sampled_from(["movielens", "movielens::", "sasrec", "csv"]),
       end=st.sampled_from(["\n", "\r\n"]), min_events=st.sampled_from([3, 4]))
def test_any_file_loads_the_same_or_fails_the_same_either_way(tmp_path, rows, fmt, end, min_events):
    if fmt.startswith("movielens"):
        sep = "::" if fmt.endswith("::") else "\t"
        text = "".join(sep.join(r) + end for r in rows)
    elif fmt == "sasrec":
        text = "".join(f"{u} {i}{end}" for u, i, _, _ in rows)
    else:
        text = "user,item,timestamp" + end + "".join(f"{u},{i},{t}{end}" for u, i, _, t in rows)
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / "data.txt"
        p.write_bytes(text.encode())
        s = DataSpec(format=fmt.rstrip(":"), path=str(p), min_events=min_events)
        out = []
        for fast in (True, False):
            try:
                out.append(load_data(s, fast=fast))
            except EdgeKDError as e:
                out.append(str(e))
    if isinstance(out[1], str):
        assert out[0] == out[1]
    else:
        same(out[0], out[1])


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 5), st.one_of(
    st.integers(-3, 3).map(float), st.sampled_from([-0.0, 0.5, 1e300, -1e300, 2.0 ** 62, 2.0 ** 53 + 2,
                                                    2.0 ** 53 + 4, 2.0 ** 56 - 1, 2.0 ** 56 + 8])
)), max_size=60))
def test_events_order_by_user_then_time_then_file_position(events):
    """The packed-key sorts give a stable sort's order: ties in time keep file order, whole or
    fractional times, wide or narrow spans (beyond 2**53 a float difference would merge times)."""
    r = np.array([u for u, _ in events], dtype=np.int64)
    t = np.array([x for _, x in events], dtype=np.float64)
    by_time = np.argsort(t, kind="stable")
    expected = by_time[np.argsort(r[by_time], kind="stable")]
    assert data_arrow._user_time_order(r, t).tolist() == expected.tolist()


def test_event_order_keeps_times_beyond_2_53_apart():
    t = np.array([2.0 ** 53 + 4, 2.0 ** 53 + 2, -1.0])  # t - min would merge the first two
    assert data_arrow._user_time_order(np.zeros(3, dtype=np.int64), t).tolist() == [2, 1, 0]


def test_event_order_beyond_packable_sizes_is_the_stable_sort(monkeypatch):
    """Above 2**31 events a rank and a position no longer pack into 63 bits: stable sorts."""
    r, t = np.array([1, 0, 1, 0]), np.array([2.0, 1.0, 1.0, 1.0])
    packed = data_arrow._user_time_order(r, t).tolist()
    monkeypatch.setattr(data_arrow, "len", lambda a: 2 ** 31 + 1 if a is t else len(a), raising=False)
    assert data_arrow._user_time_order(r, t).tolist() == packed == [1, 3, 2, 0]
