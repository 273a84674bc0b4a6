"""Artifacts: one directory holding one payload file, vocab.json and artifact.json.

Every stage reads an artifact and writes a new one; nothing is changed in place. A new
artifact is written into a temporary directory beside its final place and renamed into it
only when complete, so an interrupted stage never leaves a half-written artifact behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ArtifactError

CARD = "artifact.json"
VOCAB = "vocab.json"
DEFAULT_STORE = Path("models")


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
        return json.loads((self.path / VOCAB).read_text())

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
        """Add figures measured after the artifact was written (e.g. by bench)."""
        self.card.update(fields)
        _write_json(self.path / CARD, self.card)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_artifact(store: Path, name: str, payload_name: str, write_payload: Callable[[Path], None],
                  card: dict, vocab: dict) -> Artifact:
    """Write an artifact atomically: payload (via `write_payload(path)`), vocab.json and
    artifact.json with the payload's sha256, into `store/name`."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / name
    tmp = store / f".{name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_payload(tmp / payload_name)
        _write_json(tmp / VOCAB, vocab)
        payload = tmp / payload_name
        full = {
            "name": name, **card, "file": payload_name,
            "sha256": sha256_file(payload), "size_bytes": payload.stat().st_size,
            "vocab": VOCAB, "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(tmp / CARD, full)
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
    """Load and verify an artifact: a directory, its artifact.json, or a name in the store."""
    p = Path(path)
    if p.name == CARD:
        p = p.parent
    if not p.exists() and not p.is_absolute() and (store / p).exists():
        p = store / p
    card_path = p / CARD
    if not card_path.is_file():
        what = "no such directory" if not p.exists() else f"no {CARD} in it"
        raise ArtifactError(f"{p}: not an artifact ({what})",
                            hint=f"list artifacts with `ls {store}` or train one with `edgekd train`")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{card_path}: corrupt ({e})") from None
    for key in ("name", "stage", "format", "file", "sha256"):
        if key not in card:
            raise ArtifactError(f"{card_path}: missing field {key!r}")
    payload = p / card["file"]
    if not payload.is_file():
        raise ArtifactError(f"{p}: payload {card['file']} is missing")
    actual = sha256_file(payload)
    if actual != card["sha256"]:
        raise ArtifactError(f"{payload}: sha256 {actual[:16]} does not match artifact.json "
                            f"({card['sha256'][:16]}); the file is corrupt or was changed")
    if not (p / VOCAB).is_file():
        raise ArtifactError(f"{p}: {VOCAB} is missing")
    return Artifact(p, card)


def load_parent(child: Artifact, record: dict) -> Artifact:
    """The parent named by a lineage record: at its recorded path, else beside the child in
    the same store; its sha256 must match the one recorded."""
    candidates = [Path(record.get("path", "")), child.path.parent / record["name"]]
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
