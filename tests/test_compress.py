import json

import pytest

from edgekd.errors import ConfigError, ExportError


def test_quantize_measures_every_recipe_beside_fp32_and_explains_the_choice(tiny_student, store, card_writes):
    from edgekd.export.quantize import QuantizeConfig, quantize
    from tests.conftest import written_once

    lines = []
    cfg = QuantizeConfig(target="onnx-int8", recipes=("dynamic", "static-minmax"), bench_users=50)
    r = quantize(tiny_student, cfg, store=store, say=lines.append)
    assert [row["recipe"] for row in r["rows"]] == ["dynamic", "static-minmax"]
    for row in r["rows"]:
        assert row["size_bytes"] > 0 and row["p50_ms"] > 0 and -1 <= row["ndcg@10_rel"] <= 1
        assert row["smaller"] == (row["size_bytes"] < r["fp32"]["size_bytes"])
    if r["winner"] is not None:
        w = r["winner"]
        assert w["smaller"] and w["not_slower"] and w["accurate"]
        assert r["artifact"].name == w["artifact"] and r["artifact"].card["recipe"] == w["recipe"]
    else:
        assert r["why"].startswith("no recipe pays") and r["artifact"] is None
    # a larger or slower result is warned about
    for row in r["rows"]:
        if not row["smaller"] or not row["not_slower"]:
            assert any(row["recipe"] in l and "WARNING" in l for l in lines)
    md = r["report"].read_text()
    assert "| fp32 |" in md and "static-minmax" in md
    rep = json.loads(r["report"].with_suffix(".json").read_text())
    assert rep["winner"] == (r["winner"]["recipe"] if r["winner"] else None)
    from edgekd.artifact import load_artifact

    gated = load_artifact(store / f"{tiny_student.name}-onnx-int8-dynamic")
    assert gated.metrics["gate"]["fp32"]["size_bytes"] == r["fp32"]["size_bytes"]
    # each card written once, complete: the gate measured on the staged file before it was saved
    for row in (row for row in r["rows"] if "error" not in row):
        card = written_once(card_writes, row["artifact"])
        assert card == load_artifact(store / row["artifact"]).card
        assert card["metrics"]["gate"]["p50_ms"] == row["p50_ms"] and card["drift_reference"]
    assert "gate" not in written_once(card_writes, r["fp32"]["artifact"])["metrics"]


def _fake_time_files(factors):
    """A stand-in for runner._time_files (as the quantize stage calls it): fp32 at 1 ms and each recipe at fp32 x its factors
    (one per round), through the real interleave/interval code."""
    from edgekd import timing

    def fake(cells, names, threads, users, rounds):
        it = {n: iter(f) for n, f in zip(names[1:], factors)}
        fns = {names[0]: lambda: 1.0, **{n: (lambda n=n: next(it[n])) for n in names[1:]}}
        return timing.interleave(fns, rounds, reference=names[0])
    return fake


def test_require_gain_fails_when_nothing_pays(tiny_student, store, monkeypatch):
    import edgekd.export.quantize as c

    # twice as slow as fp32 in every round: the interval lies below 1.0, "slower", nothing pays
    monkeypatch.setattr(c, "_time_files", _fake_time_files([[2.0, 2.1, 1.9, 2.0, 2.2]]))
    cfg = c.QuantizeConfig(target="tflite-int8", recipes=("weight-only",), require_gain=True, bench_users=50)
    with pytest.raises(ExportError, match="no recipe pays on this CPU: weight-only: .*slower"):
        c.quantize(tiny_student, cfg, store=store, say=lambda m: None)
    cfg = c.QuantizeConfig(target="tflite-int8", recipes=("weight-only",), bench_users=50)
    r = c.quantize(tiny_student, cfg, store=store, say=lambda m: None)
    assert r["winner"] is None and r["artifact"] is None  # a warning only


def test_quantize_calls_a_recipe_slower_only_when_the_interval_excludes_one(tiny_student, store, monkeypatch):
    import edgekd.export.quantize as c

    # one slow round of five (a burst of other work): the median ratio is 1.0, within noise
    monkeypatch.setattr(c, "_time_files", _fake_time_files([[1.0, 1.9, 0.98, 1.02, 1.0]]))
    lines = []
    cfg = c.QuantizeConfig(target="tflite-int8", recipes=("weight-only",), bench_users=50)
    row = c.quantize(tiny_student, cfg, store=store, say=lines.append)["rows"][0]
    assert row["latency_verdict"] == "within noise" and row["not_slower"]
    lo, hi = row["speedup_interval"]
    assert lo < 1.0 < hi and row["p50_rounds_ms"] == [1.0, 1.9, 0.98, 1.02, 1.0]
    assert not any("slower" in l and "WARNING" in l for l in lines)
    assert any("within noise" in l for l in lines)


