"""The vectorised path of the data loaders: pyarrow.csv reads the columns, numpy builds the
dataset (index mapping, per-user time order) without a Python object per event. pyarrow is the
`edgekd[large]` extra: `data.load_data` imports this module only when it is installed.

It gives exactly what the line-by-line parsers in `data` give (the same fingerprint) or it steps
aside: whenever a file is anything but plainly well formed (a line pyarrow cannot parse, a blank
or over-long line, a lone carriage return, an id that is not plain printable ASCII, a number that
is not finite, no rows), `read_columns` raises `Fallback` and `data.load_data` runs the Python
parser, which names the file and line of what is wrong or loads the odd-but-valid file itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# An id the fast path takes as is: plain printable ASCII without surrounding spaces (for these,
# Python's strip() and isprintable() are no-ops and true). Anything else: the Python parser.
_ID = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
_CSV_ID = r'^[\x21\x23-\x7e]([\x20\x21\x23-\x7e]*[\x21\x23-\x7e])?$'  # no quote: csv quoting rules differ
SCAN_CHUNK = 16 << 20
BLOCK_SIZE = 4 << 20


class Fallback(Exception):
    """The fast path does not take this file: let the Python parser read it."""


def _scan(path: Path, max_line: int) -> int:
    """Lines in the file as the Python parser counts them (bounded chunks; nothing held whole).
    Falls back on a line longer than `max_line` bytes or a carriage return that does not end a
    line (pyarrow would split there, Python does not)."""
    lines, longest, carry, prev_cr = 0, 0, 0, False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(SCAN_CHUNK)
            if not chunk:
                break
            cr = chunk.count(b"\r")
            if cr and (cr != chunk.count(b"\r\n") + (chunk.endswith(b"\r"))):
                raise Fallback("a carriage return inside a line")
            if prev_cr and not chunk.startswith(b"\n"):
                raise Fallback("a carriage return inside a line")
            prev_cr = chunk.endswith(b"\r")
            nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            if len(nl):
                longest = max(longest, carry + int(nl[0]) + 1, int(np.diff(nl).max(initial=0)))
                carry = len(chunk) - int(nl[-1]) - 1
                lines += len(nl)
            else:
                carry += len(chunk)
            if max(longest, carry) > max_line:
                raise Fallback("a line too long")
    if prev_cr:
        raise Fallback("a carriage return at the end")
    return lines + (carry > 0)


def _read(path: Path, *, delimiter: str, names: list[str] | None, types: dict, quote: bool,
          include: list[str] | None = None) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, block_size=BLOCK_SIZE),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quote else False,
                                             ignore_empty_lines=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=include,
                                                 null_values=[], strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False, check_utf8=True))
    except (pa.ArrowException, ValueError) as e:
        raise Fallback(str(e)) from None


def _ids(col: pa.ChunkedArray, pattern: str = _ID) -> pa.DictionaryArray:
    """The column dictionary-encoded (each distinct id once), its distinct ids checked."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count:
        raise Fallback("a missing id")
    enc = pc.dictionary_encode(col)
    if not pc.all(pc.match_substring_regex(enc.dictionary, pattern)).as_py():
        raise Fallback("an id that is not plain printable ASCII")
    return enc


def _finite(col: pa.ChunkedArray) -> np.ndarray:
    if col.null_count:
        raise Fallback("a missing number")
    a = col.to_numpy().astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise Fallback("a number that is not finite")
    return a


def read_columns(fmt: str, path: Path, first_line: str | None,
                 max_line: int) -> tuple[pa.DictionaryArray, pa.DictionaryArray, np.ndarray]:
    """(users, items, timestamps) of a movielens, sasrec or csv file, in file order, as the
    Python loader of that format reads them (ids dictionary-encoded); Fallback when in any doubt."""
    path = Path(path)
    if not path.is_file() or first_line is None:
        raise Fallback("no file or no lines")
    lines = _scan(path, max_line)
    s, f = pa.string(), pa.float64()
    if fmt == "movielens":
        if "::" in first_line:  # user::item::rating::timestamp read with ':' (empty fields between)
            names = [f"c{k}" for k in range(7)]
            t = _read(path, delimiter=":", names=names, quote=False, types={n: s for n in names[:6:2] + names[1:7:2]}
                      | {"c4": f, "c6": f})
            for n in ("c1", "c3", "c5"):
                if not pc.all(pc.equal(t[n], "")).as_py():
                    raise Fallback("a ':' inside a field")
            user, item, rating, ts = "c0", "c2", "c4", "c6"
        else:
            t = _read(path, delimiter="\t", names=["u", "i", "r", "t"], quote=False,
                      types={"u": s, "i": s, "r": f, "t": f})
            user, item, rating, ts = "u", "i", "r", "t"
        rows = t.num_rows
        if t[rating].null_count or not pc.all(pc.is_finite(t[rating])).as_py():
            raise Fallback("a rating that is missing or not finite")
        out = _ids(t[user]), _ids(t[item]), _finite(t[ts])
    elif fmt == "sasrec":
        t = _read(path, delimiter=" ", names=["u", "i"], quote=False, types={"u": s, "i": s})
        rows = t.num_rows
        out = _ids(t["u"]), _ids(t["i"]), np.arange(1, rows + 1, dtype=np.float64)  # the line number
    elif fmt == "csv":
        header = [h.strip().lower() for h in first_line.split(",")]
        if '"' in first_line or len(set(header)) != len(header) or not {"user", "item", "timestamp"} <= set(header):
            raise Fallback("a header the Python parser should judge")
        raw = [h for h in first_line.split(",")]
        orig = {h.strip().lower(): r for h, r in zip(header, raw)}
        cols = [orig["user"], orig["item"], orig["timestamp"]]
        t = _read(path, delimiter=",", names=None, quote=True, include=cols,
                  types={cols[0]: s, cols[1]: s, cols[2]: f})
        rows = t.num_rows + 1
        out = _ids(t[cols[0]], _CSV_ID), _ids(t[cols[1]], _CSV_ID), _finite(t[cols[2]])
    else:
        raise Fallback(f"no fast reader for {fmt}")
    if rows != lines or not len(out[2]):
        raise Fallback("blank lines or no rows")
    return out


