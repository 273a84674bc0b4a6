import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.models import count_parameters, create_model, list_models, model_kwargs

MODELS = [m.name for m in list_models()]


def small(name):
    return create_model(name, num_items=30, maxlen=12, dropout=0.0).eval()


@pytest.mark.parametrize("name", MODELS)
def test_scores_every_item_for_the_last_position(name):
    m = small(name)
    ids = torch.randint(1, 31, (3, 12))
    assert m(ids).shape == (3, 30)
    assert m(ids.to(torch.int32)).shape == (3, 30)  # apps pass int32


@pytest.mark.parametrize("name", [m for m in MODELS if m != "bert4rec"])
def test_causal_a_later_item_does_not_change_earlier_positions(name):
    m = small(name)
    ids = torch.randint(1, 31, (1, 12))
    h = m.hidden(ids)
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] % 30) + 1
    h2 = m.hidden(ids2)
    assert torch.allclose(h[:, :-1], h2[:, :-1], atol=1e-6)
    assert not torch.allclose(h[:, -1], h2[:, -1])


@pytest.mark.parametrize("name", MODELS)
def test_left_padding_is_ignored(name):
    """More padding in front of the same history changes nothing at the last position."""
    m = small(name)
    padded = torch.tensor([[0] * 7 + [7, 9, 11, 3, 2]])
    unpadded = torch.tensor([[7, 9, 11, 3, 2]])  # the same history, no padding at all
    assert torch.allclose(m(padded), m(unpadded), atol=1e-5)
    other = torch.tensor([[0] * 6 + [5, 7, 9, 11, 3, 2]])  # one more real item does change it
    assert not torch.allclose(m(padded), m(other), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_item_table_is_stored_once(name):
    m = small(name)
    names = [n for n, p in m.named_parameters() if p.shape[0] == 31]
    assert names == ["item_emb.weight"]


def test_teacher_and_student_sizes():
    t = model_kwargs("sasrec", num_items=10)
    s = model_kwargs("sasrec-student", num_items=10)
    assert t["d"] >= 64 and t["blocks"] == 2
    assert s["d"] in (16, 32) and s["blocks"] == 1
    assert count_parameters(create_model("sasrec-student", num_items=100)) < count_parameters(
        create_model("sasrec", num_items=100))


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="registered models: .*sasrec"):
        create_model("bert5rec", num_items=3)
    with pytest.raises(ConfigError, match="not divisible"):
        create_model("sasrec", num_items=3, d=10, heads=3)


@pytest.mark.parametrize("name", MODELS)
def test_ids_outside_the_catalogue_read_as_padding(name):
    m = small(name)
    seq = torch.tensor([[0, 0, 5, 7, 9, 11, 3, 2, 4, 6, 8, 10]])
    bad = seq.clone()
    bad[0, 0], bad[0, 1] = -32, 31  # below 0 and one past the last item
    assert torch.equal(m(bad), m(seq))


def test_gru4rec_refuses_options_it_does_not_have():
    with pytest.raises(ConfigError, match="gru4rec"):
        create_model("gru4rec", num_items=3, blocks=2)


def test_padding_keeps_the_gru_state_at_zero():
    m = small("gru4rec")
    h = m.hidden(torch.tensor([[0, 0, 0, 4, 5]]))
    assert torch.count_nonzero(m.gru(torch.zeros(1, 3, m.d))[0]) == 0
    assert torch.allclose(h[:, 3:], m.hidden(torch.tensor([[4, 5]])), atol=1e-6)


def test_bert4rec_prefix_states_equal_forward_on_each_prefix():
    m = small("bert4rec")
    x = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([2, 11, 5, 11])
    h = m.prefix_hidden(x, rows, cols, window=4)
    for p, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        hist = x[r:r + 1, max(0, c - 3):c + 1]        # the last 4 items up to and including c
        assert torch.allclose(m.score(h[p]), m(hist)[0], atol=1e-5)


def test_bert4rec_cloze_masks_only_real_items_and_predicts_them():
    m = small("bert4rec")
    seq = torch.tensor([[0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12]] * 64)
    tokens, targets = m.cloze(seq, torch.Generator().manual_seed(0))
    hidden = tokens == m.mask_id
    assert not hidden[:, :3].any() and hidden.any()
    assert torch.equal(targets[hidden], seq[hidden]) and not targets[~hidden].any()
    assert hidden[:, -1].any()           # the last item is masked in some rows


def test_int8_rows_with_a_one_byte_scale_code_lose_little_more_than_their_own_scale():
    from edgekd.models import RowwiseInt8Table

    g = torch.Generator().manual_seed(0)
    # rows whose magnitudes span three orders, a zero row (padding) among them
    w = torch.randn(500, 16, generator=g) * torch.logspace(-3, 0, 500)[:, None]
    w[0] = 0
    t = RowwiseInt8Table(w)
    assert t.q.dtype == torch.int8 and t.q.shape == (500, 17)   # one code column
    own = w.abs().amax(1) / 127                                   # a float row scale's step
    err = (t() - w).abs().amax(1)
    assert float(err[0]) == 0.0
    # rounding to the decoded scale, at most exp(b) coarser than the row's own: <= ~0.53 step
    assert bool((err[1:] <= 0.53 * own[1:]).all()), float((err[1:] / own[1:]).max())
    idx = torch.tensor([[3, 499, 0]])
    assert torch.equal(t.lookup(idx), t()[idx])


@pytest.mark.parametrize("name,kw", [("sasrec", dict(blocks=1, heads=1)), ("sasrec", dict(blocks=2, heads=2)),
                                     ("sasrec", dict(blocks=2, heads=1, oov=True)), ("bert4rec", dict(blocks=2, heads=2))])
def test_last_position_path_equals_the_full_forward(name, kw):
    """forward (inference, export) computes only the last position in the last block; its
    scores must equal scoring the last row of the all-positions `hidden` used in training,
    for padded, unpadded, empty and trailing-padding histories."""
    torch.manual_seed(0)
    m = create_model(name, num_items=30, maxlen=12, d=16, dropout=0.0, **kw).eval()
    ids = torch.randint(1, 31, (5, 12))
    ids[0] = 0                 # an empty history
    ids[1, :7] = 0             # left padding
    ids[2, -1] = 0             # padding at the end (not what apps send, but defined)
    full = m.score(m.hidden(ids)[:, -1])
    assert torch.allclose(m(ids), full, atol=1e-5)
    assert m.last_hidden(ids).shape == (5, 16)


@pytest.mark.parametrize("oov", [False, True])
def test_topk_scores_in_item_blocks_is_the_full_topk(oov):
    """Blocks of items merged: the same top-k as scoring the whole catalogue, whatever the block size."""
    torch.manual_seed(0)
    m = create_model("sasrec-student", num_items=1000, d=8, maxlen=10, oov=oov).eval()
    h = torch.randn(37, 8)
    want_v, want_i = m.score(h).topk(25, -1)
    for max_scores in (1 << 24, 37 * 30, 1):   # one block, 30-item blocks, k-item blocks
        v, i = m.topk_scores(h, 25, max_scores=max_scores)
        assert torch.equal(i, want_i) and torch.allclose(v, want_v)
    assert m.topk_scores(h, 5000)[1].shape == (37, 1000)