def test_quantize_config_errors():
    from edgekd.export.quantize import QuantizeConfig

    with pytest.raises(ConfigError, match="quantised format"):
        QuantizeConfig(target="onnx-fp32")
    with pytest.raises(ConfigError, match="onnx recipes: dynamic"):
        QuantizeConfig(target="onnx-int8", recipes=("weight-only",))


def test_unstructured_pruning_hits_the_sparsity_and_recovery_keeps_the_zeros(tiny_student, store):
    from edgekd.artifact import load_artifact
    from edgekd.compress import PruneConfig, prunable, prune, sparsity_of
    from edgekd.torch_io import load_torch_model

    p = prune(tiny_student, PruneConfig(sparsity=0.6, recover_epochs=2), store=store)
    assert p.card["stage"] == "pruned" and p.card["parent"][0]["sha256"] == tiny_student.sha256
    m = load_torch_model(load_artifact(p.path))
    assert sparsity_of(m) == pytest.approx(0.6, abs=0.01)  # after the fine-tune too
    assert p.metrics["sparsity"] == pytest.approx(sparsity_of(m))
    assert p.metrics["size"]["gzip_bytes"] < p.metrics["size"]["parent_gzip_bytes"]  # zeros compress
    assert p.metrics["size"]["size_bytes"] == pytest.approx(p.metrics["size"]["parent_size_bytes"], rel=0.01)
    assert 0 <= p.metrics["test_ndcg@10"] <= 1 and "test_top10_overlap" in p.metrics
    # LayerNorms stay dense
    assert all(float((mod.weight == 0).float().mean()) < 0.99 for mod, _ in prunable(m))


def test_recovery_can_learn_from_the_unpruned_parent(tiny_student, store, monkeypatch):
    import torch

    import edgekd.kd_losses as kd_losses
    from edgekd.compress import PruneConfig, prune
    from edgekd.torch_io import load_torch_model

    guides = []

    class Spy(kd_losses.DistillLoss):
        def __init__(self, cfg, student, teachers, *args, **kwargs):
            guides.append(teachers[0])
            super().__init__(cfg, student, teachers, *args, **kwargs)

    monkeypatch.setattr(kd_losses, "DistillLoss", Spy)
    parent = load_torch_model(tiny_student).state_dict()
    for source in ("parent", "teacher"):
        p = prune(tiny_student, PruneConfig(method="structured", sparsity=0.5, recover_epochs=1, recover_from=source),
                  store=store, name=f"from-{source}")
        assert p.card["config"]["prune"]["recover_from"] == source
        g = guides[-1].state_dict()
        is_parent = g.keys() == parent.keys() and all(torch.equal(g[k], parent[k]) for k in parent)
        assert is_parent == (source == "parent")   # the unpruned student, frozen, or the teacher
        assert not any(t.requires_grad for t in guides[-1].parameters())


def test_prune_config_errors():
    from edgekd.compress import PruneConfig

    with pytest.raises(ConfigError, match="recover_from"):
        PruneConfig(recover_from="self")

    with pytest.raises(ConfigError, match="sparsity must be in"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="prune method must be one of"):
        PruneConfig(method="lottery")
    with pytest.raises(ConfigError, match="coverage"):
        PruneConfig(method="vocabulary", coverage=0)


@pytest.mark.parametrize("arch,extra", [("sasrec", {"blocks": 2, "heads": 2}), ("bert4rec", {"blocks": 1}),
                                        ("mlp", {"pool": "weighted"}), ("gru4rec", {})])
