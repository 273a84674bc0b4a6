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