# ---------------------------------------------------------------- the dataset, vectorised

def sort_order(values: pa.Array, key) -> np.ndarray:
    """Positions of `values` (distinct id strings) in `key` order (data._sort_key). Plain
    non-negative integers without leading zeros are ordered as int64 at once; others by `key`."""
    if len(values) and pc.all(pc.match_substring_regex(values, r"^(0|[1-9][0-9]{0,17})$")).as_py():
        return np.argsort(pc.cast(values, pa.int64()).to_numpy(), kind="stable")
    vals = values.to_pylist()
    return np.array(sorted(range(len(vals)), key=lambda k: key(vals[k])), dtype=np.int64)


def build_arrays(users: pa.DictionaryArray, items: pa.DictionaryArray, ts: np.ndarray, *, min_events: int,
                 oov_id: str, key):
    """What data.build_dataset computes from event tuples, from columns: (sequences, items,
    users, dropped). Each user's events in time order (stable: ties keep file order), users and
    items in `key` order of their ids, the out-of-vocabulary item last. A dictionary may hold
    ids no event uses (after a period filter) and, for items, the OOV id more than once."""
    ucode, uvals = users.indices.to_numpy(), users.dictionary
    counts = np.bincount(ucode, minlength=len(uvals))
    keep_u = counts >= min_events
    dropped = int(((counts > 0) & ~keep_u).sum())
    if not keep_u.any():
        return None, dropped
    ev = slice(None) if keep_u.all() else keep_u[ucode]  # a slice: no copies when every user stays
    kept_users = np.flatnonzero(keep_u)
    uorder = kept_users[sort_order(uvals.take(pa.array(kept_users)), key)]
    urank = np.full(len(uvals), -1, dtype=np.int64)
    urank[uorder] = np.arange(len(uorder))

    icode, ivals = items.indices.to_numpy(), items.dictionary
    present = np.zeros(len(ivals), dtype=bool)
    present[icode[ev]] = True
    oov = pc.equal(ivals, oov_id).to_numpy(zero_copy_only=False)
    has_oov = bool((present & oov).any())
    real = np.flatnonzero(present & ~oov)
    iorder = real[sort_order(ivals.take(pa.array(real)), key)]
    index = np.zeros(len(ivals), dtype=np.int64)
    index[iorder] = np.arange(1, len(iorder) + 1)
    item_list = ivals.take(pa.array(iorder)).to_pylist()
    if has_oov:
        index[oov] = len(iorder) + 1
        item_list.append(oov_id)

    r, c, t = urank[ucode[ev]], icode[ev], ts[ev]
    seq = index[c[_user_time_order(r, t)]]
    lengths = np.bincount(r, minlength=len(uorder))
    sequences = np.split(seq, np.cumsum(lengths)[:-1])
    return (sequences, item_list, uvals.take(pa.array(uorder)).to_pylist()), dropped


def _user_time_order(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Event order by user, then time, then file position: two plain sorts of packed int64 keys
    (time rank, then user, each shifted above the position's bits), several times faster than a
    stable argsort of n keys."""
    n = len(t)
    if not n:
        return np.zeros(0, dtype=np.int64)
    bits = max(1, (n - 1).bit_length())
    if 2 * bits > 62:  # too many events to pack a rank and a position: stable sorts
        o = np.argsort(t, kind="stable")
        return o[np.argsort(r[o], kind="stable")]
    low = np.int64((1 << bits) - 1)
    lo, hi = float(t.min()), float(t.max())
    exact = -2.0 ** 53 < lo and hi < 2.0 ** 53  # whole numbers a float64 difference keeps apart
    if exact and hi - lo < 2.0 ** (62 - bits) and (t == np.floor(t)).all():
        key = (t - lo).astype(np.int64)            # whole-number times: their offsets
    else:
        key = np.unique(t, return_inverse=True)[1].astype(np.int64, copy=False).reshape(-1)  # their ranks
    pos = np.arange(n, dtype=np.int64)
    key <<= bits
    key |= pos
    key.sort()
    key &= low                                     # positions by time, then file position
    order = r[key].astype(np.int64, copy=False)
    order <<= bits
    order |= pos
    order.sort()
    order &= low                                   # ... then by user (a stable sort again)
    return key[order]
