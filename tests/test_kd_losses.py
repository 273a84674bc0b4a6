"""Distillation loss terms: values checked against hand-computed cases and the properties each
term exists for (zero at agreement, ordering preferred, projector trained), plus the CLI."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.distill import DistillConfig
from edgekd.errors import ConfigError
from edgekd.kd_losses import DistillLoss, KDBatch, list_losses, loss_spec, parse_losses
from edgekd.models import create_model


def batch(s_logits, t_logits_list, weights=None, epoch=1, d=4):
    s_logits = torch.as_tensor(s_logits, dtype=torch.float32)
    t = [torch.as_tensor(x, dtype=torch.float32) for x in t_logits_list]
    w = weights or [1.0 / len(t)] * len(t)
    p = s_logits.shape[0]
    return KDBatch(torch.zeros(p, d), s_logits, [torch.zeros(p, d)] * len(t), t, w, None, [None] * len(t), epoch)


def term(name, **cfg):
    return loss_spec(name).build(DistillConfig(**cfg), None, [])


def test_registry_and_parse():
    assert {s.name for s in list_losses()} >= {"kl", "mse", "rd", "rrd", "hint"}
    assert parse_losses("kl+hint") == ("kl", "hint")
    for bad in ("", "kl+kl", "kl+nope", "+"):
        with pytest.raises(ConfigError):
            parse_losses(bad)
    with pytest.raises(ConfigError):
        DistillConfig(loss="softmax")


def test_kl_zero_when_equal_and_matches_hand_value():
    kl = term("kl", temperature=1.0)
    logits = [[1.0, 2.0, 3.0]]
    assert kl(batch(logits, [logits])).item() == pytest.approx(0.0, abs=1e-6)
    p = F.softmax(torch.tensor([0.0, 0.0, 3.0]), -1)
    q = F.softmax(torch.tensor([3.0, 0.0, 0.0]), -1)
    want = float((p * (p.log() - q.log())).sum())
    assert kl(batch([[3.0, 0, 0]], [[0, 0, 3.0]])).item() == pytest.approx(want, rel=1e-5)
    # T^2 scaling at T=2
    kl2 = term("kl", temperature=2.0)
    p2, q2 = F.softmax(torch.tensor([0.0, 0, 1.5]), -1), F.softmax(torch.tensor([1.5, 0, 0]), -1)
    assert kl2(batch([[3.0, 0, 0]], [[0, 0, 3.0]])).item() == pytest.approx(
        4 * float((p2 * (p2.log() - q2.log())).sum()), rel=1e-5)


def test_several_teachers_mix_distributions():
    kl = term("kl", temperature=1.0)
    a, b = [[4.0, 0, 0]], [[0, 0, 4.0]]
    mix = 0.5 * F.softmax(torch.tensor(a[0]), -1) + 0.5 * F.softmax(torch.tensor(b[0]), -1)
    bt = batch([[0.0, 1.0, 0.0]], [a, b])
    assert torch.allclose(bt.t_logprob(1.0).exp()[0], mix, atol=1e-6)
    q = F.softmax(torch.tensor([0.0, 1.0, 0.0]), -1)
    assert kl(bt).item() == pytest.approx(float((mix * (mix.log() - q.log())).sum()), rel=1e-5)
    # a weight of zero ignores that teacher entirely
    only_a = batch([[0.0, 1.0, 0.0]], [a, b], weights=[1.0, 0.0])
    assert kl(only_a).item() == pytest.approx(kl(batch([[0.0, 1.0, 0.0]], [a])).item(), rel=1e-6)


def test_mse_matches_mean_teacher_logits():
    mse = term("mse")
    assert mse(batch([[1.0, 3.0]], [[[0.0, 2.0]], [[2.0, 4.0]]])).item() == pytest.approx(0.0, abs=1e-7)
    assert mse(batch([[1.0, 1.0]], [[[0.0, 3.0]]])).item() == pytest.approx((1 + 4) / 2)


def test_rd_rewards_teacher_top_items_by_position():
    rd = term("rd", rd_k=2, rd_lambda=1.0, rd_warmup=100)
    teacher = [[5.0, 4.0, 0.0, 0.0]]
    good = rd(batch([[5.0, 4.0, 0.0, 0.0]], [teacher])).item()
    bad = rd(batch([[0.0, 0.0, 5.0, 4.0]], [teacher])).item()
    assert good < bad
    # hand value: weights exp(-1), exp(-2) normalised, on log-softmax of the teacher's top 2
    w = torch.tensor([math.exp(-1), math.exp(-2)])
    w = w / w.sum()
    logp = F.log_softmax(torch.tensor([0.0, 0.0, 5.0, 4.0]), -1)[[0, 1]]
    assert bad == pytest.approx(float(-(w * logp).sum()), rel=1e-5)


def test_rd_discrepancy_weighting_after_warmup_moves_weight_to_misranked_items():
    torch.manual_seed(0)
    n = 200
    teacher = torch.arange(n, 0, -1, dtype=torch.float32).unsqueeze(0)   # item 0 best, 1 second ...
    student = teacher.clone()
    student[0, 1] = -1000.0           # the student ranks the teacher's 2nd item last
    rd_pos = term("rd", rd_k=2, rd_lambda=1.0, rd_warmup=1)
    before = rd_pos(batch(student, [teacher], epoch=1)).item()        # warm-up: position weights only
    after = rd_pos(batch(student, [teacher], epoch=2)).item()         # hybrid: item 1 weighs more
    assert after > before


def test_rrd_prefers_the_teachers_order():
    rrd = term("rrd", rrd_k=3)
    teacher = [[3.0, 2.0, 1.0, 0.0, 0.0]]
    ordered = rrd(batch([[3.0, 2.0, 1.0, 0.0, 0.0]], [teacher])).item()
    swapped = rrd(batch([[1.0, 2.0, 3.0, 0.0, 0.0]], [teacher])).item()
    below_rest = rrd(batch([[-3.0, -3.0, -3.0, 0.0, 0.0]], [teacher])).item()
    assert ordered < swapped < below_rest
    # hand value: -sum_k [s_k - log(sum_{l>=k} e^{s_l} + sum_rest e^{s_j})]
    s = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0])
    rest = math.exp(0) * 2
    want = -sum(float(s[k]) - math.log(float(s[k:3].exp().sum()) + rest) for k in range(3))
    assert ordered == pytest.approx(want, rel=1e-5)


def test_hint_trains_its_projector_and_pulls_embeddings(tiny_ds):
    torch.manual_seed(0)
    student = create_model("sasrec", num_items=tiny_ds.num_items, d=8, blocks=1, maxlen=10)
    teacher = create_model("sasrec", num_items=tiny_ds.num_items, d=16, blocks=1, maxlen=10).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = DistillLoss(DistillConfig(loss="hint", maxlen=10), student, [teacher], [1.0])
    assert sum(p.numel() for p in loss.parameters()) == 8 * 16 + 16   # the projector, not the teacher
    x = torch.randint(1, tiny_ds.num_items + 1, (4, 10))
    y = torch.randint(1, tiny_ds.num_items + 1, (4, 10))
    opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=1e-2)
    first = None
    for _ in range(60):
        parts = loss(student, x, y)
        opt.zero_grad()
        (parts["hint_loss"]).backward()
        opt.step()
        first = first if first is not None else parts["hint_loss"].item()
    assert parts["hint_loss"].item() < 0.5 * first


def test_every_loss_trains_a_student_end_to_end(tiny_ds, tiny_teacher, store):
    from edgekd.distill import distill

    cfg = DistillConfig(d=8, maxlen=20, epochs=2, patience=2, loss="kl+mse+rd+rrd+hint", rd_warmup=1)
    a = distill(tiny_teacher, tiny_ds, cfg, store=store, name="tiny-all-losses")
    h = a.card["history"]
    assert {"kl_loss", "mse_loss", "rd_loss", "rrd_loss", "hint_loss", "task_loss"} <= set(h[0])
    assert all(math.isfinite(v) for row in h for k, v in row.items() if k.endswith("_loss"))
    assert a.card["config"]["distill"]["loss"] == "kl+mse+rd+rrd+hint"


def test_two_teachers_and_init_from_teacher(tiny_ds, tiny_teacher, store):
    from edgekd.distill import distill, init_from_teacher

    # init: the student's table is the teacher's best rank-d approximation, up to scale
    t = tiny_teacher
    from edgekd.torch_io import load_torch_model

    teacher = load_torch_model(t)
    student = create_model("sasrec-student", num_items=tiny_ds.num_items, d=4, maxlen=20)
    info = init_from_teacher(student, teacher)
    assert 0 < info["energy_kept"] <= 1
    tt = teacher.item_table().detach()[1:]
    ss = student.item_emb.weight.detach()[1:]
    # the student's rows span the teacher's top-4 right singular directions: projecting the
    # student's Gram structure back, dot products are preserved up to one scale
    g_s, g_t = ss @ ss.T, tt @ torch.linalg.svd(tt, full_matrices=False)[2][:4].T
    g_t = g_t @ g_t.T
    c = torch.corrcoef(torch.stack([g_s.flatten(), g_t.flatten()]))[0, 1]
    assert c > 0.999

    cfg = DistillConfig(d=8, maxlen=20, epochs=1, patience=1, teacher_weights=(2.0, 1.0), init_from_teacher=True)
    a = distill([tiny_teacher, tiny_teacher], tiny_ds, cfg, store=store, name="tiny-two-teachers")
    assert len(a.card["parent"]) == 2 and "init_from_teacher" in a.card
    with pytest.raises(ConfigError):
        distill([tiny_teacher], tiny_ds, cfg, store=store, name="x")   # 2 weights, 1 teacher


def test_bert4rec_teacher_trains_and_teaches_beside_sasrec(tiny_ds, tiny_teacher, store):
    from edgekd.distill import distill
    from edgekd.train import TrainConfig, train_teacher

    bert = train_teacher(tiny_ds, TrainConfig(model="bert4rec", d=16, maxlen=20, epochs=2, patience=2),
                         store=store, name="tiny-bert4rec")
    assert bert.card["arch"] == "bert4rec" and bert.metrics["test_ndcg@10"] > 0
    cfg = DistillConfig(d=8, maxlen=20, epochs=1, patience=1, loss="kl+rrd+hint")
    a = distill([tiny_teacher, bert], tiny_ds, cfg, store=store, name="tiny-sasrec-bert-student")
    assert [p["name"] for p in a.card["parent"]] == ["tiny-teacher", "tiny-bert4rec"]
    assert all(math.isfinite(a.card["history"][0][k]) for k in ("kl_loss", "rrd_loss", "hint_loss"))


def test_bidirectional_teacher_distils_at_sampled_positions_including_the_last():
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 5:] = True
    mask[1, 18:] = True
    mask[2, :] = True
    loss = DistillLoss(DistillConfig(), create_model("sasrec", num_items=5, d=8, maxlen=20), [], [1.0])
    sel = loss._sample_positions(mask)
    rows, cols = mask.nonzero(as_tuple=True)
    r, c = rows[sel], cols[sel]
    for row, n in ((0, 8), (1, 2), (2, 8)):
        assert int((r == row).sum()) == n
        assert 19 in c[r == row].tolist()


def test_period_splits_events_by_time(tiny_spec, tiny_ds):
    from dataclasses import replace

    from edgekd.data import DataSpec, load_data

    early = load_data(replace(tiny_spec, period="early:0.5"))
    late = load_data(replace(tiny_spec, period="late:0.5"))
    assert early.name.endswith("early0.5") and late.name.endswith("late0.5")
    assert early.fingerprint() != late.fingerprint()
    # every event lands in one period (users left with too few events are dropped and counted)
    assert early.num_events + late.num_events <= tiny_ds.num_events
    for bad in ("early", "middle:0.5", "late:1.5"):
        with pytest.raises(ConfigError, match="period"):
            DataSpec(format="synthetic", period=bad)


def test_cross_domain_kd_uses_only_matched_items():
    torch.manual_seed(0)
    # the student's catalogue: items 1..4; the teacher knows student items 1 and 3 as its 2 and 1
    item_map = torch.tensor([0, 2, 0, 1, 0])
    teacher = create_model("sasrec", num_items=3, d=8, blocks=1, maxlen=6).eval()
    student = create_model("sasrec", num_items=4, d=4, blocks=1, maxlen=6).eval()  # no dropout: compared twice
    loss = DistillLoss(DistillConfig(loss="kl+hint", temperature=1.0), student, [teacher], [1.0],
                       item_maps=[item_map])
    seen = {}
    orig = teacher.hidden

    def spy(ids):
        seen["ids"] = ids.clone()
        return orig(ids)

    teacher.hidden = spy
    x = torch.tensor([[0, 1, 2, 3, 4, 1]])
    y = torch.tensor([[1, 2, 3, 4, 1, 3]])
    parts = loss(student, x, y)
    assert seen["ids"].tolist() == [[0, 2, 0, 1, 0, 2]]     # unknown items read as padding
    # kl over the 2 matched items, by hand
    mask = y > 0
    s = student.score(student.hidden(x)[mask])[:, [0, 2]]
    with torch.no_grad():
        t = teacher.score(orig(item_map[x])[mask])[:, [1, 0]]
    want = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    assert parts["kl_loss"].item() == pytest.approx(want.item(), rel=1e-5)


def test_cross_domain_distillation_end_to_end(tiny_spec, store):
    from dataclasses import replace

    from edgekd.data import load_data
    from edgekd.distill import distill
    from edgekd.train import TrainConfig, train_teacher

    early, late = load_data(replace(tiny_spec, period="early:0.5")), load_data(replace(tiny_spec, period="late:0.5"))
    t = train_teacher(early, TrainConfig(d=16, maxlen=20, epochs=1), store=store, name="tiny-early-teacher")
    s = distill(t, late, DistillConfig(d=8, maxlen=20, epochs=1, init_from_teacher=True), store=store,
                name="tiny-late-student")
    cd = s.card["cross_domain"][0]
    assert 0 < cd["matched_items"] <= late.num_items and cd["teacher"] == "tiny-early-teacher"
    assert s.card["dataset"]["fingerprint"] == late.fingerprint()


def test_mutual_learning_each_side_learns_only_through_its_own_terms():
    from edgekd.kd_losses import MutualLoss

    torch.manual_seed(0)
    teacher = create_model("sasrec", num_items=6, d=8, blocks=1, maxlen=5)
    student = create_model("sasrec", num_items=6, d=4, blocks=1, maxlen=5)
    loss = MutualLoss(DistillConfig(online=True), teacher)
    assert sum(p.numel() for p in loss.parameters()) == sum(p.numel() for p in teacher.parameters())
    x, y = torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 4, 5]])
    parts = loss(student, x, y)
    parts["kl_loss"].backward()          # the student's KL term moves the student only
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    with pytest.raises(ConfigError):
        MutualLoss(DistillConfig(online=True, loss="rd"), teacher)
    with pytest.raises(ConfigError):
        MutualLoss(DistillConfig(online=True), create_model("bert4rec", num_items=6, d=8, maxlen=5))


def test_online_distillation_trains_a_fresh_teacher_alongside(tiny_ds, tiny_teacher, store):
    from edgekd.distill import distill

    a = distill(tiny_teacher, tiny_ds, DistillConfig(d=8, maxlen=20, epochs=2, patience=2, online=True),
                store=store, name="tiny-online")
    assert 0 <= a.metrics["online_teacher_test_ndcg@10"] <= 1
    assert "teacher_task_loss" in a.card["history"][0]
    assert a.card["history"][1]["teacher_task_loss"] < a.card["history"][0]["teacher_task_loss"]


# ---------------------------------------------------------------- the teacher cache

def _cached_and_live(tiny_ds, tiny_teacher, loss, k, student=None, **kw):
    """The same batch through a live-teacher loss and a cached one (window indices as fit passes them)."""
    from edgekd.data import training_pairs
    from edgekd.torch_io import load_torch_model

    teacher = load_torch_model(tiny_teacher).eval()
    x_all, y_all = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), teacher.maxlen))
    student = (load_torch_model(student) if student is not None else  # a trained student: distinct scores
               create_model("sasrec-student", **DistillConfig(d=8, maxlen=teacher.maxlen).arch_kwargs(tiny_ds.num_items)))
    student.eval()
    live = DistillLoss(DistillConfig(loss=loss, **kw), student, [teacher], [1.0])
    cached = DistillLoss(DistillConfig(loss=loss, teacher_cache=k, **kw), student, [teacher], [1.0])
    cached.prepare(x_all, y_all)
    rows = torch.tensor([5, 0, 17, 3, 9])  # any order, as a shuffled batch gives them
    lengths = ((x_all[rows] > 0) | (y_all[rows] > 0)).sum(1)
    width = int(lengths.max())  # cut to the batch's longest window, as fit's length buckets do
    xb, yb = x_all[rows][:, -width:], y_all[rows][:, -width:]
    return live(student, xb, yb), cached(student, xb, yb, rows=rows), cached


@pytest.mark.parametrize("loss", ["kl", "mse", "rd", "rrd"])
def test_a_full_width_teacher_cache_gives_the_live_teachers_loss(tiny_ds, tiny_teacher, tiny_student, loss):
    """K = the whole catalogue: the cached terms are the live ones (fp16 logits aside)."""
    live, cached, _ = _cached_and_live(tiny_ds, tiny_teacher, loss, tiny_ds.num_items, tiny_student, rd_warmup=5)
    tol = 2e-3 if loss in ("kl", "mse") else 1e-6  # kl and mse read the fp16 logits; rd and rrd the columns only
    assert cached[f"{loss}_loss"].item() == pytest.approx(live[f"{loss}_loss"].item(), rel=tol, abs=1e-6)
    assert cached["task_loss"].item() == live["task_loss"].item()


def test_a_small_teacher_cache_keeps_each_positions_top_k_in_order(tiny_ds, tiny_teacher):
    from edgekd.data import training_pairs
    from edgekd.torch_io import load_torch_model

    _, cached, loss = _cached_and_live(tiny_ds, tiny_teacher, "kl", 7)
    c = loss.cache
    assert c.idx.shape[1] == 7 and c.idx.dtype == torch.int32 and c.val.dtype == torch.float16
    assert c.info["bytes"] == c.info["positions"] * 7 * 6
    teacher = load_torch_model(tiny_teacher).eval()
    x_all, y_all = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), teacher.maxlen))
    row = 11
    idx, val = c.lookup(torch.tensor([row]))
    with torch.no_grad():
        logits = teacher.score(teacher.hidden(x_all[row:row + 1])[y_all[row:row + 1] > 0])
    assert torch.equal(idx, logits.topk(7, -1).indices)
    assert torch.allclose(val, logits.topk(7, -1).values, rtol=1e-2, atol=1e-2)
    assert 0 < cached["kl_loss"].item() < float("inf")


def test_a_cache_of_some_positions_per_window_distils_there_only(tiny_ds, tiny_teacher, tiny_student):
    """--cache-positions 2: each window's last target and one other; the KD term is the live
    teacher's at exactly those positions, the task term still reads every position."""
    from edgekd.data import training_pairs
    from edgekd.kd_losses import kl_logprob
    from edgekd.torch_io import load_torch_model

    n = tiny_ds.num_items
    live, cached, loss = _cached_and_live(tiny_ds, tiny_teacher, "kl", n, tiny_student, cache_positions=2)
    c = loss.cache
    teacher = load_torch_model(tiny_teacher).eval()
    student = load_torch_model(tiny_student).eval()
    x_all, y_all = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), teacher.maxlen))
    mask = y_all > 0
    assert torch.equal(c.kept.sum(1), mask.sum(1).clamp(max=2))
    assert bool(c.kept[mask[:, -1], -1].all())                     # the last target always kept
    assert not bool((c.kept & ~mask).any())
    assert c.info["positions"] == int(c.kept.sum()) and c.info["positions_per_window"] == 2
    rows = torch.tensor([5, 0, 17, 3, 9])
    keep = c.kept[rows][mask[rows]]
    T = DistillConfig().temperature
    with torch.no_grad():
        s = student.score(student.hidden(x_all[rows])[mask[rows]][keep])
        t = teacher.score(teacher.hidden(x_all[rows])[mask[rows]][keep])
    want = kl_logprob(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), T)
    assert cached["kl_loss"].item() == pytest.approx(want.item(), rel=2e-3)
    assert cached["kl_loss"].item() != pytest.approx(live["kl_loss"].item(), rel=2e-3)
    assert cached["task_loss"].item() == live["task_loss"].item()
    # bounded (a sampled task loss: the student scored from its hidden states at the kept positions)
    full, bounded, _ = _bounded_and_full(tiny_ds, tiny_teacher, tiny_student, "kl", n, 64, cache_positions=2)
    x, y, rows = _batch(full, tiny_ds, student.maxlen)
    assert bounded(student, x, y, rows=rows)["kl_loss"].item() == pytest.approx(want.item(), rel=2e-3)


