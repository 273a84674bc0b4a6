"""Model registry: teachers and students, built by name.

This module imports only torch and the standard library, so that the device runner can load
it by path to benchmark a torch model without importing the rest of edgekd.

Every model takes item indices [batch, maxlen] (left-padded with 0) and returns one score per
catalogue item for the last position: [batch, num_items], where column j is item index j + 1
(index 0 is padding and is never scored).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

try:  # inside the package
    from .errors import ConfigError
except ImportError:  # loaded standalone by the device runner
    ConfigError = ValueError  # type: ignore[misc,assignment]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict
    role: str  # "teacher" or "student": the size it is meant for
    summary: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, role: str, summary: str, **defaults):
    """Register a model builder under `name` with default keyword arguments."""

    def deco(builder):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelSpec(name, builder, dict(defaults), role, summary)
        return builder

    return deco


def list_models() -> list[ModelSpec]:
    return [_MODELS[k] for k in sorted(_MODELS)]


def model_kwargs(name: str, **overrides) -> dict:
    """The full keyword arguments `create_model(name, ...)` would use (recorded in artifacts)."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    kw = dict(_MODELS[name].defaults)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return kw


def create_model(name: str, **kwargs) -> nn.Module:
    kw = model_kwargs(name, **kwargs)
    try:
        return _MODELS[name].builder(**kw)
    except TypeError as e:  # an option this model does not have (--blocks for a GRU)
        raise ConfigError(f"model {name!r} does not take these options: {e}") from None


def count_parameters(model: nn.Module) -> int:
    # Tied weights are one Parameter object, so parameters() counts them once.
    return sum(p.numel() for p in model.parameters())


OOV_SCORE = -1e4


