"""The prune stage (the quantize stage is in export/quantize.py): prune a torch artifact,
optionally recover with a short distillation, and measure it against its parent."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .artifact import DEFAULT_STORE, Artifact
from .data import UNKNOWN_ITEMS
from .errors import ConfigError, ExportError


PRUNE_METHODS = ("unstructured", "structured", "vocabulary", "window")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune, then an optional short distillation fine-tune (`recover_epochs`) from the
    teacher, or from the unpruned model itself (`recover_from="parent"`: the pruned model learns
    to rank as the model it is meant to stay close to). With unstructured pruning the zeros are
    held in place while it trains.

    - unstructured: global magnitude pruning of `sparsity` of the weights (same dense file);
    - structured: remove `sparsity` of the non-embedding parameters (attention width and FFN
      units, least important first) and `dims` of the embedding width: a smaller dense model;
    - vocabulary: keep the items covering `coverage` of the training interactions (`by`
      "teacher": of the teacher's probability mass), or the `keep_items` most frequent; the
      rest become one out-of-vocabulary item, which the model's input skips (`unknown="skip"`:
      the items around it close up) or sees as one stand-in embedding (`unknown="oov"`);
    - window: read only the last `window` items of a history (pruning.window_prune): less work
      per request; what the dropped older items cost is measured like the rest."""

    method: str = "unstructured"
    sparsity: float = 0.5
    dims: float = 0.0
    coverage: float = 0.95
    keep_items: int | None = None
    max_bytes: int | None = None      # vocabulary: keep the most items whose weights fit (pruning.items_for_budget)
    budget_precision: str = "int8"    # ... at this export precision
    by: str = "interactions"
    unknown: str = "skip"
    window: int | None = None         # window: the input window kept (a number of items)
    recover_epochs: int = 0
    recover_from: str = "teacher"
    temperature: float = 2.0
    kd_weight: float = 1.0
    lr: float = 1e-3
    seed: int = 0
    threads: int = 1  # the latency of the pruned model and its parent: batch 1, this many threads
    bench_users: int = 300
    rounds: int = 5  # interleaved timing rounds of the pruned model and its parent

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"prune method must be one of {', '.join(PRUNE_METHODS)}, got {self.method!r}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if not 0 <= self.dims < 1:
            raise ConfigError(f"dims must be in [0, 1), got {self.dims}")
        if not 0 < self.coverage <= 1:
            raise ConfigError(f"coverage must be in (0, 1], got {self.coverage}")
        if self.keep_items is not None and self.keep_items < 1:
            raise ConfigError(f"keep_items must be >= 1, got {self.keep_items}")
        if (self.method == "window") != (self.window is not None):
            raise ConfigError("--window N is how many items of a history --method window keeps: give both, "
                              "or neither")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if self.max_bytes is not None:
            if self.max_bytes < 1:
                raise ConfigError(f"max_bytes must be >= 1, got {self.max_bytes}")
            if self.method != "vocabulary" or self.keep_items is not None:
                raise ConfigError("--max-bytes chooses how many items vocabulary pruning keeps: use it with "
                                  "--method vocabulary and without --keep-items")
        from .pruning import BUDGET_PRECISIONS

        if self.budget_precision not in BUDGET_PRECISIONS:
            raise ConfigError(f"budget precision must be one of {', '.join(BUDGET_PRECISIONS)}, "
                              f"got {self.budget_precision!r}")
        if self.by not in ("interactions", "teacher"):
            raise ConfigError(f"by must be 'interactions' or 'teacher', got {self.by!r}")
        if self.unknown not in UNKNOWN_ITEMS:
            raise ConfigError(f"unknown must be one of {', '.join(UNKNOWN_ITEMS)}, got {self.unknown!r}")
        if self.recover_epochs < 0:
            raise ConfigError(f"recover_epochs must be >= 0, got {self.recover_epochs}")
        if self.recover_from not in ("teacher", "parent"):
            raise ConfigError(f"recover_from must be 'teacher' or 'parent', got {self.recover_from!r}")
        if self.rounds < 2:
            raise ConfigError(f"rounds must be >= 2 (an interval needs rounds), got {self.rounds}")

    def to_dict(self) -> dict:
        """The settings as the card records them (without a budget: as before budgets existed,
        so that earlier pruned artifacts still match, e.g. for a resumed search)."""
        d = asdict(self)
        if d["max_bytes"] is None:
            del d["max_bytes"], d["budget_precision"]
        if d["window"] is None:
            del d["window"]
        return d

    def default_suffix(self) -> str:
        if self.method == "unstructured":
            return f"pruned{int(round(self.sparsity * 100))}"
        if self.method == "structured":
            return f"slim{int(round(self.sparsity * 100))}" + (f"d{int(round(self.dims * 100))}" if self.dims else "")
        if self.method == "window":
            return f"window{self.window}"
        if self.max_bytes:
            return f"vocab-{self.max_bytes}B-{self.budget_precision}"
        return f"vocab{self.keep_items}" if self.keep_items else f"vocab{int(round(self.coverage * 100))}"


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value) -> int:
    """'2MB', '1.5MiB', '500000' or 500000 -> bytes; a ConfigError for anything else."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = m and m.group(2).lower()
    if isinstance(value, bool) or not m or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise ConfigError(f"{value!r} is not a size: a number of bytes, or with kB, MB, GB, KiB, MiB or GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def prunable(model) -> list[tuple]:
    """(module, "weight") for every matrix: linear layers and the embedding tables. LayerNorms and
    biases stay dense: they are a sliver of the parameters and pruning them hurts most."""
    from torch import nn

    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def sparsity_of(model) -> float:
    ws = [m.weight for m, _ in prunable(model)]
    zeros = sum(int((w == 0).sum()) for w in ws)
    return zeros / sum(w.numel() for w in ws)


def _gzip_size(path: Path) -> int:
    """What the file takes compressed: dense runtimes get no faster from zeros, but zeros
    compress, which is the honest gain of unstructured pruning (an app download, an OTA update)."""
    import gzip

    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def prune(a: Artifact, cfg: PruneConfig = PruneConfig(), *, store: Path = DEFAULT_STORE,
          name: str | None = None, progress=None) -> Artifact:
    import torch.nn.utils.prune as tprune

    from .artifact import find_teacher
    from .distill import DistillConfig, teacher_item_map
    from .evaluation import evaluate_model
    from .kd_losses import DistillLoss
    from .metrics import topk_overlap
    from .pruning import (estimated_bytes, items_for_budget, items_to_keep, non_embedding_params,
                          structured_prune, vocabulary_prune, window_prune)
    from .runner import _latency_gate, _time_files
    from .torch_io import dataset_for, load_torch_model, save_torch_artifact
    from .train import fit, seed_everything

    if a.format != "torch":
        raise ConfigError(f"prune takes a torch artifact, not {a.format}; prune before exporting")
    seed_everything(cfg.seed)
    ds = dataset_for(a)
    model = load_torch_model(a)
    kwargs = dict(a.card["arch_kwargs"])
    before, parent_top = evaluate_model(model, ds, "test", sampled=False)
    parent_non_embedding = non_embedding_params(model)
    from_parent = bool(cfg.recover_epochs) and cfg.recover_from == "parent"
    need_teacher = (bool(cfg.recover_epochs) and not from_parent) or cfg.by == "teacher"
    teacher_a = find_teacher(a) if need_teacher else None
    teacher = load_torch_model(teacher_a) if teacher_a is not None else None
    # who teaches the recovery: the teacher, or a frozen copy of the unpruned model
    guide_a, guide = (a, load_torch_model(a)) if from_parent else (teacher_a, teacher)
    for m in (teacher, guide):
        for p in (m.parameters() if m is not None else []):
            p.requires_grad_(False)
    new_ds, info, params = ds, {}, []
    if cfg.method == "unstructured":
        params = prunable(model)
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=cfg.sparsity)
    elif cfg.method == "structured":
        model, kwargs, info = structured_prune(model, kwargs, cfg.sparsity, cfg.dims)
    elif cfg.method == "window":
        model, kwargs, info = window_prune(model, a.card["arch"], kwargs, cfg.window)
        hist, _ = ds.eval_split("test")
        info["test_histories_cut"] = float(np.mean([len(h) > info["history_items"] for h in hist])) if hist else 0.0
    else:
        count = cfg.keep_items
        if cfg.max_bytes:
            count = items_for_budget(model, ds, cfg.max_bytes, cfg.budget_precision)
        keep = items_to_keep(ds, cfg.coverage, count, teacher if cfg.by == "teacher" else None)
        model, kwargs, new_ds, info = vocabulary_prune(model, a.card["arch"], kwargs, ds, keep, cfg.unknown)
        if cfg.max_bytes:
            info["size_budget"] = {"max_bytes": cfg.max_bytes, "precision": cfg.budget_precision,
                                   "estimated_bytes": estimated_bytes(model, cfg.budget_precision),
                                   "note": "weights only; the file's container adds tens of kB"}
    log = None
    if cfg.recover_epochs:
        tcfg = DistillConfig(model=a.card["arch"], epochs=cfg.recover_epochs, patience=cfg.recover_epochs,
                             lr=cfg.lr, seed=cfg.seed, temperature=cfg.temperature, kd_weight=cfg.kd_weight,
                             maxlen=kwargs.get("maxlen"))
        # A teacher (or parent) on the unpruned catalogue teaches through matched item ids
        # (the out-of-vocabulary item gets no signal). Unstructured masks are forward
        # pre-hooks: pruned weights stay zero while it trains.
        loss = DistillLoss(tcfg, model, [guide], [1.0], item_maps=[teacher_item_map(guide_a, new_ds)])
        log = fit(model, new_ds, loss, tcfg, progress)
    for m, n in params:
        tprune.remove(m, n)  # make the zeros permanent: a plain state dict again
    model.eval()
    test, top = evaluate_model(model, new_ds, "test")
    if new_ds is ds:
        overlap = topk_overlap(top, parent_top)
    else:  # compare in original ids: map the pruned model's columns back to the parent's
        old = {item: k + 1 for k, item in enumerate(ds.items)}
        back = np.array([0] + [old.get(i, -1) for i in new_ds.items])   # new index -> parent's index
        overlap = topk_overlap(back[top], parent_top)
    test["top10_overlap"] = overlap
    metrics = {**{f"test_{k}": v for k, v in test.items()}, "sparsity": sparsity_of(model),
               "non_embedding_params": non_embedding_params(model),
               "parent_non_embedding_params": parent_non_embedding,
               "parent_test_ndcg@10": before["ndcg@10"],
               "test_ndcg@10_vs_parent": test["ndcg@10"] / before["ndcg@10"] if before["ndcg@10"] else None}
    note = {"unstructured": "dense file: same size and speed as the parent; zeros only pay once compressed",
            "structured": "a smaller dense model: smaller file, fewer operations",
            "vocabulary": "fewer items: a smaller table and output layer; pruned items are never recommended",
            "window": "a shorter input: the same weights but for the dropped position rows, less work per request"}

    def measure(out: Artifact) -> dict:
        """Size and latency of the saved weights beside the parent's, before the card is written."""
        sizes = {"size_bytes": out.card["size_bytes"], "gzip_bytes": _gzip_size(out.file),
                 "parent_size_bytes": a.card["size_bytes"], "parent_gzip_bytes": _gzip_size(a.file),
                 "note": note[cfg.method]}
        m = _time_files([(a, ds), (out, new_ds)], ["parent", "pruned"], cfg.threads, cfg.bench_users, cfg.rounds)
        if m.errors:
            raise ExportError(f"{out.name}: its latency could not be measured: "
                              + "; ".join(f"{k}: {v}" for k, v in m.errors.items()))
        lat = {"parent_p50_ms": m.summary("parent")["p50_ms"], "parent_p50_rounds_ms": m.p50s["parent"],
               **_latency_gate(m, "pruned"), "runtime": "torch", "batch": 1, "threads": cfg.threads,
               "how": f"the parent and the pruned model in {m.rounds} interleaved rounds, one device-runner process "
                      "each (edgekd.timing); p50 is the median over rounds, the speed-up's interval a bootstrap over "
                      "rounds", "machine_load": m.load}
        return {"metrics": {**out.metrics, "size": sizes, "latency": lat}}

    return save_torch_artifact(
        model, store=store, name=name or f"{a.name}-{cfg.default_suffix()}", stage="pruned",
        arch=a.card["arch"], arch_kwargs=kwargs, ds=new_ds,
        config={"prune": cfg.to_dict()}, metrics=metrics, parent=[a.lineage()], seed=cfg.seed,
        extra={"pruning": info, "training": {k: v for k, v in (log or {}).items() if k != "history"}},
        finish=measure)
