"""Interaction data: loaders, the synthetic default, leave-one-out splits and batches.

Every loader returns events (user, item, timestamp) in file order; `build_dataset` orders each
user's events by timestamp (a stable sort, so ties keep file order), remaps ids to contiguous
indices (0 = padding) and keeps the mapping, which travels with every artifact as vocab.json.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import re
import stat
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import ConfigError, DataError, EdgeKDWarning
from .extras import LARGE_HINT, arrow_available

Event = tuple[str, str, float]  # (user, item, timestamp)
OOV_ID = "<oov>"  # the item every pruned item becomes (vocabulary pruning)
UNKNOWN_ITEMS = ("skip", "oov")  # what a model's input does with it: see DataSpec.unknown_items

MIN_EVENTS = 3  # leave-one-out needs at least one training item, one validation and one test


# ---------------------------------------------------------------- loaders

_LOADERS: dict[str, Callable[[Path], list[Event]]] = {}


def register_loader(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def list_formats() -> list[str]:
    return sorted(_LOADERS) + ["synthetic"]


MAX_LINE_BYTES = 1 << 20  # a longer line is malformed input, not data: refused before it is held whole


def _raw_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its newline) of a UTF-8 file, one bounded line at a time: a line
    that is not UTF-8 or longer than MAX_LINE_BYTES is an error naming the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="check the --data path")
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES} bytes; not an interaction file?")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]  # a byte-order mark
            yield lineno, text


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    for lineno, line in _raw_lines(path):
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line


def _number(path: Path, lineno: int, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{lineno}: {what} {text!r} is not finite")
    return value


def _id(path: Path, lineno: int, what: str, text: str) -> str:
    text = text.strip()
    if not text:
        raise DataError(f"{path}:{lineno}: empty {what} id")
    if not text.isprintable():
        raise DataError(f"{path}:{lineno}: {what} id {text[:40]!r} has control characters")
    return text


@register_loader("movielens")
def load_movielens(path: Path) -> list[Event]:
    """MovieLens: `u.data` (user TAB item TAB rating TAB timestamp) or `ratings.dat`
    (user::item::rating::timestamp). The separator is taken from the first line."""
    path = Path(path)
    events: list[Event] = []
    sep = None
    for lineno, line in _open_lines(path):
        if sep is None:
            sep = "::" if "::" in line else "\t"
        parts = line.split(sep)
        if len(parts) != 4:
            shown = "TAB" if sep == "\t" else sep
            raise DataError(f"{path}:{lineno}: expected 4 fields separated by {shown} "
                            f"(user, item, rating, timestamp), got {len(parts)}")
        _number(path, lineno, "rating", parts[2])
        events.append((_id(path, lineno, "user", parts[0]), _id(path, lineno, "item", parts[1]),
                       _number(path, lineno, "timestamp", parts[3])))
    if not events:
        raise DataError(f"{path}: no interactions in file")
    return events


@register_loader("sasrec")
def load_sasrec(path: Path) -> list[Event]:
    """SASRec text: `user item` per line, each user's lines already in order."""
    path = Path(path)
    events: list[Event] = []
    for lineno, line in _open_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 2 fields 'user item', got {len(parts)}")
        events.append((_id(path, lineno, "user", parts[0]), _id(path, lineno, "item", parts[1]), float(lineno)))
    if not events:
        raise DataError(f"{path}: no interactions in file")
    return events


@register_loader("csv")
def load_csv(path: Path, user: str = "user", item: str = "item", timestamp: str = "timestamp") -> list[Event]:
    """CSV with a header naming the columns user, item and timestamp (other columns ignored)."""
    path = Path(path)
    events: list[Event] = []
    # csv reads the bounded, decoded lines (a quoted field may span lines)
    reader = csv.reader(line for _, line in _raw_lines(path))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    except csv.Error as e:
        raise DataError(f"{path}:1: {e}") from None
    header = [h.strip().lower() for h in header]
    missing = [c for c in (user, item, timestamp) if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)}; "
                        f"found {', '.join(header) or 'nothing'}")
    iu, ii, it = header.index(user), header.index(item), header.index(timestamp)
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} columns, got {len(row)}")
            events.append((_id(path, lineno, "user", row[iu]), _id(path, lineno, "item", row[ii]),
                           _number(path, lineno, "timestamp", row[it])))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    if not events:
        raise DataError(f"{path}: no interactions in file")
    return events