def pin_oov(scores: torch.Tensor, oov: bool) -> torch.Tensor:
    """With an out-of-vocabulary item (always the last column), pin its score to OOV_SCORE."""
    if not oov:
        return scores
    return torch.cat([scores[..., :-1], torch.full_like(scores[..., -1:], OOV_SCORE)], -1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention written out with matmuls so that it exports cleanly to
    ONNX and TFLite (no fused kernels the converters may not know)."""

    def __init__(self, d: int, heads: int, dropout: float, inner: int | None = None, scale: float | None = None):
        super().__init__()
        inner = int(inner or d)  # the query/key/value width: d, or less after structured pruning
        if inner % heads:
            raise ConfigError(f"attention width {inner} is not divisible by heads={heads}")
        self.heads = heads
        self.inner = inner
        self.qkv = nn.Linear(d, 3 * inner)
        self.proj = nn.Linear(inner, d)
        self.drop = nn.Dropout(dropout)
        # The softmax temperature stays that of the unpruned head width, so that removing
        # query/key dimensions of little importance leaves the attention almost unchanged.
        self.scale = float(scale) if scale else 1.0 / math.sqrt(d // heads)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [batch, n, d], bias [batch, queries, n] (additive; no head axis). With `last_only`
        only the last position is a query: [batch, 1, d], all that next-item scoring needs."""
        b, n, _ = x.shape
        h, i = self.heads, self.inner
        q, k, v = self.qkv(x).split(i, dim=-1)
        if last_only:
            q = q[:, -1:]
        if h == 1:
            # One head needs no head axis: no reshapes or transposes in an exported graph,
            # where at a student's size each operator costs more than its arithmetic.
            att = self.drop(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias, dim=-1))
            return self.proj(torch.matmul(att, v))
        m = q.shape[1]
        q = q.reshape(b, m, h, i // h).transpose(1, 2)
        k = k.reshape(b, n, h, i // h).transpose(1, 2)
        v = v.reshape(b, n, h, i // h).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias.unsqueeze(1)
        att = self.drop(torch.softmax(att, dim=-1))
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, m, i)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, d: int, heads: int, dropout: float, ffn_mult: int = 1, attn_dim: int | None = None,
                 ffn_dim: int | None = None, attn_scale: float | None = None):
        super().__init__()
        ffn_dim = int(ffn_dim or ffn_mult * d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, dropout, attn_dim, attn_scale)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[batch, n, d] -> [batch, n, d], or [batch, 1, d] (the last position) with `last_only`:
        the same figures for that position, without the feed-forward work for the others."""
        a = self.drop(self.attn(self.ln1(x), bias, last_only))
        x = (x[:, -1:] if last_only else x) + a
        return x + self.drop(self.ffn(self.ln2(x)))


class RowwiseInt8Table(nn.Module):
    """An embedding table stored in int8 with one scale per row (symmetric), dequantised in
    the graph. The item table is half to nearly all of a sequential recommender's parameters;
    stored like this, it takes a little over a quarter of the space in an exported file.

    The row scale is one more int8 column: a code k on a log scale, scale = exp(a + b k) with
    the table's a and b. A row is quantised against its decoded scale, rounded up, so the code
    costs no accuracy beyond a scale at most exp(b) (about 1% here) coarser than its row's own;
    it takes 1 byte a row where an fp16 scale takes 2 and a TFLite quantised tensor 12 (a float
    scale and an int64 zero point)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().double()
        need = w.abs().amax(dim=1) / 127.0                      # each row's own scale
        top = float(need.max().clamp_min(1e-12))
        need = need.clamp_min(top * 1e-4)                       # zero rows (padding) at the floor
        lo, hi = float(need.min().log()), float(need.max().log())
        b = max((hi - lo) / 254.0, 1e-6)
        a = lo + 127.0 * b
        code = torch.ceil((need.log() - a) / b - 1e-9).clamp(-127, 127)
        scale = torch.exp(a + b * code)
        q = torch.round(w / scale[:, None]).clamp(-127, 127)
        self.register_buffer("q", torch.cat([q, code[:, None]], 1).to(torch.int8))
        self.register_buffer("ab", torch.tensor([a, b], dtype=torch.float32))

    def _decode(self, rows: torch.Tensor) -> torch.Tensor:
        r = rows.to(torch.float32)
        return r[..., :-1] * torch.exp(self.ab[0] + self.ab[1] * r[..., -1:])

    def forward(self) -> torch.Tensor:
        return self._decode(self.q)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of the dequantised table. In the file the table stays int8; ONNX Runtime
        folds its dequantisation once, when the session starts, and then gathers float rows
        from the same copy the scoring layer uses (gathering int8 rows and decoding them at
        every request made a d=32 student 12% slower than fp32: 0.067 against 0.059 ms)."""
        return self.forward()[idx]


class TiedItemModel(nn.Module):
    """What every model here shares: item embeddings tied with the output layer (the table is
    the scoring matrix), an export copy with its tables in int8, and the out-of-vocabulary
    item's pinned score. A subclass defines `hidden(ids)` and names its tables in TABLES."""

    TABLES = {"item": "item_emb"}  # lookup name -> embedding attribute (stored in int8 on export)
    oov = False

    @staticmethod
    def check_settings(model: str, dropout: float, **sizes) -> None:
        """Every size >= 1 and dropout in [0, 1), else a ConfigError naming the model and field."""
        for field, value in sizes.items():
            if int(value) < 1:
                raise ConfigError(f"{model} {field} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{model} dropout must be in [0, 1), got {dropout}")

    def known_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Item ids as int64, an id outside the catalogue (an item the app's vocab does not
        know, garbage input) read as padding instead of crashing the embedding lookup."""
        ids = ids.long()
        return ids.masked_fill((ids < 0) | (ids > self.num_items), 0)

    def item_table(self) -> torch.Tensor:
        """The item embeddings [num_items + 1, d] (row 0: padding)."""
        q = self._modules.get("int8_tables")  # present only in an export copy
        return q["item"]() if q is not None else self.item_emb.weight

    def lookup(self, table: str, idx: torch.Tensor) -> torch.Tensor:
        q = self._modules.get("int8_tables")
        if q is not None:
            return q[table].lookup(idx)
        # Through the modules' own forward, so that hooks on them (pruning masks) apply; the
        # scoring layer reads item_emb.weight after this lookup in the same forward.
        return getattr(self, self.TABLES[table])(idx)

    def with_int8_tables(self) -> "TiedItemModel":
        """A copy for export whose embedding tables are stored in int8 (row-wise)."""
        import copy

        m = copy.deepcopy(self)
        m.int8_tables = nn.ModuleDict({k: RowwiseInt8Table(getattr(m, attr).weight)
                                       for k, attr in self.TABLES.items()})
        for attr in self.TABLES.values():
            delattr(m, attr)  # only the int8 copies go into the file
        return m.eval()

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Scores over the catalogue for hidden states [..., d] -> [..., num_items].

        F.linear against the whole table (then dropping the padding column) lets exporters
        share the one embedding tensor with the input lookup instead of storing a sliced or
        transposed copy of it."""
        return pin_oov(nn.functional.linear(h, self.item_table())[..., 1:], self.oov)

    def topk_scores(self, h: torch.Tensor, k: int, max_scores: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best (scores, columns) of `score(h)` for hidden states [P, d], best first,
        computed over blocks of items and merged, so that at most about `max_scores` scores are
        held at once however large the catalogue and however many the positions (each block is
        a matrix product over many positions, not one pass over the table per few positions)."""
        table = self.item_table()
        n = table.shape[0] - 1
        k = min(k, n)
        rows = max(1, min(len(h), 1024))
        block = max(k, max_scores // rows)
        vals, idx = [], []
        for r in range(0, len(h), rows):
            hr = h[r:r + rows]
            best_v = best_i = None
            for c in range(0, n, block):
                s = nn.functional.linear(hr, table[1 + c:1 + min(n, c + block)])        # [rows, block]
                if self.oov and c + block >= n:
                    s[:, n - 1 - c] = OOV_SCORE
                v, i = s.topk(min(k, s.shape[1]), -1)
                i = i + c
                if best_v is not None:
                    v, j = torch.cat([best_v, v], 1).topk(k, -1)
                    i = torch.cat([best_i, i], 1).gather(1, j)
                best_v, best_i = v, i
            vals.append(best_v)
            idx.append(best_i)
        return torch.cat(vals), torch.cat(idx)

    def last_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The next-item state [batch, d] after each history: the last row of `hidden`. A
        subclass may compute it without the other rows (inference and export only need it)."""
        return self.hidden(ids)[:, -1, :]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.last_hidden(ids))


class SASRec(TiedItemModel):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence, learned
    positions, pre-LayerNorm blocks, item embeddings tied with the output layer.

    Trained with full-softmax cross-entropy over the catalogue at every position.
    """

    TABLES = {"item": "item_emb", "pos": "pos_emb"}

    def __init__(self, num_items: int, maxlen: int = 200, d: int = 64, blocks: int = 2,
                 heads: int = 1, dropout: float = 0.2, ffn_mult: int = 1,
                 attn_dims: list[int] | None = None, ffn_dims: list[int] | None = None,
                 emb_scale: float | None = None, attn_scales: list[float] | None = None, oov: bool = False):
        super().__init__()
        self.check_settings("SASRec", dropout, num_items=num_items, maxlen=maxlen, d=d, blocks=blocks, heads=heads)
        # Per-block widths after structured pruning (None: the full widths).
        for field, dims in (("attn_dims", attn_dims), ("ffn_dims", ffn_dims)):
            if dims is not None and (len(dims) != blocks or min(dims) < 1):
                raise ConfigError(f"SASRec {field} needs one width >= 1 per block, got {dims}")
        self.num_items = int(num_items)
        self.maxlen = int(maxlen)
        self.d = int(d)
        # After vocabulary pruning the last item is "out of vocabulary": it stands in for every
        # pruned item as input, and its score is pinned low so that it is never recommended.
        self.oov = bool(oov)
        # The embedding scale stays that of the unpruned width when d itself is pruned.
        self.emb_scale = float(emb_scale) if emb_scale else math.sqrt(self.d)
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(self.maxlen, d)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d, heads, dropout, ffn_mult, attn_dims[i] if attn_dims else None, ffn_dims[i] if ffn_dims else None,
                  attn_scales[i] if attn_scales else None)
            for i in range(blocks))
        self.ln_f = nn.LayerNorm(d)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def _embed(self, ids: torch.Tensor):
        """Input embeddings [batch, len, d], positions and the padding mask of a history."""
        ids = self.known_ids(ids)
        n = ids.shape[1]
        pad = ids == 0
        # Positions are right-aligned (the last item has the last position) and computed from
        # the input: exporters then cannot fold the position table and the causal mask into
        # large constants ([maxlen, maxlen] would be a big part of a small model file).
        # (ids != -1 is always true here, but unlike ones_like it is not a constant to a converter)
        pos = torch.cumsum(ids.ne(-1).to(ids.dtype), 1) - 1 + (self.maxlen - n)
        x = self.lookup("item", ids) * self.emb_scale + self.lookup("pos", pos)
        x = self.emb_drop(x) * (~pad).unsqueeze(-1).to(x.dtype)
        return x, pos, pad

    @staticmethod
    def _causal_bias(pos: torch.Tensor, pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[batch, n, n] additive bias: key j comes after query i, or is padding. -1e4 (not
        -inf) keeps fully masked rows (padding queries) finite."""
        masked = (pos.unsqueeze(1) > pos.unsqueeze(2)) | pad.unsqueeze(1)
        return masked.to(dtype) * -1e4

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden states [batch, len, d] for every position (training: every position predicts
        the item after it)."""
        x, pos, pad = self._embed(ids)
        bias = self._causal_bias(pos, pad, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_f(x)

    def last_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The last row of `hidden`, computed as such: the last block takes only the last
        position as a query (it may attend to every key, so its mask is padding only) and runs
        its feed-forward layer on that row alone. Same figures as hidden(ids)[:, -1]; a smaller
        graph and less work per request in every export."""
        x, pos, pad = self._embed(ids)
        *early, last = self.blocks
        if early:
            bias = self._causal_bias(pos, pad, x.dtype)
            for block in early:
                x = block(x, bias)
        x = last(x, (pad.to(x.dtype) * -1e4).unsqueeze(1), last_only=True)
        return self.ln_f(x[:, 0])


class BERT4Rec(TiedItemModel):
    """BERT4Rec (Sun et al., 2019): bidirectional self-attention trained by masked-item
    prediction (Cloze). A mask token stands for a hidden item; to recommend, the mask is put
    after the history and its output scores the catalogue.

    Its window holds maxlen tokens: the last maxlen - 1 items of the history and the mask.
    The mask has its own embedding, so the item table stays [num_items + 1, d] (row 0:
    padding) and is tied with the output layer, as in SASRec."""

    bidirectional = True
    TABLES = {"item": "item_emb", "pos": "pos_emb"}

    def __init__(self, num_items: int, maxlen: int = 200, d: int = 64, blocks: int = 2,
                 heads: int = 2, dropout: float = 0.2, ffn_mult: int = 4, mask_prob: float = 0.2):
        super().__init__()
        self.check_settings("BERT4Rec", dropout, num_items=num_items, maxlen=maxlen, d=d, blocks=blocks, heads=heads)
        if not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"BERT4Rec mask_prob must be in (0, 1), got {mask_prob}")
        self.num_items = int(num_items)
        self.mask_id = self.num_items + 1
        self.maxlen = int(maxlen)
        self.d = int(d)
        self.mask_prob = float(mask_prob)
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.mask_emb = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Embedding(self.maxlen, d)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout, ffn_mult) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(d)
        self.apply(SASRec._init)
        nn.init.normal_(self.mask_emb, std=0.02)

    def encode(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states [batch, len, d] of a token window (items, 0 padding, mask_id masks);
        [batch, 1, d] with `last_only`: the last block then reads only the last token's row."""
        tokens = tokens.long()
        is_mask = tokens == self.mask_id
        tokens = tokens.masked_fill((tokens < 0) | (tokens > self.mask_id), 0)
        n = tokens.shape[1]
        pad = tokens == 0
        pos = torch.cumsum(tokens.ne(-1).to(tokens.dtype), 1) - 1 + (self.maxlen - n)
        x = self.lookup("item", tokens.masked_fill(is_mask, 0))
        x = torch.where(is_mask.unsqueeze(-1), self.mask_emb.expand_as(x), x)
        x = x * math.sqrt(self.d) + self.lookup("pos", pos)
        x = self.emb_drop(x) * (~pad).unsqueeze(-1).to(x.dtype)
        bias = pad.unsqueeze(1).to(x.dtype) * -1e4  # padding keys only: bidirectional
        *early, last = self.blocks
        for block in early:
            x = block(x, bias)
        return self.ln_f(last(x, bias, last_only=last_only))

    def with_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The history followed by the mask, cut to the last maxlen tokens."""
        ids = self.known_ids(ids)
        return torch.cat([ids, torch.full_like(ids[:, :1], self.mask_id)], 1)[:, -self.maxlen:]

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """[batch, len, d]: the last row is the next-item state for the history `ids`. The other
        rows see the whole window, so unlike SASRec they are not next-item states; use
        `prefix_hidden` for those."""
        return self.encode(self.with_mask(ids))

    def last_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The mask's state [batch, d] (the last row of `hidden`), computed alone in the last block."""
        return self.encode(self.with_mask(ids), last_only=True)[:, 0]

    def prefix_hidden(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, window: int) -> torch.Tensor:
        """Next-item states [P, d] after the prefixes x[rows[p], :cols[p] + 1], each read through
        its last `window` items (one forward per prefix, batched)."""
        j = torch.arange(window, device=x.device)
        src = cols.unsqueeze(1) - (window - 1) + j.unsqueeze(0)           # [P, window]
        hist = x[rows.unsqueeze(1), src.clamp(min=0)].masked_fill(src < 0, 0)
        return self.last_hidden(hist)

    def cloze(self, seq: torch.Tensor, generator: torch.Generator | None = None):
        """A masked-item training batch from item windows `seq` [batch, len]: (tokens, targets),
        targets 0 where nothing is predicted. Each item is masked with probability mask_prob; the
        last item is masked in a share of rows too, so that the mask-at-the-end case the model is
        used for is trained on directly."""
        real = seq > 0
        hide = (torch.rand(seq.shape, generator=generator) < self.mask_prob) & real
        last = torch.rand(seq.shape[0], generator=generator) < self.mask_prob
        hide[:, -1] |= last & real[:, -1]
        tokens = seq.masked_fill(hide, self.mask_id)
        return tokens, seq.masked_fill(~hide, 0)


@register_model("sasrec", role="teacher", summary="SASRec, teacher size: d=64, 2 blocks, 1 head",
                d=64, blocks=2, heads=1, dropout=0.2, maxlen=200)
def _sasrec(**kw) -> nn.Module:
    return SASRec(**kw)


@register_model("sasrec-student", role="student", summary="SASRec, student size: d=32, 1 block, 1 head",
                d=32, blocks=1, heads=1, dropout=0.2, maxlen=200)
def _sasrec_student(**kw) -> nn.Module:
    return SASRec(**kw)


class GRU4Rec(TiedItemModel):
    """GRU4Rec (Hidasi et al., 2016) in its sequence form: one GRU layer over the item
    embeddings, the hidden state at each position scoring the next item against the item
    embeddings (tied with the input table). Trained like SASRec, with full-softmax
    cross-entropy at every position.

    Inputs are left-padded. The GRU has no bias terms, so a zero input (the padding row) keeps
    the zero state exactly: padding in front of a history changes nothing, as in SASRec."""

    def __init__(self, num_items: int, maxlen: int = 200, d: int = 32, dropout: float = 0.2, oov: bool = False):
        super().__init__()
        self.oov = bool(oov)  # as in SASRec
        self.check_settings("GRU4Rec", dropout, num_items=num_items, maxlen=maxlen, d=d)
        self.num_items = int(num_items)
        self.maxlen = int(maxlen)
        self.d = int(d)
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        self.gru = nn.GRU(d, d, batch_first=True, bias=False)
        self.drop = nn.Dropout(dropout)
        self.ln_f = nn.LayerNorm(d)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self.known_ids(ids)
        x = self.drop(self.lookup("item", ids))
        h, _ = self.gru(x)
        return self.ln_f(self.drop(h))


@register_model("gru4rec", role="student", summary="GRU4Rec, one GRU layer, d=32",
                d=32, dropout=0.2, maxlen=200)
def _gru4rec(**kw) -> nn.Module:
    return GRU4Rec(**kw)


@register_model("bert4rec", role="teacher", summary="BERT4Rec, teacher size: d=64, 2 blocks, 2 heads, masked-item training",
                d=64, blocks=2, heads=2, dropout=0.2, maxlen=200)
def _bert4rec(**kw) -> nn.Module:
    return BERT4Rec(**kw)


class MLPRec(TiedItemModel):
    """A pooled-history MLP, as in YouTube's deep candidate generator (Covington et al., 2016):
    the history's item embeddings pooled into one vector (their mean, or a recency-weighted
    mean with one learned weight per distance from the predicted position), then an MLP
    (ReLU between layers; widths `layers`, 64-32 by default) whose output is scored against
    the item table, tied with the input embeddings (scores = h @ E^T).

    Pooling is causal, so `hidden` gives a next-item state at every position and the model
    trains with the same losses as SASRec and GRU4Rec. When the last layer's width is not d,
    a linear layer projects it to d for the tied scoring."""

    POOLS = ("mean", "weighted")

    def __init__(self, num_items: int, maxlen: int = 200, d: int = 32, layers: list[int] | tuple = (64, 32),
                 pool: str = "mean", dropout: float = 0.2, oov: bool = False):
        super().__init__()
        self.check_settings("MLP", dropout, num_items=num_items, maxlen=maxlen, d=d)
        layers = [int(w) for w in layers]
        if not layers or min(layers) < 1:
            raise ConfigError(f"MLP layers must be one or more widths >= 1, got {layers}")
        if pool not in self.POOLS:
            raise ConfigError(f"MLP pool must be one of {', '.join(self.POOLS)}, got {pool!r}")
        self.num_items = int(num_items)
        self.maxlen = int(maxlen)
        self.d = int(d)
        self.pool = pool
        self.oov = bool(oov)  # as in SASRec
        self.item_emb = nn.Embedding(self.num_items + 1, d, padding_idx=0)
        # one logit per distance back from the predicted position: 0 everywhere is the mean
        self.recency = nn.Parameter(torch.zeros(self.maxlen)) if pool == "weighted" else None
        self.drop = nn.Dropout(dropout)
        self.ln_in = nn.LayerNorm(d)
        mods: list[nn.Module] = []
        width = d
        for k, w in enumerate(layers):
            mods.append(nn.Linear(width, w))
            if k < len(layers) - 1:
                mods += [nn.ReLU(), nn.Dropout(dropout)]
            width = w
        if width != d:
            mods.append(nn.Linear(width, d))
        self.mlp = nn.Sequential(*mods)
        self.ln_f = nn.LayerNorm(d)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _embed(self, ids: torch.Tensor):
        ids = self.known_ids(ids)
        real = ids.ne(0)
        return self.drop(self.lookup("item", ids)), real

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.ln_f(self.mlp(self.ln_in(pooled)))

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """[batch, len, d]: the state after each prefix of the history (causal pooling)."""
        x, real = self._embed(ids)
        if self.recency is None:
            count = torch.cumsum(real.to(x.dtype), 1).clamp_min(1.0).unsqueeze(-1)
            return self._head(torch.cumsum(x, 1) / count)
        n = ids.shape[1]
        t = torch.arange(n, device=ids.device)
        dist = t.unsqueeze(1) - t.unsqueeze(0)                       # [query, key]: how far back
        logits = self.recency[dist.clamp(min=0)].unsqueeze(0)        # [1, n, n]
        masked = (dist < 0).unsqueeze(0) | ~real.unsqueeze(1)        # future keys and padding
        w = torch.softmax(logits + masked.to(x.dtype) * -1e4, dim=-1)
        return self._head(torch.matmul(w, x))

    def last_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The last row of `hidden`, computed alone (what inference and export need)."""
        x, real = self._embed(ids)
        mask = real.to(x.dtype)
        if self.recency is None:
            pooled = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
            return self._head(pooled)
        # distance back from the last position, computed from the input (no folded constant)
        dist = torch.flip(torch.cumsum(ids.ne(-1).to(torch.long), 1), [1]) - 1
        w = torch.softmax(self.recency[dist] + (1.0 - mask) * -1e4, dim=-1)   # [batch, n]
        return self._head(torch.matmul(w.unsqueeze(1), x)[:, 0])


@register_model("mlp", role="student", summary="pooled-history MLP (YouTube DNN style): mean pooling, 64-32 MLP, d=32",
                d=32, layers=[64, 32], pool="mean", dropout=0.2, maxlen=200)
def _mlp(**kw) -> nn.Module:
    return MLPRec(**kw)
