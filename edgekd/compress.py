"""Compression stages. `quantize`: try quantisation recipes for a runtime family and keep
only what pays: every candidate records its size, its latency on the local CPU and its
accuracy against the torch parent, beside the fp32 export measured in the same run. A result
that is larger or slower than fp32 gets a warning (slower: fp32 and every recipe are timed in
interleaved rounds, edgekd.timing, and the speed-up's interval over rounds excludes 1.0); `require_gain` makes "nothing helped" an
error. The report says which recipe wins and why."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .artifact import DEFAULT_STORE, Artifact, write_json
from .data import UNKNOWN_ITEMS
from .errors import ConfigError, ExportError



@dataclass(frozen=True)
class QuantizeConfig:
    target: str = "onnx-int8"  # a quantised export format (its family's recipes apply)
    recipes: tuple[str, ...] = ()  # default: every recipe of the family
    require_gain: bool = False
    max_ndcg_drop: float = 0.01  # relative NDCG@10 drop allowed against the torch parent
    min_top10_overlap: float = 0.9
    threads: int = 1
    bench_users: int = 300
    rounds: int = 5  # interleaved timing rounds (fp32 and every recipe in turns)

    def __post_init__(self):
        from .export import get_format, get_recipe

        if self.rounds < 2:
            raise ConfigError(f"rounds must be >= 2 (an interval needs rounds), got {self.rounds}")

        spec = get_format(self.target)
        if not spec.family or not spec.recipe:
            raise ConfigError(f"quantize --target must be a quantised format (onnx-int8, tflite-int8, ...), "
                              f"got {self.target!r}")
        for r in self.recipes:
            if get_recipe(spec.family, r).precision != spec.precision:
                raise ConfigError(f"recipe {r!r} does not make {spec.precision} files; {self.target} needs one that does")
        if not 0 <= self.max_ndcg_drop < 1:
            raise ConfigError(f"max_ndcg_drop must be in [0, 1), got {self.max_ndcg_drop}")


def _time_files(cells: list[tuple[Artifact, object]], names: list[str], threads: int, users: int,
                rounds: int):
    """Time files against the first in interleaved rounds on the local CPU (edgekd.timing, through
    the device runner, as bench does), each on its own dataset's test inputs."""
    from .bench import time_artifacts, write_inputs
    from .targets import load_target

    # per round: at least 100 runs and 0.3 s; the rounds together time each file as long as one
    # 1.5 s measurement did
    target = replace(load_target("local-cpu"), threads=threads, min_runs=100, min_seconds=0.3, batch_sizes=(1,))
    with tempfile.TemporaryDirectory() as d:
        npz = []
        for k, (a, ds) in enumerate(cells):
            npz.append(write_inputs(ds, int(a.card["arch_kwargs"]["maxlen"]), Path(d) / f"in{k}.npz", users)[1])
        m, _ = time_artifacts([(a, f) for (a, _), f in zip(cells, npz)], target, threads, rounds=rounds,
                              reference=0, names=names)
    return m


def _latency_gate(m, name: str) -> dict:
    """A cell's latency beside the reference: median p50, spread, speed-up with its interval and
    the verdict ("slower" only when the interval excludes 1.0)."""
    iv = m.ratio(name)
    return {"p50_ms": m.summary(name)["p50_ms"], "p50_rounds_ms": m.p50s[name], "p50_spread": m.summary(name),
            "speedup": iv["ratio"], "speedup_interval": [iv["low"], iv["high"]], "latency_verdict": iv["verdict"],
            "not_slower": iv["verdict"] != "slower"}


