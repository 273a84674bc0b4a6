"""Artifacts: one directory holding one payload file, vocab.json and artifact.json.

Every stage reads an artifact and writes a new one; nothing is changed in place. A new
artifact is written into a temporary directory beside its final place and renamed into it
only when complete, so an interrupted stage never leaves a half-written artifact behind. Its
card is written once, complete: what a stage measures on the new file, it measures there first
(save_artifact's `finish`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ArtifactError, ConfigError, EdgeKDError

CARD = "artifact.json"
VOCAB = "vocab.json"
DEFAULT_STORE = Path("models")
# An artifact (or bench run) name is one path component: no separators, no "..", no leading
# dot or dash, so that `store / name` can only ever be a direct child of the store.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=-]{0,127}")
# A payload file name inside an artifact directory (never a path).
FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str = "artifact name") -> str:
    """`name` if it is a safe single path component, else a usage error (exit 2)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{what} {name!r} is not allowed: use 1-128 letters, digits and . _ + = - "
                          "(not starting with . or -, no '..', no path separators)",
                          hint="pass a plain name; the directory is chosen with --out")
    return name


def non_finite(obj, where: str = "") -> str | None:
    """The path of the first NaN or infinite number in a JSON-like object, else None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(value)"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        bad = non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def write_json(path: Path, obj) -> None:
    """Write strict JSON atomically (a temporary file renamed into place): an interrupted
    write leaves the old file or none, never half of one. NaN and infinity are refused:
    they are not JSON, and other tools reject them."""
    path = Path(path)
    bad = non_finite(obj)
    if bad:
        raise EdgeKDError(f"{path}: refusing to write a non-finite number at {bad}")
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n"))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp)` into a temporary file beside it, renamed into place:
    an interrupted write leaves the old file or none, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def path_lock(path: Path, what: str = "a run"):
    """Hold an exclusive lock on `path` (created if missing) for a run: a second edgekd process
    asking for the same lock fails at once with a clear error instead of sharing state. The lock
    file is removed when the run ends, so a store holds no leftovers."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(exist_ok=True)
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            raise EdgeKDError(f"{path}: already running ({who})",
                              hint="wait for that run to finish, or pick another --name") from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the run that held it ended and removed the file meanwhile: lock the new one
    try:
        f.seek(0)
        f.truncate()
        f.write(f"edgekd pid {os.getpid()}, {what}")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: no other run can be holding it
        f.close()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the parts that produced an artifact (only those already imported, so
    that recording them never pulls in a heavy runtime)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("edgekd", "torch", "numpy", "onnx", "onnxruntime", "litert-torch",
                 "ai-edge-quantizer", "ai-edge-litert"):
        module = dist.replace("-", "_")
        if dist in ("edgekd", "torch", "numpy") or module in sys.modules:
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    return out


@dataclass
class Artifact:
    path: Path
    card: dict

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def file(self) -> Path:
        return self.path / self.card["file"]

    @property
    def format(self) -> str:
        return self.card["format"]

    @property
    def sha256(self) -> str:
        return self.card["sha256"]

    @property
    def metrics(self) -> dict:
        return self.card.setdefault("metrics", {})

    def vocab(self) -> dict:
        return read_vocab(self.path, self.card)

    def lineage(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "path": str(self.path)}

    def check_dataset(self, fingerprint: str) -> None:
        mine = self.card.get("dataset", {}).get("fingerprint")
        if mine != fingerprint:
            raise ArtifactError(
                f"{self.path}: trained on dataset {str(mine)[:16]}, but the data given is "
                f"{fingerprint[:16]}",
                hint="use the data the artifact was trained on (see dataset.spec in its artifact.json)")

    def update_card(self, **fields) -> None:
        """Rewrite the card of an existing artifact with `fields` added. Stages never do this:
        save_artifact writes each card once, complete (what a stage measures on its own output
        goes in through `finish`). It is left for an explicit later request about an existing
        artifact: `edgekd serve --reference` giving one made without a drift reference its
        reference."""
        self.card.update(fields)
        write_json(self.path / CARD, self.card)


def destination(store: Path, name: str) -> Path:
    """`store/name` for a new artifact, checked before any work: the name is one safe path
    component, and what is there already is nothing or an edgekd artifact (which the new one
    replaces); a directory or file of anything else is never replaced."""
    final = Path(store) / check_name(name)
    if final.is_symlink() or (final.exists() and not (final / CARD).is_file()):
        raise ArtifactError(f"{final} exists and is not an edgekd artifact; it is left as it is",
                            hint="choose another --name or --out")
    return final


