import json

import pytest

from edgekd.errors import ConfigError, ExportError


def test_quantize_measures_every_recipe_beside_fp32_and_explains_the_choice(tiny_student, store):
    from edgekd.compress import QuantizeConfig, quantize

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
    else:
        assert r["why"].startswith("no recipe pays")
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


def test_require_gain_fails_when_nothing_pays(tiny_student, store, monkeypatch):
    import edgekd.compress as c

    # "not slower" now means 100x faster than fp32: no recipe can pay
    monkeypatch.setattr(c, "LATENCY_NOISE", -0.99)
    cfg = c.QuantizeConfig(target="tflite-int8", recipes=("weight-only",), require_gain=True, bench_users=50)
    with pytest.raises(ExportError, match="no recipe pays on this CPU: weight-only: .*slower"):
        c.quantize(tiny_student, cfg, store=store, say=lambda m: None)
    cfg = c.QuantizeConfig(target="tflite-int8", recipes=("weight-only",), bench_users=50)
    assert c.quantize(tiny_student, cfg, store=store, say=lambda m: None)["winner"] is None  # a warning only


def test_quantize_config_errors():
    from edgekd.compress import QuantizeConfig

    with pytest.raises(ConfigError, match="quantised format"):
        QuantizeConfig(target="onnx-fp32")
    with pytest.raises(ConfigError, match="onnx recipes: dynamic"):
        QuantizeConfig(target="onnx-int8", recipes=("weight-only",))


def test_unstructured_pruning_hits_the_sparsity_and_recovery_keeps_the_zeros(tiny_student, store):
    from edgekd.artifact import load_artifact
    from edgekd.compress import PruneConfig, prunable, prune, sparsity_of
    from edgekd.train import load_torch_model

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


def test_prune_config_errors():
    from edgekd.compress import PruneConfig

    with pytest.raises(ConfigError, match="sparsity must be in"):
        PruneConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="not built yet"):
        PruneConfig(method="structured")