def test_an_automatic_cache_keeps_fewer_positions_above_its_score_budget(tiny_ds, tiny_teacher, monkeypatch):
    from edgekd.data import training_pairs
    from edgekd.kd_losses import TeacherCache
    from edgekd.torch_io import load_torch_model

    teacher = load_torch_model(tiny_teacher).eval()
    x_all, y_all = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), teacher.maxlen))
    n = teacher.item_table().shape[0] - 1
    assert TeacherCache(teacher, x_all, y_all, 5, per_window=None).kept is None      # within budget: all
    monkeypatch.setattr(TeacherCache, "MAX_SCORES", 3 * len(x_all) * n)
    c = TeacherCache(teacher, x_all, y_all, 5, per_window=None)
    assert c.info["positions_per_window"] == 3 and c.info["positions"] * n <= TeacherCache.MAX_SCORES
    assert TeacherCache(teacher, x_all, y_all, 5, per_window=0).kept is None         # asked for all


def test_teacher_cache_settings_are_checked(tiny_ds, tiny_teacher):
    from edgekd.torch_io import load_torch_model

    with pytest.raises(ConfigError, match="top-10, more than --teacher-cache 5"):
        DistillConfig(loss="rd", teacher_cache=5)
    with pytest.raises(ConfigError, match=">= 0"):
        DistillConfig(teacher_cache=-1)
    with pytest.raises(ConfigError, match="cache_positions"):
        DistillConfig(cache_positions=-1)
    t = load_torch_model(tiny_teacher)
    s = create_model("sasrec-student", **DistillConfig(d=8, maxlen=t.maxlen).arch_kwargs(tiny_ds.num_items))
    with pytest.raises(ConfigError, match="hidden states hint needs"):
        DistillLoss(DistillConfig(loss="kl+hint", teacher_cache=20), s, [t], [1.0])
    with pytest.raises(ConfigError, match="one next-item"):
        DistillLoss(DistillConfig(teacher_cache=20), s, [t, t], [1.0, 1.0])


