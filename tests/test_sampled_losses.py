"""Training without the full softmax: sampled softmax (in-batch + N negatives, logQ) and gBCE."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import ConfigError
from edgekd.models import create_model
from edgekd.sampled_losses import SampledLoss, target_counts
from edgekd.evaluation import evaluate_model
from edgekd.train import SAMPLE_ABOVE, TrainConfig, auto_negatives, fit, task_loss

CFG = TrainConfig(model="sasrec-student", d=8, maxlen=20, epochs=2, patience=2, seed=1)


def _inputs(n_items=30, d=6, p=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items + 1, d, generator=g)
    h = torch.randn(p, d, generator=g)
    target = torch.randint(1, n_items + 1, (p,), generator=g)
    return h, target, table


def test_sampled_softmax_is_the_inclusion_corrected_softmax_over_its_candidates():
    n = 30
    h, target, table = _inputs(n)
    counts = np.arange(n + 1, dtype=float)
    loss = SampledLoss(n, counts, negatives=5, sampler="popularity")
    neg = torch.tensor([3, 7, int(target[0]), 7, 11])  # a repeat, and position 0's own target
    loss._draw = lambda k: neg
    got = loss.from_hidden(h, target, table)

    pop = counts / counts.sum()
    q = (counts + 1e-12 * (np.arange(n + 1) > 0)) / (counts + 1e-12 * (np.arange(n + 1) > 0)).sum()
    cand = sorted(set(target.tolist()) | set(neg.tolist()))  # each item once
    p = len(target)
    want = []
    for i in range(p):
        t = int(target[i])
        logits = [float(h[i] @ table[t])]  # the positive, uncorrected
        for c in cand:
            if c != t:  # P(c among the candidates): p - 1 other targets by pop, 5 draws by q
                incl = 1 - (1 - pop[c]) ** (p - 1) * (1 - q[c]) ** 5
                logits.append(float(h[i] @ table[c]) - math.log(incl))
        want.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    assert float(got) == pytest.approx(float(np.mean(want)), rel=1e-5)


def test_sampled_softmax_certain_to_cover_the_catalogue_is_the_full_softmax_whatever_the_popularity():
    # when every item is all but certain to be a candidate the correction vanishes: the loss is
    # the full cross-entropy, even with skewed targets (an expected-count correction is not)
    n = 8
    h, _, table = _inputs(n, p=n)
    target = torch.tensor([1, 1, 1, 1, 2, 3, 1, 5])
    counts = np.r_[0.0, 50, 9, 5, 3, 2, 1, 1, 1]
    for sampler in ("uniform", "popularity"):
        loss = SampledLoss(n, counts, negatives=20000, sampler=sampler)
        full = F.cross_entropy(h @ table[1:].T, target - 1)
        assert float(loss.from_hidden(h, target, table)) == pytest.approx(float(full), rel=1e-4)
        smooth = SampledLoss(n, counts, negatives=20000, sampler=sampler, label_smoothing=0.2)
        full_s = F.cross_entropy(h @ table[1:].T, target - 1, label_smoothing=0.2)
        assert float(smooth.from_hidden(h, target, table)) == pytest.approx(float(full_s), rel=1e-4)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_softmax_estimates_the_full_partition_without_bias(sampler):
    # E[exp(logsumexp of a position's corrected candidate logits)] = the full softmax's partition,
    # with the other positions' targets drawn by popularity and the negatives by the sampler
    n, p, k = 40, 6, 8
    h, _, table = _inputs(n, d=4, p=p, seed=3)
    counts = np.r_[0.0, 1.0 / np.arange(1, n + 1) ** 1.2]
    loss = SampledLoss(n, counts, negatives=k, sampler=sampler)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pop = counts / counts.sum()
    trials = 8000
    others = rng.choice(np.arange(n + 1), size=(trials, p - 1), p=pop)
    est = []
    for r in range(trials):
        target = torch.from_numpy(np.r_[5, others[r]]).long()
        logits, pos_col = loss.candidate_logits(h, target, table)
        assert float(logits[0, pos_col[0]]) == pytest.approx(float(h[0] @ table[5]), rel=1e-5)
        est.append(float(torch.logsumexp(logits[0], 0).exp()))
    full = float(torch.logsumexp(h[0] @ table[1:].T, 0).exp())
    assert np.mean(est) == pytest.approx(full, rel=0.03)


def test_gbce_is_gsasrecs_formula_with_the_positive_at_full_weight():
    n = 30
    h, target, table = _inputs(n)
    loss = SampledLoss(n, np.ones(n + 1), negatives=4, loss_type="gbce", gbce_t=0.75)
    alpha = 4 / (n - 1)
    assert loss.beta == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
    neg = torch.tensor([2, 5, int(target[1]), 9])
    loss._draw = lambda k: neg
    got = float(loss.from_hidden(h, target, table))
    want = []
    for i in range(len(target)):
        s_pos = float(h[i] @ table[target[i]])
        pos = -loss.beta * math.log(1 / (1 + math.exp(-s_pos)))
        negs = [-math.log(1 - 1 / (1 + math.exp(-float(h[i] @ table[c])))) for c in neg.tolist()
                if c != int(target[i])]
        want.append(pos + sum(negs) / len(negs))  # the positive at weight 1, its negatives averaged
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)
    # t = 0 is plain BCE (beta 1); all items as negatives: beta 1 whatever t
    assert SampledLoss(n, np.ones(n + 1), 4, loss_type="gbce", gbce_t=0.0).beta == pytest.approx(1.0)
    assert SampledLoss(n, np.ones(n + 1), n - 1, loss_type="gbce").beta == pytest.approx(1.0)


def test_the_sampler_never_draws_padding_or_the_oov_item():
    n = 10
    loss = SampledLoss(n, np.r_[0, np.arange(1, n + 1)], negatives=2000, sampler="popularity", oov_index=n)
    draws = loss._draw(2000)
    assert int(draws.min()) >= 1 and int(draws.max()) <= n - 1
    # popularity: item 9 (count 9) drawn far more often than item 1 (count 1)
    assert int((draws == 9).sum()) > 4 * int((draws == 1).sum())
    u = SampledLoss(n, np.ones(n + 1), negatives=10, oov_index=n)._draw(2000)
    assert set(u.tolist()) == set(range(1, n))


def test_target_counts_count_next_items_only():
    c = target_counts([np.array([1, 2, 2]), np.array([3]), np.array([3, 1])], 3)
    assert c.tolist() == [0, 1, 2, 0]


def test_negatives_are_chosen_by_catalogue_size_and_checked():
    assert auto_negatives(1682) == 0 and auto_negatives(SAMPLE_ABOVE) == 0
    assert auto_negatives(SAMPLE_ABOVE + 1) > 0 and auto_negatives(100, "gbce") > 0
    cfg = TrainConfig()
    assert cfg.resolved(1682).negatives == 0
    assert cfg.resolved(23_700).negatives == auto_negatives(23_700)
    assert cfg.resolved(23_700, bidirectional=True).negatives == 0  # the Cloze loss stays full
    assert TrainConfig(negatives=7).resolved(23_700).negatives == 7
    for bad, match in [({"negatives": -1}, "negatives"), ({"sampler": "zipf"}, "sampler"),
                       ({"loss_type": "bpr"}, "loss_type"), ({"loss_type": "gbce", "negatives": 0}, "gbce"),
                       ({"loss_type": "gbce", "sampler": "popularity"}, "uniform")]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)


def test_bert4rec_refuses_sampled_negatives(tiny_ds):
    model = create_model("bert4rec", num_items=tiny_ds.num_items, d=8, maxlen=20)
    with pytest.raises(ConfigError, match="Cloze"):
        task_loss(model, 0.0, TrainConfig(model="bert4rec", negatives=8), tiny_ds)
    for cfg in (TrainConfig(model="bert4rec", negatives=8), TrainConfig(model="bert4rec", loss_type="gbce")):
        with pytest.raises(ConfigError, match="Cloze"):
            cfg.resolved(tiny_ds.num_items, bidirectional=True)


@pytest.mark.parametrize("loss_type,sampler", [("ce", "uniform"), ("ce", "popularity"), ("gbce", "uniform")])
def test_sampled_training_learns(tiny_ds, loss_type, sampler):
    cfg = replace(CFG, negatives=16, sampler=sampler, loss_type=loss_type, epochs=3, patience=3)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **cfg.arch_kwargs(tiny_ds.num_items))
    fn = task_loss(model, 0.0, cfg, tiny_ds)
    assert isinstance(fn, SampledLoss) and fn.loss_type == loss_type
    before = evaluate_model(model, tiny_ds, "valid", sampled=False)[0]["ndcg@10"]
    log = fit(model, tiny_ds, fn, cfg)
    assert all(np.isfinite([r["task_loss"] for r in log["history"]]))
    ndcg = [r["valid_ndcg@10"] for r in log["history"]]
    assert ndcg[-1] > ndcg[0] and ndcg[0] > before + 0.05  # it learns (the per-batch loss is noisy)


def test_the_card_records_the_loss_chosen(tiny_ds, tmp_path):
    from edgekd.train import train_teacher

    a = train_teacher(tiny_ds, replace(CFG, model="sasrec", epochs=1, patience=1, negatives=8,
                                       loss_type="gbce"), store=tmp_path, name="t")
    card = json.loads((a.path / "artifact.json").read_text())
    assert card["config"]["train"]["negatives"] == 8 and card["config"]["train"]["loss_type"] == "gbce"
    b = train_teacher(tiny_ds, replace(CFG, model="sasrec", epochs=1, patience=1), store=tmp_path, name="u")
    assert json.loads((b.path / "artifact.json").read_text())["config"]["train"]["negatives"] == 0


def test_distillation_samples_its_task_term_too(tiny_ds, tiny_teacher, tmp_path):
    from edgekd.distill import DistillConfig, distill
    from edgekd.kd_losses import DistillLoss

    seen = []
    orig = SampledLoss.from_hidden

    def spy(self, h, target, table):
        seen.append(len(target))
        return orig(self, h, target, table)

    SampledLoss.from_hidden = spy
    try:
        for kd in ("on", "off"):
            a = distill(tiny_teacher, tiny_ds, DistillConfig(d=8, maxlen=20, epochs=1, patience=1, kd=kd, negatives=8),
                        store=tmp_path, name=f"s-{kd}")
            assert a.card["config"]["distill"]["negatives"] == 8
            assert seen and np.isfinite(a.card["history"][0]["task_loss"])  # the sampled task term ran
            seen.clear()
    finally:
        SampledLoss.from_hidden = orig
    with pytest.raises(ConfigError, match="online"):
        distill(tiny_teacher, tiny_ds, DistillConfig(d=8, maxlen=20, epochs=1, online=True, negatives=8),
                store=tmp_path, name="s-online")
