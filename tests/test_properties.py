"""Property-based tests of the parsers that take outside input: data files, target files,
artifact cards and vocab.json. For any input, edgekd either loads it or raises its own error
(one line for the CLI); it never fails with another exception and never writes anything."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekd.errors import EdgeKDError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like the files: fields from a small alphabet with separators, odd digits,
# signs, non-ASCII and control characters, so that most examples are near-valid.
FIELD = st.text(alphabet=st.sampled_from(list("0123456789-+.eE iu²٣\t,:\"'\r\x00é")), max_size=8)
LINE = st.lists(FIELD, min_size=0, max_size=5).flatmap(
    lambda fs: st.sampled_from(["\t", "::", ",", " "]).map(lambda sep: sep.join(fs)))
FILE_TEXT = st.lists(LINE, max_size=12).map(lambda ls: "\n".join(ls))
# Ids that broke the loader once, and ordinary ones.
ODD_ID = st.sampled_from(["--0", "²", "٣", "-0", "007", "-", "+1", "1e3", "9" * 4400, "١٢", "0x1", "½"])
ID = st.one_of(ODD_ID, st.integers(-50, 50).map(str), st.text(alphabet="ab-1²", min_size=1, max_size=4))
ROW = st.tuples(ID, ID, st.one_of(st.integers(0, 99).map(str), FIELD))
MOVIELENS = st.lists(ROW, min_size=1, max_size=30).map(
    lambda rows: "".join(f"{u}\t{i}\t5\t{t}\n" for u, i, t in rows))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


@SETTINGS
@given(text=st.one_of(FILE_TEXT, MOVIELENS), raw=st.binary(max_size=200),
       fmt=st.sampled_from(["movielens", "sasrec", "csv"]), as_bytes=st.booleans())
def test_data_loaders_load_or_raise_their_own_error(tmp_path, text, raw, fmt, as_bytes):
    from edgekd.data import DataSpec, load_data

    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / "data.txt"
        if as_bytes:
            p.write_bytes(raw)
        elif fmt != "movielens" and "\t5\t" in text:  # the same rows in the other formats
            rows = [r for r in (l.split("\t") for l in text.split("\n")) if len(r) == 4]
            p.write_text("".join(f"{r[0]} {r[1]}\n" for r in rows) if fmt == "sasrec" else
                         "user,item,timestamp\n" + "".join(f"{r[0]},{r[1]},{r[3]}\n" for r in rows), encoding="utf-8")
        else:
            p.write_text(("user,item,timestamp\n" if fmt == "csv" else "") + text, encoding="utf-8")
        before = _snapshot(Path(d))
        try:
            ds = load_data(DataSpec(format=fmt, path=str(p), min_events=3))
        except EdgeKDError as e:
            assert "\n" not in str(e).strip() or fmt == "csv"
        else:
            assert ds.num_items >= 1 and all(len(s) >= 3 for s in ds.sequences)
            assert len(set(ds.items)) == len(ds.items)
        assert _snapshot(Path(d)) == before


@SETTINGS
@given(ids=st.lists(st.one_of(ID, st.text(min_size=1, max_size=30)).filter(
    lambda s: s.strip() == s and s.isprintable() and " " not in s), min_size=1, max_size=20))
def test_any_printable_ids_load_and_numeric_ids_sort_numerically(tmp_path, ids):
    from edgekd.data import build_dataset, load_sasrec

    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / "s.txt"
        p.write_text("".join(f"u {i}\n" for i in ids) + "u x\nu y\n", encoding="utf-8")
        ds = build_dataset(load_sasrec(p), "s")
    numeric = [i for i in ds.items if i.isascii() and i.lstrip("-").isdigit() and i.count("-") <= 1
               and not i.startswith("--") and (i[0] != "-" or len(i) > 1)]
    as_int = [int(i) for i in numeric if len(i) < 4000]
    assert as_int == sorted(as_int)
    assert set(ds.items) == set(ids) | {"x", "y"}


TARGET_VALUE = st.one_of(st.text(max_size=30), st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(),
                         st.lists(st.text(max_size=30), max_size=3), st.dictionaries(st.text(max_size=8),
                                                                                     st.text(max_size=12), max_size=2))
TARGET_KEYS = st.sampled_from(["kind", "host", "port", "user", "threads", "ssh_options", "ssh_config", "adb",
                               "taskset", "runtimes", "batch_sizes", "device", "min_seconds", "warmup",
                               "remote_tmp", "python", "serial", "bogus"])


@SETTINGS
@given(raw=st.dictionaries(TARGET_KEYS, TARGET_VALUE, max_size=6),
       kind=st.sampled_from(["local", "ssh", "adb", None]))
def test_target_files_load_or_raise_their_own_error(tmp_path, raw, kind):
    from edgekd.targets import target_from_dict

    if kind:
        raw = {**raw, "kind": kind}
    try:
        t = target_from_dict("t", raw, "t.toml")
    except EdgeKDError:
        return
    # what loads is well-formed; and it cannot run a local command unless the user allows it
    assert t.kind in ("local", "ssh", "adb") and t.threads >= 1
    try:
        tr = t.transport()
    except EdgeKDError:
        assert t.local_commands()
    else:
        assert not t.local_commands()
        if t.kind == "ssh":
            argv = tr.base()
            assert argv[argv.index("-o") + 1] == "StrictHostKeyChecking=yes"


@SETTINGS
@given(text=st.text(max_size=300))
def test_target_file_text_loads_or_raises_its_own_error(tmp_path, text):
    from edgekd.targets import load_target

    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / "t.toml"
        p.write_text(text, encoding="utf-8")
        try:
            load_target(str(p))
        except EdgeKDError:
            pass


@pytest.fixture(scope="module")
def good_artifact(tmp_path_factory):
    from edgekd.artifact import save_artifact

    store = tmp_path_factory.mktemp("prop-store")
    return save_artifact(store, "good", "model.bin", lambda p: p.write_bytes(b"weights"),
                         {"stage": "teacher", "format": "torch", "arch_kwargs": {"num_items": 2}},
                         {"padding_index": 0, "items": ["a", "b"]})


@SETTINGS
@given(card_edit=st.dictionaries(st.sampled_from(["name", "stage", "format", "file", "sha256", "vocab_sha256",
                                                  "arch_kwargs", "dataset", "parent"]), JSONISH, max_size=3),
       whole=st.one_of(st.none(), JSONISH), vocab=st.one_of(st.none(), JSONISH))
def test_artifact_cards_and_vocabs_load_or_raise_their_own_error(tmp_path, good_artifact, card_edit, whole, vocab):
    from edgekd.artifact import load_artifact

    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        a = Path(d) / "store" / "a"
        shutil.copytree(good_artifact.path, a)
        card = json.loads((a / "artifact.json").read_text())
        card.update(card_edit)
        (a / "artifact.json").write_text(json.dumps(whole if whole is not None else card))
        if vocab is not None:
            (a / "vocab.json").write_text(json.dumps(vocab))
        before = _snapshot(Path(d))
        try:
            loaded = load_artifact(a)
        except EdgeKDError as e:
            assert str(e).strip() and "\n" not in str(e)
        else:
            # what loads is safe to use: its payload is inside it and its vocab fits the model
            assert loaded.file.parent == a and loaded.file.is_file() and not loaded.file.is_symlink()
            assert len(loaded.vocab()["items"]) == 2
        assert _snapshot(Path(d)) == before


@SETTINGS
@given(name=st.text(max_size=40))
def test_names_are_single_safe_components_or_usage_errors(tmp_path, name):
    from edgekd.artifact import check_name
    from edgekd.errors import ConfigError

    try:
        check_name(name)
    except ConfigError:
        return
    assert Path(name).name == name and name not in (".", "..") and os.sep not in name
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