def test_distillation_from_a_teacher_cache_end_to_end(tiny_ds, tiny_teacher, store, monkeypatch):
    """The teacher runs once, before training (not in the epochs), and the card says what was kept."""
    from edgekd.distill import distill
    from edgekd.torch_io import load_torch_model

    calls = []
    real = load_torch_model

    def counted(a):
        m = real(a)
        orig = m.hidden
        m.hidden = lambda x: (calls.append(len(x)), orig(x))[1]
        return m

    monkeypatch.setattr("edgekd.distill.load_torch_model", counted)
    cfg = DistillConfig(d=8, maxlen=20, epochs=2, patience=2, loss="kl+rd", teacher_cache=20, rd_warmup=1)
    a = distill(tiny_teacher, tiny_ds, cfg, store=store, name="tiny-cached")
    info = a.card["teacher_cache"]
    assert info["k"] == 20 and info["positions"] > 0 and info["bytes"] == info["positions"] * 120
    from edgekd.data import training_pairs
    assert sum(calls) == len(training_pairs(tiny_ds.train_sequences(), 20)[0])  # each window once, for 2 epochs
    assert a.card["config"]["distill"]["teacher_cache"] == 20
    assert all(math.isfinite(r["kl_loss"]) and math.isfinite(r["rd_loss"]) for r in a.card["history"])