def test_window_pruning_scores_the_last_items_as_the_full_model_does(arch, extra):
    """A history no longer than the window scores exactly as before; a longer one as its last
    `window` items did in the full model (positions are right-aligned in every model)."""
    import torch

    from edgekd.models import create_model
    from edgekd.pruning import window_prune

    torch.manual_seed(0)
    kw = {"num_items": 30, "maxlen": 12, "d": 16, "dropout": 0.0, **extra}
    m = create_model(arch, **kw).eval()
    if arch == "mlp":   # distinct distance weights, so that a wrong slice shows
        with torch.no_grad():
            m.recency.copy_(torch.randn(12))   # not linear: softmax ignores a constant shift
    new, new_kw, info = window_prune(m, arch, kw, 5)
    read = 4 if arch == "bert4rec" else 5             # BERT4Rec's window holds the mask token too
    assert new_kw["maxlen"] == 5 and new.maxlen == 5
    assert info == {"window_before": 12, "window": 5, "history_items": read}
    short = torch.zeros(3, 12, dtype=torch.long)
    short[:, -4:] = torch.randint(1, 31, (3, 4))      # 4 items: within the window
    long = torch.randint(1, 31, (3, 12))              # 12 items: the window reads the last `read`
    with torch.no_grad():
        assert torch.allclose(new(short[:, -5:]), m(short), atol=1e-5)
        trimmed = long.clone()
        trimmed[:, :-read] = 0
        assert torch.allclose(new(long[:, -5:]), m(trimmed), atol=1e-5)
        if arch != "gru4rec":
            assert not torch.allclose(new(long[:, -5:]), m(long), atol=1e-5)   # the older items did count
    again = create_model(arch, **new_kw).eval()      # rebuilt from the kwargs an artifact stores
    again.load_state_dict(new.state_dict())
    with torch.no_grad():
        assert torch.allclose(again(long[:, -5:]), new(long[:, -5:]))
    for bad in (0, 12, 40):
        with pytest.raises(ConfigError, match="--window must be between 1 and"):
            window_prune(m, arch, kw, bad)


def test_window_pruning_of_the_student_is_an_artifact_with_a_shorter_input(tiny_student, tiny_ds, store):
    from edgekd.compress import PruneConfig, prune
    from edgekd.evaluation import evaluate_model
    from edgekd.torch_io import load_torch_model

    w = tiny_student.card["arch_kwargs"]["maxlen"] // 2
    p = prune(tiny_student, PruneConfig(method="window", window=w), store=store)
    assert p.name == f"{tiny_student.name}-window{w}" and p.card["arch_kwargs"]["maxlen"] == w
    hist, _ = tiny_ds.eval_split("test")
    assert p.card["pruning"]["test_histories_cut"] == pytest.approx(sum(len(h) > w for h in hist) / len(hist))
    assert p.card["config"]["prune"]["window"] == w
    model = load_torch_model(p)
    assert model.maxlen == w and model.pos_emb.weight.shape[0] == w
    again, _ = evaluate_model(model, tiny_ds, "test", sampled=False)
    assert p.metrics["test_ndcg@10"] == pytest.approx(again["ndcg@10"])
    with pytest.raises(ConfigError, match="--window N"):
        PruneConfig(method="window")
    with pytest.raises(ConfigError, match="--window N"):
        PruneConfig(method="vocabulary", window=5)


def test_structured_pruning_keeps_the_function_when_nothing_important_is_removed():
    """Widths that carry nothing (zeroed units) are the ones removed, and the output is unchanged."""
    import torch

    from edgekd.models import create_model
    from edgekd.pruning import non_embedding_params, structured_prune

    torch.manual_seed(0)
    kw = {"num_items": 30, "maxlen": 8, "d": 16, "blocks": 2, "heads": 2, "dropout": 0.0, "ffn_mult": 2}
    m = create_model("sasrec", **kw).eval()
    with torch.no_grad():
        for b in m.blocks:   # make half of each block's FFN units and attention dims dead
            b.ffn[0].weight[::2] = 0
            b.ffn[0].bias[::2] = 0
            i = b.attn.inner
            dead = torch.arange(0, i, 2)
            for off in (0, i, 2 * i):
                b.attn.qkv.weight[off + dead] = 0
                b.attn.qkv.bias[off + dead] = 0
    ids = torch.randint(1, 31, (4, 8))
    new, new_kw, info = structured_prune(m, kw, amount=0.45)
    assert non_embedding_params(new) <= 0.55 * non_embedding_params(m)
    assert min(info["ffn_dims"]) >= 16 and min(info["attn_dims"]) >= 8   # room for every live unit
    assert torch.allclose(new(ids), m(ids), atol=1e-4)
    # rebuilt from its kwargs alone (what an artifact stores), it is the same model
    again = create_model("sasrec", **new_kw).eval()
    again.load_state_dict(new.state_dict())
    assert torch.allclose(again(ids), new(ids))