def save_artifact(store: Path, name: str, payload_name: str, write_payload: Callable[[Path], None],
                  card: dict, vocab: dict, finish: Callable[[Artifact], dict] | None = None) -> Artifact:
    """Write an artifact atomically: payload (via `write_payload(path)`), vocab.json and
    artifact.json with the payload's sha256, into `store/name`. The card is written once,
    complete: `finish(staged)`, when given, is called with the artifact as it stands in its
    partial directory (payload and vocab.json written, `staged.card` the card about to be
    written, not yet on disk) to measure the finished payload; the fields it returns are added
    to the card, and files it writes into `staged.path` move in place with the artifact."""
    if not FILE_RE.fullmatch(payload_name):
        raise ArtifactError(f"payload file name {payload_name!r} is not a plain file name")
    bad = non_finite(card)
    if bad:
        raise ArtifactError(f"{name}: not saved: its card has a non-finite number at {bad}",
                            hint="the run diverged; lower --lr and train again")
    final = destination(store, name)
    store = final.parent
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_payload(tmp / payload_name)
        write_json(tmp / VOCAB, vocab)
        payload = tmp / payload_name
        full = {
            "name": name, **card, "file": payload_name,
            "sha256": sha256_file(payload), "size_bytes": payload.stat().st_size,
            "vocab": VOCAB, "vocab_sha256": sha256_file(tmp / VOCAB), "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if finish is not None:
            more = finish(Artifact(tmp, dict(full)))
            bad = non_finite(more)
            if bad:
                raise ArtifactError(f"{name}: not saved: a measurement of it is non-finite at {bad}")
            full.update(more)
        write_json(tmp / CARD, full)
        if final.exists():
            old = store / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(final, full)


def load_artifact(path: Path | str, store: Path = DEFAULT_STORE) -> Artifact:
    """Load and verify an artifact: a directory, its artifact.json, or a name in the store.

    Everything in it is treated as untrusted: the card must be a JSON object with the required
    fields, its payload a plain file inside the directory whose sha256 matches, and vocab.json
    must match its recorded sha256 and hold as many items as the model scores."""
    p = Path(path)
    if p.name == CARD:
        p = p.parent
    if not p.exists() and not p.is_absolute() and (Path(store) / p).exists():
        p = Path(store) / p
    card_path = p / CARD
    if not card_path.is_file():
        what = "no such directory" if not p.exists() else f"no {CARD} in it"
        raise ArtifactError(f"{p}: not an artifact ({what})",
                            hint=f"list artifacts with `ls {store}` or train one with `edgekd train`")
    try:
        card = json.loads(card_path.read_text(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{card_path}: corrupt ({e})") from None
    if not isinstance(card, dict):
        raise ArtifactError(f"{card_path}: corrupt (a JSON object expected, got {type(card).__name__})")
    for key in ("name", "stage", "format", "file", "sha256"):
        if key not in card:
            raise ArtifactError(f"{card_path}: missing field {key!r}")
        if not isinstance(card[key], str):
            raise ArtifactError(f"{card_path}: field {key!r} must be a string, got {card[key]!r}")
    if not NAME_RE.fullmatch(card["name"]) or ".." in card["name"]:
        raise ArtifactError(f"{card_path}: name {card['name']!r} is not a plain artifact name")
    if not FILE_RE.fullmatch(card["file"]):
        raise ArtifactError(f"{card_path}: payload {card['file']!r} is not a plain file name inside "
                            "the artifact directory")
    payload = p / card["file"]
    if payload.is_symlink() or not payload.is_file():
        raise ArtifactError(f"{p}: payload {card['file']} is missing (or not a regular file)")
    actual = sha256_file(payload)
    if actual != card["sha256"]:
        raise ArtifactError(f"{payload}: sha256 {actual[:16]} does not match artifact.json "
                            f"({card['sha256'][:16]}); the file is corrupt or was changed")
    read_vocab(p, card)
    return Artifact(p, card)


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_vocab(p: Path, card: dict) -> dict:
    """vocab.json of an artifact, checked against the card: its sha256 (cards written since it
    was recorded) and its size against the number of items the model scores."""
    vp = p / VOCAB
    if vp.is_symlink() or not vp.is_file():
        raise ArtifactError(f"{p}: {VOCAB} is missing")
    want = card.get("vocab_sha256")
    if want is not None and sha256_file(vp) != want:
        raise ArtifactError(f"{vp}: sha256 does not match artifact.json; the file is corrupt or was changed")
    try:
        vocab = json.loads(vp.read_text(), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{vp}: corrupt ({e})") from None
    items = vocab.get("items") if isinstance(vocab, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ArtifactError(f"{vp}: corrupt ('items' must be a list of item id strings)")
    n = (card.get("arch_kwargs") or {}).get("num_items") if isinstance(card.get("arch_kwargs"), dict) else None
    if n is None and isinstance(card.get("dataset"), dict):
        n = card["dataset"].get("items")
    if isinstance(n, int) and len(items) != n:
        raise ArtifactError(f"{vp}: {len(items)} items, but the model scores {n}; the vocabulary does not "
                            "belong to this model")
    return vocab


def load_parent(child: Artifact, record: dict) -> Artifact:
    """The parent named by a lineage record: at its recorded path, else beside the child in
    the same store; its sha256 must match the one recorded."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("name", "sha256")):
        raise ArtifactError(f"{child.path}: artifact.json has a malformed parent record {str(record)[:80]!r}")
    candidates = [Path(str(record.get("path", ""))), child.path.parent / record["name"]]
    for c in candidates:
        if (c / CARD).is_file():
            parent = load_artifact(c)
            if parent.sha256 != record["sha256"]:
                raise ArtifactError(f"{c}: sha256 {parent.sha256[:16]} is not the parent "
                                    f"{record['sha256'][:16]} that {child.name} was made from")
            return parent
    raise ArtifactError(f"{child.path}: its parent {record['name']} is not at "
                        f"{record.get('path')} nor beside it")


def find_teacher(a: Artifact) -> Artifact:
    """Walk an artifact's lineage back to its teacher."""
    seen = 0
    while a.card.get("stage") != "teacher":
        parents = a.card.get("parent") or []
        if not parents or seen > 32:
            raise ArtifactError(f"{a.path}: no teacher in its lineage", hint="pass --teacher")
        a = load_parent(a, parents[0])
        seen += 1
    return a