# ---------------------------------------------------------------- the synthetic default

@dataclass(frozen=True)
class SyntheticConfig:
    """A synthetic catalogue with structure a sequence model can learn and popularity can't:
    Zipf item popularity, users with a few latent tastes, and Markov-like sequential structure
    (each item has a few likely successors within its taste)."""

    users: int = 2000
    items: int = 800
    mean_length: int = 40
    tastes: int = 20
    tastes_per_user: int = 2
    successors: int = 3
    p_markov: float = 0.6
    zipf: float = 1.1
    seed: int = 0
    # Every item occurs at least this often: the occurrences the draws left short are added to
    # random users at random places (as in a catalogue whose every item has been seen, like
    # k-core filtered data). 0 keeps the draws as they are.
    min_count: int = 0

    def __post_init__(self):
        for name in ("users", "items", "mean_length", "tastes", "tastes_per_user", "successors"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synthetic {name} must be >= 1, got {getattr(self, name)}")
        if self.tastes_per_user > self.tastes:
            raise ConfigError(f"synthetic tastes_per_user ({self.tastes_per_user}) exceeds tastes ({self.tastes})")
        if self.items < self.tastes:
            raise ConfigError(f"synthetic items ({self.items}) must be >= tastes ({self.tastes})")
        if not 0.0 <= self.p_markov <= 1.0:
            raise ConfigError(f"synthetic p_markov must be in [0, 1], got {self.p_markov}")
        if self.mean_length < MIN_EVENTS:
            raise ConfigError(f"synthetic mean_length must be >= {MIN_EVENTS}, got {self.mean_length}")
        if self.min_count < 0:
            raise ConfigError(f"synthetic min_count must be >= 0, got {self.min_count}")


def _cdf(p: np.ndarray) -> np.ndarray:
    """The cumulative table numpy's Generator.choice(a, p=p) builds on every call."""
    c = p.cumsum()
    c /= c[-1]
    return c


def generate_synthetic(cfg: SyntheticConfig = SyntheticConfig()) -> list[Event]:
    """Users who mix a few tastes (item clusters), follow item-to-item successions, and sometimes
    pick anything by popularity (Zipf). Each weighted draw is numpy's own `choice(a, p=p)`
    (a uniform double looked up in the cumulative table) with the tables built once instead of
    per draw: the same events for a seed as drawing with `choice`, in time independent of the
    catalogue's size (1M items: seconds, not hours)."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.items
    popularity = 1.0 / np.arange(1, n + 1) ** cfg.zipf
    popularity = popularity[rng.permutation(n)]  # popular items spread over the tastes
    taste_of = rng.integers(0, cfg.tastes, size=n)
    taste_of[rng.permutation(n)[: cfg.tastes]] = np.arange(cfg.tastes)  # every taste non-empty
    members = [np.flatnonzero(taste_of == t) for t in range(cfg.tastes)]
    taste_cdf = [_cdf(popularity[m] / popularity[m].sum()) for m in members]
    # Successors: a few items of the same taste, chosen by popularity, with decaying weights.
    u = rng.random((n, cfg.successors))  # item i's draws, in the order choice(size=successors) makes them
    succ = np.empty((n, cfg.successors), dtype=np.int64)
    for t, m in enumerate(members):
        rows = taste_of == t
        succ[rows] = m[taste_cdf[t].searchsorted(u[rows], side="right")]
    succ_w = 0.5 ** np.arange(cfg.successors)
    succ_w /= succ_w.sum()
    succ_cdf = _cdf(succ_w)
    global_cdf = _cdf(popularity / popularity.sum())

    events: list[Event] = []
    lengths = np.empty(cfg.users, dtype=np.int64)
    for user in range(cfg.users):
        length = max(MIN_EVENTS, int(rng.geometric(1.0 / cfg.mean_length)))
        length = min(length, 8 * cfg.mean_length)
        lengths[user] = length
        tastes = rng.choice(cfg.tastes, size=cfg.tastes_per_user, replace=False)
        mix_cdf = _cdf(rng.dirichlet(np.ones(cfg.tastes_per_user)))
        cur = -1
        for t in range(length):
            r = rng.random()
            if cur >= 0 and r < cfg.p_markov:
                nxt = succ[cur, succ_cdf.searchsorted(rng.random(), side="right")]
            elif r < cfg.p_markov + (1 - cfg.p_markov) * 0.8:
                k = tastes[mix_cdf.searchsorted(rng.random(), side="right")]
                nxt = members[k][taste_cdf[k].searchsorted(rng.random(), side="right")]
            else:
                nxt = global_cdf.searchsorted(rng.random(), side="right")
            cur = int(nxt)
            events.append((f"u{user + 1}", f"i{cur + 1}", float(t)))
    if cfg.min_count:
        # drawn after every user's events, so min_count changes nothing that came before
        counts = np.bincount([int(e[1][1:]) - 1 for e in events], minlength=n)
        short = np.repeat(np.arange(n), np.maximum(cfg.min_count - counts, 0))
        users = rng.integers(0, cfg.users, size=len(short))
        # a place among the user's events: a timestamp strictly between two of theirs (or first)
        ts = np.floor(rng.random(len(short)) * lengths[users]) - 0.5
        events.extend((f"u{u + 1}", f"i{i + 1}", float(t)) for u, i, t in zip(users, short, ts))
    return events


# ---------------------------------------------------------------- the dataset

@dataclass(frozen=True)
class DataSpec:
    """Where a dataset comes from: enough to load it again in a later stage."""

    format: str = "synthetic"
    path: str | None = None
    synthetic: dict = field(default_factory=dict)
    min_events: int = MIN_EVENTS
    # A time period of the events: "early:Q" keeps events before the Q-quantile of all
    # timestamps, "late:Q" the rest (e.g. a teacher on early:0.5, a student on late:0.5).
    period: str | None = None
    # Vocabulary pruning: only these original item ids stay items; every other item becomes the
    # one out-of-vocabulary item OOV_ID (the last index), which is never recommended.
    keep_items: tuple | None = None
    # What a model's input does with an out-of-vocabulary item: "skip" leaves it out of the
    # sequence (the items around it close up), "oov" feeds the OOV index in its place. A target
    # that is out of the vocabulary stays in the evaluation either way, as a miss.
    unknown_items: str = "oov"

    def __post_init__(self):
        if self.period is not None:
            self.period_bounds()
        if self.keep_items is not None:
            object.__setattr__(self, "keep_items", tuple(str(i) for i in self.keep_items))
            if not self.keep_items:
                raise ConfigError("keep_items is empty: a vocabulary needs at least one item")
        if self.unknown_items not in UNKNOWN_ITEMS:
            raise ConfigError(f"unknown_items must be one of {', '.join(UNKNOWN_ITEMS)}, got {self.unknown_items!r}")
        if self.format not in list_formats():
            raise ConfigError(f"unknown data format {self.format!r}; choose one of {', '.join(list_formats())}")
        if self.format != "synthetic" and not self.path:
            raise ConfigError(f"data format {self.format!r} needs a path (--data)")
        if self.min_events < MIN_EVENTS:
            raise ConfigError(f"min_events must be >= {MIN_EVENTS}, got {self.min_events}")

    def period_bounds(self) -> tuple[str, float]:
        side, _, q = (self.period or "").partition(":")
        try:
            qv = float(q)
        except ValueError:
            qv = -1.0
        if side not in ("early", "late") or not 0 < qv < 1:
            raise ConfigError(f"period must be early:Q or late:Q with 0 < Q < 1, got {self.period!r}")
        return side, qv

    @property
    def name(self) -> str:
        if self.format == "synthetic":
            base = "synthetic"
        else:
            p = Path(self.path)
            base = p.parent.name if p.stem in ("u", "ratings", "data") else p.stem
            # names of artifacts derive from it: keep it a safe name whatever the file is called
            base = re.sub(r"[^A-Za-z0-9._+=-]+", "-", base).strip(".-")[:64] or "data"
        return base if self.period is None else f"{base}-{self.period.replace(':', '')}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    """Users' item sequences in time order, as internal indices 1..num_items."""

    name: str
    sequences: list[np.ndarray]
    items: list[str]  # items[k] is the original id of internal index k + 1
    users: list[str]
    dropped_users: int = 0
    spec: DataSpec | None = None

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_events(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def fingerprint(self) -> str:
        """sha256 of the item mapping and every sequence: two datasets with the same
        fingerprint give the same splits."""
        h = hashlib.sha256()
        h.update(json.dumps(self.items).encode())
        for s in self.sequences:
            h.update(np.asarray(s, dtype="<i4").tobytes())
            h.update(b"|")
        return h.hexdigest()

    @property
    def oov_index(self) -> int | None:
        """The index of the out-of-vocabulary item (after vocabulary pruning), else None."""
        return len(self.items) if self.items and self.items[-1] == OOV_ID else None

    def vocab(self) -> dict:
        v = {
            "padding_index": 0,
            "note": "input index k+1 and output column k are the item items[k]",
            "items": self.items,
        }
        if self.oov_index is not None:
            v["oov_index"] = self.oov_index
            v["unknown_items"] = self.unknown_items
            if self.unknown_items == "skip":
                v["oov_note"] = (f"items not in this vocabulary: leave them out of the input sequence, then take "
                                 f"the last maxlen items (the model was trained that way); output column "
                                 f"{self.oov_index - 1} is not an item and must not be recommended")
            else:
                v["oov_note"] = (f"items not in this vocabulary: feed index {self.oov_index}; its output column "
                                 f"{self.oov_index - 1} is not an item and must not be recommended")
        return v

    @property
    def unknown_items(self) -> str:
        return self.spec.unknown_items if self.spec is not None else "oov"

    def _inputs(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        """Sequences as a model's input sees them: without the OOV item when it is skipped."""
        if self.oov_index is None or self.unknown_items != "skip":
            return seqs
        return [s[s != self.oov_index] for s in seqs]

    # Leave-one-out: the last item is the test target, the second-to-last validation.
    def train_sequences(self) -> list[np.ndarray]:
        return self._inputs([s[:-2] for s in self.sequences])

    def eval_split(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) for 'valid' or 'test'. The targets are every user's, out-of-
        vocabulary ones included (a pruned model cannot recommend them: a miss)."""
        if split == "valid":
            return self._inputs([s[:-2] for s in self.sequences]), np.array([s[-2] for s in self.sequences])
        if split == "test":
            return self._inputs([s[:-1] for s in self.sequences]), np.array([s[-1] for s in self.sequences])
        raise ConfigError(f"unknown split {split!r}; use 'valid' or 'test'")

    def stats(self) -> dict:
        lengths = np.array([len(s) for s in self.sequences])
        return {
            "name": self.name, "users": self.num_users, "items": self.num_items,
            "events": self.num_events, "dropped_users": self.dropped_users,
            "mean_length": round(float(lengths.mean()), 2), "max_length": int(lengths.max()),
            "fingerprint": self.fingerprint()[:16],
        }


def _sort_key(x: str):
    """Ids are strings; ASCII-digit ids sort numerically (without int(), which refuses very
    long numbers), before every other id, which sort as text."""
    neg = x.startswith("-")
    digits = x[1:] if neg else x
    if not (digits.isascii() and digits.isdigit()):
        return (1, 0, 0, x)
    d = digits.lstrip("0") or "0"
    if neg and d != "0":  # larger magnitude first among negatives
        return (0, -1, -len(d), tuple(-ord(c) for c in d), x)
    return (0, 0, len(d), d, x)


def build_dataset(events: Iterable[Event], name: str, min_events: int = MIN_EVENTS,
                  spec: DataSpec | None = None) -> Dataset:
    by_user: dict[str, list[tuple[float, str]]] = {}
    for user, item, ts in events:
        by_user.setdefault(user, []).append((ts, item))
    kept: dict[str, list[str]] = {}
    dropped = 0
    for user, evs in by_user.items():
        if len(evs) < min_events:
            dropped += 1
            continue
        evs.sort(key=lambda e: e[0])  # stable: ties keep file order
        kept[user] = [item for _, item in evs]
    if not kept:
        raise _no_user_error(name, min_events, dropped)
    items = sorted({i for seq in kept.values() for i in seq} - {OOV_ID}, key=_sort_key)
    if any(OOV_ID in seq for seq in kept.values()):
        items.append(OOV_ID)  # the out-of-vocabulary item is always the last index
    index = {item: k + 1 for k, item in enumerate(items)}
    users = sorted(kept, key=_sort_key)
    sequences = [np.array([index[i] for i in kept[u]], dtype=np.int64) for u in users]
    return Dataset(name=name, sequences=sequences, items=items, users=users,
                   dropped_users=dropped, spec=spec)


def _first_line(spec: DataSpec) -> str | None:
    """The line the Python parser decides the layout on (csv: the header; else the first
    non-blank line), or None when there is none to read."""
    try:
        lines = _raw_lines(Path(spec.path)) if spec.format == "csv" else _open_lines(Path(spec.path))
        for _, line in lines:
            return line.rstrip("\r\n")
    except DataError:
        return None
    return None


def _load_fast(spec: DataSpec) -> Dataset:
    """The vectorised path (data_arrow): the same dataset as the Python parsers, or Fallback."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from . import data_arrow

    users, items, ts = data_arrow.read_columns(spec.format, Path(spec.path), _first_line(spec), MAX_LINE_BYTES)
    if spec.period is not None:
        side, q = spec.period_bounds()
        cut = float(np.quantile(ts, q))
        mask = (ts < cut) == (side == "early")
        users, items, ts = users.filter(pa.array(mask)), items.filter(pa.array(mask)), ts[mask]
    if spec.keep_items is not None:  # on the distinct ids: every other one becomes OOV_ID
        keep = pc.is_in(items.dictionary, value_set=pa.array(list(spec.keep_items), type=pa.string()))
        items = pa.DictionaryArray.from_arrays(items.indices, pc.if_else(keep, items.dictionary, OOV_ID))
    built, dropped = data_arrow.build_arrays(users, items, ts, min_events=spec.min_events, oov_id=OOV_ID,
                                             key=_sort_key)
    if built is None:
        raise _no_user_error(spec.name, spec.min_events, dropped)
    sequences, item_list, user_list = built
    return Dataset(name=spec.name, sequences=sequences, items=item_list, users=user_list,
                   dropped_users=dropped, spec=spec)


def _no_user_error(name: str, min_events: int, dropped: int) -> DataError:
    return DataError(f"{name}: no user has at least {min_events} events ({dropped} users dropped)")


LARGE_FILE_BYTES = 50 * 10**6  # above this, reading without pyarrow suggests the [large] extra
_suggested_large = False


def _suggest_large(path: Path) -> None:
    """Once per process: a file this large reads faster with the [large] extra (pyarrow)."""
    global _suggested_large
    try:
        size = path.stat().st_size
    except OSError:
        return  # the parser names a missing file
    if size > LARGE_FILE_BYTES and not _suggested_large:
        _suggested_large = True
        warnings.warn(f"{path}: {size / 1e6:.0f} MB read line by line; {LARGE_HINT} reads it faster",
                      EdgeKDWarning, stacklevel=3)


DATASET_CACHE = ".datasets"  # built datasets, under an artifact store (load_data's `store`)


def load_data(spec: DataSpec, fast: bool = True, store: Path | None = None) -> Dataset:
    """The dataset a spec names. Files in the movielens, sasrec and csv formats are read
    vectorised (pyarrow, numpy) when pyarrow (the [large] extra) is installed and they are
    plainly well formed, else (and with fast=False) line by line in Python, which names the line
    of anything wrong; both give the same dataset.

    With `store` (an artifact store), a file's built dataset is kept in its DATASET_CACHE, keyed
    by the file's sha256, the spec and the loaders' own source, so that later stages do not parse
    the file again; an entry that cannot be read is rebuilt."""
    key = _cache_key(spec) if store is not None else None
    entry = Path(store) / DATASET_CACHE / f"{key[0]}.npz" if key else None
    if entry is not None and entry.is_file():
        ds = _read_cached(entry, spec)
        if ds is not None:
            return ds
    ds = _load_uncached(spec, fast)
    if entry is not None and _file_state(spec.path) == key[1]:  # not if the file changed meanwhile
        _write_cached(entry, ds)
    return ds


@functools.lru_cache(maxsize=1)
def _loaders_digest() -> str:
    """The source of the code that builds datasets: a cache entry from other code is not used."""
    h = hashlib.sha256()
    for name in ("data.py", "data_arrow.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def _file_state(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _cache_key(spec: DataSpec) -> tuple[str, tuple] | None:
    """(entry name, the file's state when hashed) for a file spec: from the file's bytes, the
    spec (but `unknown_items`, which the built dataset does not depend on) and the loaders'
    source. None for synthetic data (generated, not parsed), a vocabulary-pruned spec (one per
    pruned model: not worth a full copy each), or anything but a regular, readable file."""
    if spec.format == "synthetic" or not spec.path or spec.keep_items is not None:
        return None
    state = _file_state(spec.path)
    if state is None:
        return None
    fields = {k: v for k, v in spec.to_dict().items() if k != "unknown_items"}
    h = hashlib.sha256(json.dumps([_loaders_digest(), fields], sort_keys=True, default=str).encode())
    try:
        with open(spec.path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    except OSError:
        return None
    return h.hexdigest()[:40], state


def _ids_blob(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids as one UTF-8 byte array and their byte offsets (a fixed-width string array would
    take 4 x the longest id for every id)."""
    encoded = [i.encode("utf-8") for i in ids]
    return (np.frombuffer(b"".join(encoded), dtype=np.uint8),
            np.concatenate([[0], np.cumsum([len(e) for e in encoded], dtype=np.int64)]).astype(np.int64))


def _ids_from(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _read_cached(entry: Path, spec: DataSpec) -> Dataset | None:
    """The dataset in a cache entry, read as plain arrays (no pickles; the zip's CRCs catch a
    damaged file), or None, with a warning, when it cannot be read as one."""
    try:
        with np.load(entry, allow_pickle=False) as z:
            a = {k: z[k] for k in ("sequences", "offsets", "items", "item_offsets", "users", "user_offsets",
                                   "dropped")}
        offsets = a["offsets"]
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(a["sequences"]) \
                or (np.diff(offsets) < 1).any() or a["sequences"].ndim != 1 or a["dropped"].shape != ():
            raise ValueError("inconsistent arrays")
        users = _ids_from(a["users"], a["user_offsets"])
        if len(users) != len(offsets) - 1:
            raise ValueError("inconsistent arrays")
        return Dataset(name=spec.name, sequences=np.split(a["sequences"].astype(np.int64), offsets[1:-1]),
                       items=_ids_from(a["items"], a["item_offsets"]), users=users,
                       dropped_users=int(a["dropped"]), spec=spec)
    except Exception:  # a cache: whatever is wrong with an entry, the file is read again
        warnings.warn(f"{entry}: a damaged dataset cache entry; reading {spec.path} again", EdgeKDWarning,
                      stacklevel=3)
        return None


def _write_cached(entry: Path, ds: Dataset) -> None:
    """Write the entry whole or not at all (a temporary file of its own, then a rename)."""
    import tempfile

    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent)
        items, item_offsets = _ids_blob(ds.items)
        users, user_offsets = _ids_blob(ds.users)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, sequences=np.concatenate(ds.sequences).astype(np.int32),
                     offsets=np.concatenate([[0], np.cumsum([len(s) for s in ds.sequences])]).astype(np.int64),
                     items=items, item_offsets=item_offsets, users=users, user_offsets=user_offsets,
                     dropped=np.int64(ds.dropped_users))
        os.replace(tmp, entry)
        tmp = None
    except OSError as e:
        warnings.warn(f"{entry}: the dataset was not cached ({e})", EdgeKDWarning, stacklevel=3)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _load_uncached(spec: DataSpec, fast: bool) -> Dataset:
    if fast and spec.format in ("movielens", "sasrec", "csv"):
        if arrow_available():
            from .data_arrow import Fallback

            try:
                return _load_fast(spec)
            except Fallback:
                pass
        else:
            _suggest_large(Path(spec.path))
    if spec.format == "synthetic":
        cfg = SyntheticConfig(**spec.synthetic)
        events = generate_synthetic(cfg)
    else:
        events = _LOADERS[spec.format](Path(spec.path))
    if spec.period is not None:
        side, q = spec.period_bounds()
        cut = float(np.quantile(np.array([e[2] for e in events], dtype=np.float64), q))
        events = [e for e in events if (e[2] < cut) == (side == "early")]
    if spec.keep_items is not None:
        keep = set(spec.keep_items)
        events = [(u, i if i in keep else OOV_ID, t) for u, i, t in events]
    return build_dataset(events, name=spec.name, min_events=spec.min_events, spec=spec)


def write_sasrec_text(ds: Dataset, path: Path) -> Path:
    """Write every user's full sequence as `user item` lines with 1-based contiguous ids,
    the input format of the reference SASRec implementations, which make the same
    leave-one-out split (last item test, second-to-last validation)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the file to write, e.g. {path / 'sequences.txt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            for u, seq in enumerate(ds.sequences, 1):
                f.write("".join(f"{u} {int(i)}\n" for i in seq))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- batches

def pad_left(seqs: list[np.ndarray], maxlen: int) -> np.ndarray:
    """The last `maxlen` items of each sequence, left-padded with 0: [len(seqs), maxlen] int64."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-maxlen:]
        if len(s):
            out[r, maxlen - len(s):] = s
    return out


def training_pairs(train_seqs: list[np.ndarray], maxlen: int, windows: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets for every position: each row is a window of a user's
    training sequence shifted by one, left-padded; target 0 marks padding (no loss).

    With `windows`, a history longer than `maxlen` is cut, from its end, into consecutive
    windows of `maxlen` transitions, so that its earlier part is trained on too instead of
    being dropped (each window still reads only its own items)."""
    xs, ys = [], []
    for s in train_seqs:
        if len(s) < 2:
            continue
        end = len(s)
        while end >= 2:
            start = max(0, end - maxlen - 1)
            xs.append(s[start:end - 1])
            ys.append(s[start + 1:end])
            if not windows:
                break
            end = start + 1  # the next window ends where this one's first input was
    return pad_left(xs, maxlen), pad_left(ys, maxlen)