def quantize(a: Artifact, cfg: QuantizeConfig = QuantizeConfig(), *, store: Path = DEFAULT_STORE,
             say=print) -> dict:
    """Quantise torch artifact `a` with each recipe, measure, choose. Returns the rows, the
    winner (or None) and where the report went."""
    from .export import export, get_format, list_recipes
    from .train import dataset_for

    spec = get_format(cfg.target)
    family = spec.family
    recipes = list(cfg.recipes) or [r.name for r in list_recipes(family) if r.precision == spec.precision]
    ds = dataset_for(a)
    fp32 = export(a, f"{family}-fp32", store=store, ds=ds)
    base = {"recipe": "(fp32)", "artifact": fp32.name, "size_bytes": fp32.card["size_bytes"],
            "ndcg@10_rel": fp32.metrics["parity"]["ndcg@10_rel_change"],
            "top10_overlap": fp32.metrics["parity"]["top10_overlap"]}
    rows, exports = [], {}
    for r in recipes:
        try:
            exports[r] = export(a, cfg.target, store=store, ds=ds, recipe=r)
        except ExportError as err:
            rows.append({"recipe": r, "error": str(err)})
            say(f"{r}: failed: {err}")
    # fp32 and every recipe timed in interleaved rounds: a burst of other work falls on all alike
    m = _time_files([(fp32, ds)] + [(e, ds) for e in exports.values()], ["(fp32)", *exports],
                    cfg.threads, cfg.bench_users, cfg.rounds)
    base["p50_ms"] = m.summary("(fp32)")["p50_ms"]
    base["p50_rounds_ms"] = m.p50s["(fp32)"]
    base["p50_spread"] = m.summary("(fp32)")
    timing_info = {k: v for k, v in m.to_dict().items() if k != "cells"}
    say(f"fp32 {family}: {base['size_bytes']} bytes, p50 {base['p50_ms']:.3f} ms "
        f"(median of {len(base['p50_rounds_ms'])} interleaved rounds)")
    for r, e in exports.items():
        if r in m.errors:
            rows.append({"recipe": r, "error": m.errors[r]})
            say(f"{r}: failed: {m.errors[r]}")
            continue
        p = e.metrics["parity"]
        row = {"recipe": r, "artifact": e.name, "size_bytes": e.card["size_bytes"], **_latency_gate(m, r),
               "ndcg@10_rel": p["ndcg@10_rel_change"], "top10_overlap": p["top10_overlap"]}
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["smaller"] = row["size_bytes"] < base["size_bytes"]
        row["accurate"] = row["ndcg@10_rel"] >= -cfg.max_ndcg_drop and row["top10_overlap"] >= cfg.min_top10_overlap
        e.update_card(metrics={**e.metrics, "gate": {**row, "fp32": base, "config": asdict(cfg), "timing": timing_info}})
        rows.append(row)
        warn = [w for w, bad in (("larger", not row["smaller"]), ("slower", not row["not_slower"]),
                                 ("less accurate than allowed", not row["accurate"])) if bad]
        lo, hi = row["speedup_interval"]
        say(f"{r}: {row['size_bytes']} bytes ({row['size_ratio']:.2f}x smaller), p50 {row['p50_ms']:.3f} ms "
            f"({row['speedup']:.2f}x [{lo:.2f}-{hi:.2f}], {row['latency_verdict']}), NDCG@10 "
            f"{row['ndcg@10_rel'] * 100:+.1f}%, top-10 overlap {row['top10_overlap']:.3f}"
            + (f"  WARNING: {', '.join(warn)} than fp32" if warn else ""))
    ok = [r for r in rows if "error" not in r]
    gains = [r for r in ok if r["smaller"] and r["not_slower"] and r["accurate"]]
    if gains:
        winner = min(gains, key=lambda r: (r["size_bytes"], r["p50_ms"]))
        why = (f"{winner['recipe']} wins: the smallest of the recipes that are smaller than fp32, not slower "
               f"(the speed-up's {m.rounds}-round interval does not lie below 1.0) and within {cfg.max_ndcg_drop:.0%} NDCG@10 / "
               f"{cfg.min_top10_overlap} top-10 overlap of the parent")
    else:
        winner = None
        reasons = []
        for r in ok:
            bad = [w for w, b in (("not smaller", not r["smaller"]), ("slower", not r["not_slower"]),
                                  ("too inaccurate", not r["accurate"])) if b]
            reasons.append(f"{r['recipe']}: {', '.join(bad)}")
        why = "no recipe pays on this CPU: " + "; ".join(reasons or ["every recipe failed"])
    say(why)
    report = {"artifact": a.name, "target": cfg.target, "family": family, "fp32": base, "recipes": rows,
              "winner": winner["recipe"] if winner else None, "why": why, "config": asdict(cfg),
              "timing": timing_info,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(store) / f"{a.name}-{cfg.target}-quantize.json"
    write_json(path, report)
    md = path.with_suffix(".md")
    md.write_text(_markdown(report))
    if cfg.require_gain and winner is None:
        raise ExportError(why, hint=f"see {md}")
    return {"rows": rows, "fp32": base, "winner": winner, "why": why, "report": md}


def _markdown(rep: dict) -> str:
    lines = [f"# Quantisation of {rep['artifact']} for {rep['target']}", "",
             "Measured side by side in one run on the local CPU "
             f"({rep['config']['threads']} thread(s), batch 1); accuracy on validation users against the "
             "torch parent.", "",
             f"Latency: fp32 and every recipe timed in {rep.get('timing', {}).get('rounds', '?')} interleaved rounds; "
             "p50 is the median over rounds, the speed-up's interval (in brackets) a bootstrap over rounds, and a "
             "recipe is called slower only when that interval lies below 1.0.", "",
             "| recipe | size bytes | vs fp32 | p50 ms | speed vs fp32 | NDCG@10 change | top-10 overlap | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    b = rep["fp32"]
    lines.append(f"| fp32 | {b['size_bytes']} | 1.00x | {b['p50_ms']:.3f} | 1.00x | "
                 f"{b['ndcg@10_rel'] * 100:+.1f}% | {b['top10_overlap']:.3f} | baseline |")
    for r in rep["recipes"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | | | | | | | failed: {r['error']} |")
            continue
        verdict = "wins" if r["recipe"] == rep["winner"] else ", ".join(
            w for w, bad in (("larger", not r["smaller"]), ("slower", not r["not_slower"]),
                             ("too inaccurate", not r["accurate"])) if bad) or "pays, not the smallest"
        lines.append(f"| {r['recipe']} | {r['size_bytes']} | {r['size_ratio']:.2f}x | {r['p50_ms']:.3f} | "
                     f"{r['speedup']:.2f}x [{r['speedup_interval'][0]:.2f}-{r['speedup_interval'][1]:.2f}] | {r['ndcg@10_rel'] * 100:+.1f}% | {r['top10_overlap']:.3f} | {verdict} |")
    lines += ["", rep["why"] + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- pruning

PRUNE_METHODS = ("unstructured", "structured", "vocabulary")


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
      the items around it close up) or sees as one stand-in embedding (`unknown="oov"`)."""

    method: str = "unstructured"
    sparsity: float = 0.5
    dims: float = 0.0
    coverage: float = 0.95
    keep_items: int | None = None
    by: str = "interactions"
    unknown: str = "skip"
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

    def default_suffix(self) -> str:
        if self.method == "unstructured":
            return f"pruned{int(round(self.sparsity * 100))}"
        if self.method == "structured":
            return f"slim{int(round(self.sparsity * 100))}" + (f"d{int(round(self.dims * 100))}" if self.dims else "")
        return f"vocab{self.keep_items}" if self.keep_items else f"vocab{int(round(self.coverage * 100))}"


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

    from .distill import DistillConfig, find_teacher, teacher_item_map
    from .kd_losses import DistillLoss
    from .metrics import topk_overlap
    from .pruning import items_to_keep, non_embedding_params, structured_prune, vocabulary_prune
    from .train import (dataset_for, evaluate_model, fit, load_torch_model, save_torch_artifact,
                        seed_everything)

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
    else:
        keep = items_to_keep(ds, cfg.coverage, cfg.keep_items, teacher if cfg.by == "teacher" else None)
        model, kwargs, new_ds, info = vocabulary_prune(model, a.card["arch"], kwargs, ds, keep, cfg.unknown)
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
    out = save_torch_artifact(
        model, store=store, name=name or f"{a.name}-{cfg.default_suffix()}", stage="pruned",
        arch=a.card["arch"], arch_kwargs=kwargs, ds=new_ds,
        config={"prune": asdict(cfg)}, metrics=metrics, parent=[a.lineage()], seed=cfg.seed,
        extra={"pruning": info, "training": {k: v for k, v in (log or {}).items() if k != "history"}})
    note = {"unstructured": "dense file: same size and speed as the parent; zeros only pay once compressed",
            "structured": "a smaller dense model: smaller file, fewer operations",
            "vocabulary": "fewer items: a smaller table and output layer; pruned items are never recommended"}
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
    out.update_card(metrics={**out.metrics, "size": sizes, "latency": lat})
    return out
