"""The `mlp` student: pooled history embeddings, an MLP, scores tied to the item table."""
from __future__ import annotations

import pytest
import torch

from edgekd.artifact import load_artifact
from edgekd.errors import ConfigError
from edgekd.models import create_model


@pytest.mark.parametrize("pool", ["mean", "weighted"])
def test_last_hidden_is_the_last_row_of_hidden_and_padding_changes_nothing(pool):
    torch.manual_seed(0)
    m = create_model("mlp", num_items=40, maxlen=12, d=8, layers=[16, 8], pool=pool).eval()
    if m.recency is not None:
        torch.nn.init.normal_(m.recency)  # not the mean: each distance its own weight
    ids = torch.randint(1, 41, (5, 12))
    ids[0, :5] = 0
    h = m.hidden(ids)
    assert h.shape == (5, 12, 8)
    assert torch.allclose(h[:, -1], m.last_hidden(ids), atol=1e-5)
    # row t is the state after the prefix ids[:, :t+1]: causal, as the training losses need
    assert torch.allclose(h[2, 6], m.last_hidden(ids[2:3, :7])[0], atol=1e-5)
    short = torch.tensor([[3, 4, 5, 6]])
    assert torch.allclose(m(short), m(torch.cat([torch.zeros(1, 8, dtype=torch.long), short], 1)), atol=1e-5)
    assert m(ids).shape == (5, 40)


def test_scores_are_tied_to_the_item_table():
    m = create_model("mlp", num_items=30, maxlen=5, d=8, layers=[16]).eval()  # 16 -> projected to d
    ids = torch.tensor([[1, 2, 3]])
    h = m.last_hidden(ids)
    assert torch.allclose(m(ids), h @ m.item_emb.weight[1:].T, atol=1e-6)
    assert [p for n, p in m.named_parameters() if "emb" in n] == [m.item_emb.weight]


def test_mlp_refuses_bad_options():
    with pytest.raises(ConfigError, match="pool"):
        create_model("mlp", num_items=3, pool="max")
    with pytest.raises(ConfigError, match="layers"):
        create_model("mlp", num_items=3, layers=[])
    with pytest.raises(ConfigError, match="mlp"):
        create_model("mlp", num_items=3, blocks=2)


@pytest.fixture(scope="module")
def mlp_student(tiny_teacher, tiny_ds, store):
    from edgekd.distill import DistillConfig, distill

    name = "tiny-mlp-student"
    if (store / name).is_dir():
        return load_artifact(store / name)
    # distilled with the existing losses (kl + rd), like any student
    return distill(tiny_teacher, tiny_ds, DistillConfig(model="mlp", d=8, maxlen=20, epochs=2, loss="kl+rd"),
                   store=store, name=name)


def test_mlp_distils_with_the_existing_losses(mlp_student):
    assert mlp_student.card["arch"] == "mlp"
    assert mlp_student.metrics["best_valid_ndcg@10"] > 0


@pytest.fixture(scope="module")
def weighted_student(tiny_teacher, tiny_ds, store):
    from edgekd.distill import distill
    from edgekd.search import SearchDistillConfig

    name = "tiny-mlp-weighted-student"
    if (store / name).is_dir():
        return load_artifact(store / name)
    return distill(tiny_teacher, tiny_ds, SearchDistillConfig(model="mlp", d=8, maxlen=20, epochs=2,
                                                              arch_options=(("pool", "weighted"),)),
                   store=store, name=name)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["mean", "weighted"])
@pytest.mark.parametrize("fmt", ["onnx-fp32", "tflite-fp32"])
def test_mlp_exports_with_parity(fmt, pool, request, tiny_ds, store):
    from edgekd.export import export

    a = request.getfixturevalue("mlp_student" if pool == "mean" else "weighted_student")
    assert a.card["arch_kwargs"]["pool"] == pool
    p = export(a, fmt, store=store, ds=tiny_ds).metrics["parity"]
    assert p["max_abs_diff"] < 1e-4 and p["top10_overlap"] >= 0.99


@pytest.mark.slow
def test_mlp_benches_like_the_others(mlp_student, tiny_teacher, fast_target, tmp_path):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    _, recs = bench([mlp_student], load_target(str(fast_target)), out=tmp_path, teacher=tiny_teacher)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[1]["vs_teacher"]["size_ratio"] > 1