def _bounded_and_full(tiny_ds, tiny_teacher, tiny_student, loss, k, negatives, **kw):
    """The same batch through a cached loss that scores the student's whole catalogue and one
    that is bounded (a sampled task loss: the student scored at the cached columns only)."""
    from edgekd.train import task_loss

    from edgekd.torch_io import load_torch_model

    _, _, full = _cached_and_live(tiny_ds, tiny_teacher, loss, k, tiny_student, **kw)
    student = load_torch_model(tiny_student).eval()
    cfg = DistillConfig(loss=loss, teacher_cache=k, negatives=negatives, **kw)
    bounded = DistillLoss(cfg, student, full.teachers, [1.0], sampled=task_loss(student, 0.0, cfg, tiny_ds))
    bounded.cache = full.cache
    return full, bounded, student


def _batch(loss_fn, tiny_ds, maxlen, rows=(5, 0, 17, 3, 9)):
    from edgekd.data import training_pairs

    x_all, y_all = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), maxlen))
    rows = torch.tensor(rows)
    return x_all[rows], y_all[rows], rows


@pytest.mark.parametrize("loss", ["kl", "mse", "rd", "rrd"])
def test_a_bounded_batch_never_scores_the_whole_catalogue_and_equals_the_full_one_at_full_width(
        tiny_ds, tiny_teacher, tiny_student, loss, monkeypatch):
    """Cache + sampled task loss: the student is scored at the cached columns only; with K = the
    catalogue nothing is left to estimate, so every term is the full-catalogue one."""
    n = tiny_ds.num_items
    # (rd's discrepancy weights off: they compare against random probes, drawn after the task's negatives here)
    full, bounded, student = _bounded_and_full(tiny_ds, tiny_teacher, tiny_student, loss, n, 64, rd_warmup=5)
    x, y, rows = _batch(full, tiny_ds, student.maxlen)
    torch.manual_seed(3)
    want = full(student, x, y, rows=rows)[f"{loss}_loss"]

    def whole_catalogue(*a, **k):
        raise AssertionError("the bounded loss scored the whole catalogue")

    monkeypatch.setattr(student, "score", whole_catalogue)
    torch.manual_seed(3)
    out = bounded(student, x, y, rows=rows)
    assert out[f"{loss}_loss"].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


