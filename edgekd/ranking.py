"""An artifact's payload ready to rank: loaded by the device runner in the runtime bench uses
for it (the target's `runtimes` table, local-cpu by default), its vocabulary, and one call from
histories of original item ids to recommendations. `edgekd serve` answers requests with it, and
the export stage measures the drift reference with it (edgekd.drift_reference), so the reference
ranks exactly as the server does.

Unknown item ids are handled as the artifact's vocab.json says: a vocabulary-pruned model
(`oov_index`) either feeds the OOV index in their place (`unknown_items: "oov"`) or leaves them
out (`"skip"`); a model without an OOV item leaves them out. The OOV item itself is never
recommended.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .data import OOV_ID, pad_left
from .device_runner import masked_topk
from .errors import ArtifactError

# what each payload suffix is, as bench names it for a target's `runtimes` table
_KINDS = {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite", ".safetensors": "torch"}
MODEL_CODE = Path(__file__).resolve().parent / "models.py"


class InferenceError(RuntimeError):
    """The model returned something unusable (wrong shape, non-finite scores)."""


@dataclass
class Encoded:
    """One history as the model reads it."""

    row: np.ndarray  # [maxlen] item indices, left-padded with 0
    seen: list[int]  # indices to exclude from the ranking (known items of the history)
    known: int
    unknown: int


@dataclass
class Recommendation:
    items: list[str]
    scores: list[float]
    indices: list[int] = field(default_factory=list)  # 1-based item indices


def runtime_for(a: Artifact, target: str = "local-cpu") -> str:
    """The runtime bench uses for this artifact's payload on `target`."""
    from .targets import load_target

    kind = _KINDS.get(a.file.suffix)
    rt = load_target(target).runtimes.get(kind) if kind else None
    if rt is None:
        raise ArtifactError(f"{a.name}: no runtime for {a.file.suffix} files on target {target}")
    return rt


class ServedModel:
    """An artifact ready to answer requests. Thread-safe: calls into the runtime hold a lock
    (a TFLite interpreter must not be invoked from two threads at once)."""

    def __init__(self, a: Artifact, *, threads: int = 1, runtime: str | None = None, target: str = "local-cpu"):
        from .device_runner import load_model

        self.artifact = a
        card = a.card
        if "arch_kwargs" not in card or "maxlen" not in card["arch_kwargs"]:
            raise ArtifactError(f"{a.path}: artifact.json has no arch_kwargs.maxlen; cannot build inputs")
        self.maxlen = int(card["arch_kwargs"]["maxlen"])
        self.topk = card.get("topk")
        vocab = a.vocab()
        self.items: list[str] = list(vocab["items"])
        self.index = {item: k + 1 for k, item in enumerate(self.items)}
        self.oov_index = vocab.get("oov_index")
        if self.oov_index is not None:
            self.index.pop(OOV_ID, None)  # a client sending "<oov>" sent an unknown item
            self.unknown_items = vocab.get("unknown_items", "oov")
        else:
            self.unknown_items = "skip"  # no index to feed: leave unknown items out
        self.num_items = len(self.items)
        self.runtime = runtime or runtime_for(a, target)
        self._lock = threading.Lock()
        self.model = load_model(str(a.file), self.runtime, threads,
                                card=str(a.path / "artifact.json"), code=str(MODEL_CODE))
        self.runtime_name = getattr(self.model, "runtime", self.runtime)
        self.runtime_version = getattr(self.model, "version", None)
        self.max_k = self.topk or self.num_items - (self.oov_index is not None)

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    @property
    def dynamic_batch(self) -> bool:
        return not getattr(self.model, "fixed_batch", None)

    # ------------------------------------------------------------ inputs

    def encode(self, history: list[str]) -> Encoded:
        seq: list[int] = []
        unknown = 0
        for item in history:
            i = self.index.get(str(item))
            if i is None:
                unknown += 1
                if self.unknown_items == "oov":
                    seq.append(self.oov_index)
                continue
            seq.append(i)
        row = pad_left([np.asarray(seq, dtype=np.int64)], self.maxlen)[0]
        seen = sorted({i for i in seq if i != self.oov_index})
        return Encoded(row, seen, len(history) - unknown, unknown)

    # ------------------------------------------------------------ the model

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(top-K item columns or None, scores) for rows `x` [B, maxlen]."""
        from .device_runner import OnnxModel, TFLiteModel, run_batched

        with self._lock:
            if not self.topk:
                return None, np.asarray(run_batched(self.model, x))
            m = self.model  # a top-K graph has two outputs; the runner's call returns the first
            if isinstance(m, OnnxModel):
                outs = m.session.run(None, {m.input_name: x.astype(m.dtype, copy=False)})
            elif isinstance(m, TFLiteModel):
                rows = []
                for r in x:
                    m.interp.set_tensor(m.inp["index"], r[None].astype(m.dtype, copy=False))
                    m.interp.invoke()
                    rows.append([m.interp.get_tensor(o["index"]) for o in m.interp.get_output_details()])
                outs = [np.concatenate([row[j] for row in rows]) for j in range(len(rows[0]))]
            else:
                raise ArtifactError(f"{self.name}: a top-K graph in {self.runtime} is not supported")
        idx = next(o for o in outs if np.issubdtype(o.dtype, np.integer))
        scores = next(o for o in outs if np.issubdtype(o.dtype, np.floating))
        return idx, scores

    def recommend(self, encoded: list[Encoded], k: int, exclude_seen: bool = True) -> list[Recommendation]:
        """The k best items for each encoded history, best first (fewer when a top-K graph's
        K items are mostly seen ones)."""
        x = np.stack([e.row for e in encoded])
        idx, scores = self.outputs(x)
        want = len(encoded)
        if scores.shape[0] != want or (idx is None and scores.shape[1] != self.num_items):
            raise InferenceError(f"{self.name}: output shape {list(scores.shape)} for {want} rows "
                                 f"and {self.num_items} items")
        if not np.isfinite(scores).all():
            raise InferenceError(f"{self.name}: the model returned non-finite scores")
        banned = [set(e.seen) if exclude_seen else set() for e in encoded]
        if self.oov_index is not None:
            for b in banned:
                b.add(self.oov_index)
        if idx is None:  # the runner's top-K selection (block-max prefilter at large catalogues)
            seen = np.zeros((want, max(1, max(len(b) for b in banned))), dtype=np.int64)
            for r, b in enumerate(banned):
                seen[r, :len(b)] = sorted(b)
            top = masked_topk(scores, seen, k) - 1
        out = []
        for r in range(want):
            if idx is None:  # fewer than k when every other item is banned
                cols = [int(c) for c in top[r] if c + 1 not in banned[r]]
                vals = [float(scores[r, c]) for c in cols]
            else:
                cols, vals = [], []
                for c, v in zip(idx[r].tolist(), scores[r].tolist()):
                    if c + 1 not in banned[r] and len(cols) < k:
                        cols.append(int(c))
                        vals.append(float(v))
            out.append(Recommendation([self.items[c] for c in cols], vals, [c + 1 for c in cols]))
        return out

    def probe(self) -> Recommendation:
        """One real inference on a short history (the vocabulary's first items): proves the
        model answers, with finite scores of the expected shape."""
        hist = self.items[: min(3, self.num_items)]
        return self.recommend([self.encode(hist)], k=min(10, self.max_k), exclude_seen=False)[0]


def load_served(path: str | Path, store: Path, **kw) -> ServedModel:
    """Load (load_artifact checks the payload's sha256) and probe an artifact."""
    from .artifact import load_artifact

    m = ServedModel(load_artifact(path, store), **kw)
    m.probe()
    return m