def test_structured_pruning_of_the_student_halves_non_embedding_params_and_exports(tiny_student, tiny_ds, store,
                                                                                   card_writes):
    from edgekd.artifact import load_artifact
    from edgekd.compress import PruneConfig, prune
    from edgekd.export import export
    from tests.conftest import written_once

    p = prune(tiny_student, PruneConfig(method="structured", sparsity=0.5, dims=0.25, recover_epochs=1), store=store)
    m = p.metrics
    # one card, complete: size and latency measured on the weights before it was written
    assert written_once(card_writes, p.name) == load_artifact(p.path).card
    assert {"size", "latency"} <= set(load_artifact(p.path).metrics)
    assert m["non_embedding_params"] <= 0.5 * m["parent_non_embedding_params"]
    assert m["size"]["size_bytes"] < m["size"]["parent_size_bytes"]          # genuinely smaller
    assert p.card["arch_kwargs"]["d"] == 6 and p.card["pruning"]["d"] == [8, 6]
    # latency on the local CPU beside the parent's, both measured
    lat = m["latency"]
    assert lat["p50_ms"] > 0 and lat["parent_p50_ms"] > 0 and lat["runtime"] == "torch"
    assert len(lat["p50_rounds_ms"]) == len(lat["parent_p50_rounds_ms"]) == 5
    lo, hi = lat["speedup_interval"]
    assert lo <= lat["speedup"] <= hi and lat["latency_verdict"] in ("faster", "slower", "within noise")
    assert lat["not_slower"] == (lat["latency_verdict"] != "slower")
    e = export(p, "onnx-fp32", store=store, ds=tiny_ds)
    assert e.metrics["parity"]["top10_overlap"] >= 0.99


def test_vocabulary_pruning_keeps_the_covering_items_and_never_recommends_oov(tiny_student, tiny_ds, store,
                                                                              fast_target, tmp_path):
    import json

    import numpy as np

    from edgekd.compress import PruneConfig, prune
    from edgekd.export import export
    from edgekd.pruning import items_to_keep
    from edgekd.evaluation import model_scores
    from edgekd.torch_io import dataset_for, load_torch_model

    keep = items_to_keep(tiny_ds, coverage=0.8)
    counts = np.bincount(np.concatenate(tiny_ds.train_sequences()), minlength=tiny_ds.num_items + 1)[1:]
    kept_idx = [tiny_ds.items.index(i) for i in keep]
    share = counts[kept_idx].sum() / counts.sum()
    assert share >= 0.8 and len(keep) < tiny_ds.num_items
    # the fewest: dropping the least frequent kept item falls below the coverage
    assert share - counts[kept_idx].min() / counts.sum() < 0.8

    p = prune(tiny_student, PruneConfig(method="vocabulary", coverage=0.8, recover_epochs=1), store=store)
    vocab = json.loads((p.path / "vocab.json").read_text())
    assert vocab["items"][:-1] == keep and vocab["items"][-1] == "<oov>" and vocab["oov_index"] == len(keep) + 1
    assert vocab["unknown_items"] == "skip" and p.card["pruning"]["unknown_items"] == "skip"
    assert p.metrics["size"]["size_bytes"] < p.metrics["size"]["parent_size_bytes"]
    ds = dataset_for(p)
    assert ds.num_users == tiny_ds.num_users and ds.oov_index == len(keep) + 1
    assert ds.unknown_items == "skip" and all(ds.oov_index not in s for s in ds.train_sequences())
    # an OOV input is still accepted (an app may feed it), and OOV is never recommended
    x = np.array([[ds.oov_index] * 5 + [1, 2, 3]])
    scores = model_scores(load_torch_model(p), x)
    assert scores.shape == (1, len(keep) + 1) and scores[0].argmin() == len(keep)
    # a pruned target counts as a miss: the pruned model can only lose those users
    test_targets = np.array([s[-1] for s in tiny_ds.sequences])
    pruned_targets = ~np.isin(test_targets, [tiny_ds.items.index(i) + 1 for i in keep])
    assert p.metrics["test_hr@10"] <= 1 - pruned_targets.mean() + 1e-9
    # an in-graph top-K of the exported file never returns the OOV column either
    from edgekd.export import run_all_outputs
    from edgekd.evaluation import eval_inputs

    e = export(p, "tflite-fp32", store=store, ds=ds, topk=len(keep))
    x, _, _ = eval_inputs(ds, "test", p.card["arch_kwargs"]["maxlen"])
    items = run_all_outputs(e.file, x)["items"]
    assert items.shape == (len(x), len(keep)) and not (items == ds.oov_index - 1).any()
    # the bench scores it on its own (remapped) data beside the teacher on the original
    from edgekd.bench import bench
    from edgekd.targets import load_target

    _, recs = bench([p], load_target(str(fast_target)), out=tmp_path)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[1]["accuracy"]["ndcg@10"] == pytest.approx(p.metrics["test_ndcg@10"], abs=1e-6)