def test_the_bounded_normaliser_estimates_the_catalogues(tiny_ds, tiny_teacher, tiny_student):
    """With a small cache the rest of the catalogue is estimated from uniform draws: unbiased, so
    many draws give the exact log-partition and the exact rrd 'rest'."""
    from edgekd.kd_losses import KDBatch

    full, bounded, student = _bounded_and_full(tiny_ds, tiny_teacher, tiny_student, "rd", 10, 64)
    x, y, rows = _batch(full, tiny_ds, student.maxlen)
    with torch.no_grad():
        h = student.hidden(x)[y > 0]
        s = student.score(h)
        t_idx, t_val = full.cache.lookup(rows)
        exact = KDBatch(h, s, [], [t_val], [1.0], student, [], t_idx=t_idx)
        torch.manual_seed(0)
        few = KDBatch(h, None, [], [t_val], [1.0], student, [], t_idx=t_idx, negatives=8)
        many = KDBatch(h, None, [], [t_val], [1.0], student, [], t_idx=t_idx, negatives=200_000)
        assert torch.allclose(many.s_logz(), exact.s_logz(), atol=0.02)
        assert torch.allclose(many.s_lse_below(5), exact.s_lse_below(5), atol=0.02)
        assert not torch.allclose(few.s_logz(), exact.s_logz(), atol=0.02)   # the check can tell
        assert torch.allclose(few.s_at_teacher(), s.gather(1, t_idx), atol=1e-6)


def test_bounded_distillation_end_to_end(tiny_ds, tiny_teacher, store):
    """A teacher cache with sampled negatives trains (rd's discrepancy included) and the card says
    how the rest of the catalogue was estimated."""
    from edgekd.distill import distill

    cfg = DistillConfig(d=8, maxlen=20, epochs=2, patience=2, loss="kl+rd+rrd", teacher_cache=20, rd_warmup=1,
                        negatives=16)
    a = distill(tiny_teacher, tiny_ds, cfg, store=store, name="tiny-bounded")
    assert a.card["teacher_cache"]["student_outside_draws"] == 16
    assert "positions_per_window" not in a.card["teacher_cache"]      # every position, within budget
    assert all(math.isfinite(r[f"{n}_loss"]) for r in a.card["history"] for n in ("kl", "rd", "rrd"))


def test_an_automatic_teacher_cache_above_fifty_thousand_items_where_the_run_can_use_one():
    from edgekd.distill import AUTO_CACHE_K, CACHE_ABOVE

    auto = DistillConfig(teacher_cache=None)
    assert auto.resolved(CACHE_ABOVE + 1).teacher_cache == AUTO_CACHE_K
    assert auto.resolved(CACHE_ABOVE + 1).negatives > 0          # and sampled: the student is bounded too
    assert auto.resolved(CACHE_ABOVE).teacher_cache == 0
    assert auto.resolved(CACHE_ABOVE + 1, cache_ok=False).teacher_cache == 0      # e.g. several teachers
    assert DistillConfig(teacher_cache=None, loss="kl+hint").resolved(10**6).teacher_cache == 0
    assert DistillConfig(teacher_cache=None, kd="off").resolved(10**6).teacher_cache == 0
    assert DistillConfig(teacher_cache=0).resolved(10**6).teacher_cache == 0      # asked for the live teacher
    assert DistillConfig(teacher_cache=7).resolved(10).teacher_cache == 7