def test_vocabulary_pruning_to_a_size_budget_keeps_the_most_items_that_fit(tiny_student, tiny_ds, store):
    """--max-bytes: the most items whose weights fit, at the precision the app ships; the
    int8 export then weighs what the estimate said, plus its container."""
    from edgekd.compress import PruneConfig, prune
    from edgekd.export import export
    from edgekd.pruning import estimated_bytes, items_for_budget
    from edgekd.torch_io import dataset_for, load_torch_model

    model = load_torch_model(tiny_student)
    params = sum(p.numel() for p in model.parameters())
    assert estimated_bytes(model, "fp32") == 4 * params
    d = model.item_emb.weight.shape[1]
    full = estimated_bytes(model, "int8")
    fixed = full - (d + 1) * model.item_emb.weight.shape[0]
    budget = fixed + (d + 1) * (20 + 2)  # 20 items, the padding row and the out-of-vocabulary row
    assert items_for_budget(model, tiny_ds, budget, "int8") == 20
    assert items_for_budget(model, tiny_ds, budget - 1, "int8") == 19
    assert items_for_budget(model, tiny_ds, 10 * full, "int8") == tiny_ds.num_items  # nothing to prune

    p = prune(tiny_student, PruneConfig(method="vocabulary", max_bytes=budget), store=store)
    b = p.card["pruning"]["size_budget"]
    assert p.card["pruning"]["items_kept"] == 20 and b["estimated_bytes"] <= budget == b["max_bytes"]
    assert p.name.endswith(f"-vocab-{budget}B-int8")
    e = export(p, "onnx-int8", store=store, ds=dataset_for(p))
    assert b["estimated_bytes"] <= e.card["size_bytes"] <= b["estimated_bytes"] + 64_000

    budget32 = 4 * params - 4 * d * (model.item_emb.weight.shape[0] - 32)  # 30 items and the two rows
    p32 = prune(tiny_student, PruneConfig(method="vocabulary", max_bytes=budget32, budget_precision="fp32"),
                store=store)
    assert p32.card["pruning"]["items_kept"] == 30
    assert p32.card["pruning"]["size_budget"]["estimated_bytes"] <= budget32
    assert p32.metrics["size"]["size_bytes"] <= budget32 + 4096  # safetensors: the weights and a header


def test_a_prune_without_a_budget_records_its_settings_as_before_budgets_existed():
    """Earlier pruned artifacts keep matching their settings (a resumed search reuses them)."""
    from edgekd.compress import PruneConfig

    d = PruneConfig(method="vocabulary", coverage=0.9).to_dict()
    assert "max_bytes" not in d and "budget_precision" not in d and d["coverage"] == 0.9
    assert PruneConfig(method="vocabulary", max_bytes=5000).to_dict()["max_bytes"] == 5000


def test_size_budget_errors(tiny_student, tiny_ds):
    from edgekd.compress import PruneConfig
    from edgekd.pruning import items_for_budget
    from edgekd.torch_io import load_torch_model

    with pytest.raises(ConfigError, match="--method vocabulary"):
        PruneConfig(method="unstructured", max_bytes=1000)
    with pytest.raises(ConfigError, match="without --keep-items"):
        PruneConfig(method="vocabulary", max_bytes=1000, keep_items=3)
    with pytest.raises(ConfigError, match="one of fp32, int8"):
        PruneConfig(method="vocabulary", max_bytes=1000, budget_precision="int4")
    with pytest.raises(ConfigError, match="without its item table already takes") as e:
        items_for_budget(load_torch_model(tiny_student), tiny_ds, 100, "int8")
    assert "allow at least" in e.value.hint


@pytest.mark.parametrize("text,expect", [("2MB", 2_000_000), ("1.5MiB", 1_572_864), ("500000", 500_000),
                                         ("64 kB", 64_000), ("abc", None), ("2 parsecs", None), ("0", None)])
def test_max_bytes_reads_sizes(text, expect):
    import typer

    from edgekd.cli import _bytes_ok

    if expect is None:
        with pytest.raises(typer.BadParameter):
            _bytes_ok(text)
    else:
        assert _bytes_ok(text) == expect


def test_vocabulary_by_teacher_mass_scores_a_chunk_of_users_at_a_time(tiny_teacher, tiny_ds, monkeypatch):
    from edgekd import metrics
    from edgekd.pruning import items_to_keep
    from edgekd.torch_io import load_torch_model

    teacher = load_torch_model(tiny_teacher).eval()
    whole = items_to_keep(tiny_ds, coverage=0.8, teacher=teacher)
    rows, real = [], teacher.forward
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 7 * tiny_ds.num_items)
    monkeypatch.setattr(teacher, "forward", lambda x: rows.append(len(x)) or real(x))
    assert items_to_keep(tiny_ds, coverage=0.8, teacher=teacher) == whole
    assert max(rows) == 7 and sum(rows) == tiny_ds.num_users
