"""Model surgery for `edgekd prune`: structured pruning (a genuinely smaller dense SASRec),
vocabulary pruning (a smaller catalogue with one out-of-vocabulary item) and window pruning
(a shorter input window). Each returns a new model and the keyword arguments that rebuild it,
so the result is an ordinary artifact.

Importance scores are magnitude-based: an attention dimension matters by how much it feeds
the query-key product and the value-output path, an FFN unit by the product of the norms of
its input and output weights, an embedding dimension by the norm of its column over the items.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import OOV_ID, Dataset, DataSpec, load_data
from .errors import ConfigError
from .models import SASRec, create_model


def non_embedding_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("item_emb", "pos_emb")))


def _keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


def _attn_keep(block, k_per_head: int) -> torch.Tensor:
    """Indices (into the attention width) to keep: the same number in every head."""
    att = block.attn
    i, h = att.inner, att.heads
    w = att.qkv.weight.detach()
    q, k, v = w[:i], w[i:2 * i], w[2 * i:]
    score = q.norm(dim=1) * k.norm(dim=1) + v.norm(dim=1) * att.proj.weight.detach().norm(dim=0)
    per = i // h
    return torch.cat([hd * per + _keep_top(score[hd * per:(hd + 1) * per], k_per_head) for hd in range(h)])


def _ffn_keep(block, k: int) -> torch.Tensor:
    w1, w2 = block.ffn[0].weight.detach(), block.ffn[3].weight.detach()
    return _keep_top(w1.norm(dim=1) * w2.norm(dim=0), k)


def _widths(model: SASRec, keep: float) -> tuple[list[int], list[int]]:
    attn, ffn = [], []
    for b in model.blocks:
        h = b.attn.heads
        attn.append(max(h, int(round(keep * b.attn.inner / h)) * h))
        ffn.append(max(1, int(round(keep * b.ffn[0].out_features))))
    return attn, ffn


def structured_prune(model: SASRec, kwargs: dict, amount: float, dims: float = 0.0) -> tuple[SASRec, dict, dict]:
    """Remove attention width and FFN units (uniformly across blocks, least important first)
    until at least `amount` of the non-embedding parameters are gone; with `dims`, also remove
    that share of the embedding width d (every layer's d-side shrinks with it)."""
    if not isinstance(model, SASRec):
        raise ConfigError(f"structured pruning works on SASRec models, not {type(model).__name__}")
    if not 0 < amount < 1 or not 0 <= dims < 1:
        raise ConfigError(f"structured pruning: amount in (0, 1) and dims in [0, 1), got {amount}, {dims}")
    d = model.d
    new_d = max(model.blocks[0].attn.heads, int(round(d * (1 - dims))))
    before = non_embedding_params(model)
    goal = (1 - amount) * before
    # the largest uniform keep fraction whose model meets the goal
    keep, attn, ffn = 1.0, None, None
    for step in range(1, 1000):
        keep = 1 - step / 1000
        attn, ffn = _widths(model, keep)
        # non-embedding parameters do not depend on the tables: count them on a 1-item model
        probe = create_model("sasrec", **{**kwargs, "num_items": 1, "maxlen": 1, "d": new_d,
                                          "attn_dims": attn, "ffn_dims": ffn})
        if non_embedding_params(probe) <= goal:
            break
    else:
        raise ConfigError(f"cannot remove {amount:.0%} of the non-embedding parameters by width alone")
    # the embedding scale and attention temperatures of the unpruned model
    new_kwargs = {**kwargs, "d": new_d, "attn_dims": attn, "ffn_dims": ffn, "emb_scale": model.emb_scale,
                  "attn_scales": [bo.attn.scale for bo in model.blocks]}
    new = create_model("sasrec", **new_kwargs)
    if new_d < d:  # keep the embedding dimensions whose item columns carry the most
        col = model.item_emb.weight.detach()[1:].norm(dim=0) + model.pos_emb.weight.detach().norm(dim=0)
        dk = _keep_top(col, new_d)
    else:
        dk = torch.arange(d)
    with torch.no_grad():
        new.item_emb.weight.copy_(model.item_emb.weight[:, dk])
        new.pos_emb.weight.copy_(model.pos_emb.weight[:, dk])
        for ln_new, ln_old in [(new.ln_f, model.ln_f)] + [
                (getattr(bn, n), getattr(bo, n)) for bn, bo in zip(new.blocks, model.blocks) for n in ("ln1", "ln2")]:
            ln_new.weight.copy_(ln_old.weight[dk])
            ln_new.bias.copy_(ln_old.bias[dk])
        for bn, bo, a, f in zip(new.blocks, model.blocks, attn, ffn):
            ak = _attn_keep(bo, a // bo.attn.heads)
            i = bo.attn.inner
            rows = torch.cat([ak, ak + i, ak + 2 * i])
            bn.attn.qkv.weight.copy_(bo.attn.qkv.weight[rows][:, dk])
            bn.attn.qkv.bias.copy_(bo.attn.qkv.bias[rows])
            bn.attn.proj.weight.copy_(bo.attn.proj.weight[dk][:, ak])
            bn.attn.proj.bias.copy_(bo.attn.proj.bias[dk])
            fk = _ffn_keep(bo, f)
            bn.ffn[0].weight.copy_(bo.ffn[0].weight[fk][:, dk])
            bn.ffn[0].bias.copy_(bo.ffn[0].bias[fk])
            bn.ffn[3].weight.copy_(bo.ffn[3].weight[dk][:, fk])
            bn.ffn[3].bias.copy_(bo.ffn[3].bias[dk])
    info = {"non_embedding_params_before": before, "non_embedding_params_after": non_embedding_params(new),
            "d": [d, new_d], "attn_dims": attn, "ffn_dims": ffn, "keep_fraction": round(keep, 3)}
    return new.eval(), new_kwargs, info


def items_to_keep(ds: Dataset, coverage: float | None = None, keep_items: int | None = None,
                  teacher: nn.Module | None = None) -> list[str]:
    """Original ids of the items to keep: the fewest that cover `coverage` of the training
    interactions (or of the teacher's probability mass over the validation users when
    `teacher` is given), or the `keep_items` top ones."""
    n = ds.num_items
    if teacher is not None:
        from .evaluation import eval_inputs
        from .metrics import chunk_users

        x, _, _ = eval_inputs(ds, "valid", teacher.maxlen)
        with torch.no_grad():
            mass = torch.zeros(n, dtype=torch.float64)
            step = chunk_users(n)  # a chunk of users at a time: never users x items whole
            for i in range(0, len(x), step):
                mass += torch.softmax(teacher(torch.from_numpy(x[i:i + step])), -1).double().sum(0)
        weight = mass.numpy()
    else:
        weight = np.bincount(np.concatenate(ds.train_sequences()), minlength=n + 1)[1:].astype(np.float64)
    if ds.oov_index is not None:
        weight[ds.oov_index - 1] = -1  # never keep an existing OOV item as an item
    order = np.argsort(-weight, kind="stable")
    if keep_items is not None:
        k = keep_items
    else:
        cum = np.cumsum(weight[order]) / weight[weight > 0].sum()
        k = int(np.searchsorted(cum, coverage - 1e-12) + 1)
    k = max(1, min(k, n - (ds.oov_index is not None)))
    return [ds.items[j] for j in sorted(order[:k].tolist())]


BUDGET_PRECISIONS = ("fp32", "int8")


def estimated_bytes(model: nn.Module, precision: str = "int8") -> int:
    """The weights' bytes in an export at `precision`: fp32, 4 bytes a parameter; int8 (edgekd's
    int8 exports), 1 byte a matrix or table entry plus a 1-byte scale code per table row, and 4
    per bias or norm entry. The file adds its container (graph, names): tens of kB."""
    if precision not in BUDGET_PRECISIONS:
        raise ConfigError(f"size budget precision must be one of {', '.join(BUDGET_PRECISIONS)}, got {precision!r}")
    total = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if precision == "fp32":
                total += 4 * p.numel()
            elif p.dim() >= 2:
                total += p.numel() + (p.shape[0] if isinstance(m, nn.Embedding) else 0)
            else:
                total += 4 * p.numel()
    return total


def items_for_budget(model: nn.Module, ds: Dataset, max_bytes: int, precision: str = "int8") -> int:
    """The most items a vocabulary-pruned `model` can keep with its weights within `max_bytes`
    (estimated_bytes) at `precision`. The pruned table has a padding row and an
    out-of-vocabulary row besides the kept items'."""
    table = model.item_emb.weight
    d = table.shape[1]
    per_row = 4 * d if precision == "fp32" else d + 1
    fixed = estimated_bytes(model, precision) - per_row * table.shape[0]
    k = (max_bytes - fixed) // per_row - 2
    if k < 1:
        raise ConfigError(f"--max-bytes {max_bytes:,}: the model without its item table already takes "
                          f"{fixed:,} bytes at {precision}, with {per_row} more for each item kept",
                          hint=f"allow at least {fixed + 3 * per_row:,} bytes, or slim the model first "
                               "(--method structured)")
    return int(min(k, ds.num_items - (ds.oov_index is not None)))


def vocabulary_prune(model: nn.Module, arch: str, kwargs: dict, ds: Dataset, keep: list[str],
                     unknown: str = "skip") -> tuple[nn.Module, dict, Dataset, dict]:
    """The model on a catalogue of `keep` plus one out-of-vocabulary item (the last index,
    initialised as the mean of the pruned items' embeddings), and the dataset remapped to it.
    `unknown` is what the model's input does with that item (DataSpec.unknown_items): "skip"
    leaves it out of the sequence, "oov" feeds its embedding."""
    if not hasattr(model, "oov"):
        raise ConfigError(f"vocabulary pruning works on SASRec and GRU4Rec models, not {type(model).__name__}")
    spec = ds.spec or DataSpec()
    new_ds = load_data(DataSpec(**{**spec.to_dict(), "keep_items": tuple(keep), "unknown_items": unknown}))
    new_kwargs = {**kwargs, "num_items": new_ds.num_items, "oov": new_ds.oov_index is not None}
    new = create_model(arch, **new_kwargs)
    old_index = {item: k + 1 for k, item in enumerate(ds.items)}
    rows = torch.tensor([old_index[i] for i in new_ds.items if i != OOV_ID], dtype=torch.long)
    pruned = torch.ones(ds.num_items + 1, dtype=torch.bool)
    pruned[0] = False
    pruned[rows] = False
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("item_emb")}
    missing = new.load_state_dict(state, strict=False)
    assert set(missing.missing_keys) == {"item_emb.weight"}, missing
    with torch.no_grad():
        w = model.item_emb.weight
        new.item_emb.weight.zero_()
        new.item_emb.weight[1:len(rows) + 1] = w[rows]
        if new_ds.oov_index is not None:
            new.item_emb.weight[new_ds.oov_index] = w[pruned].mean(0) if pruned.any() else 0
    info = {"items_before": ds.num_items, "items_kept": int(len(rows)),
            "oov_index": new_ds.oov_index, "pruned_items": int(pruned.sum()),
            "unknown_items": unknown}
    return new.eval(), new_kwargs, new_ds, info



def window_prune(model: nn.Module, arch: str, kwargs: dict, window: int) -> tuple[nn.Module, dict, dict]:
    """The model reading only the last `window` items of a history (its maxlen cut to `window`):
    every request then embeds and attends over `window` positions instead of maxlen, which is
    most of an edge student's encoder cost at batch 1. Positions are right-aligned in every
    model, so the kept position rows are the last `window` (a recency-weighted MLP keeps the
    weights of the `window` nearest distances): a history no longer than the window scores
    exactly as before; only the older items of longer histories are dropped."""
    old = int(kwargs["maxlen"])
    if not 1 <= window < old:
        raise ConfigError(f"--window must be between 1 and the model's window - 1 ({old - 1}), got {window}")
    new_kwargs = {**kwargs, "maxlen": int(window)}
    new = create_model(arch, **new_kwargs)
    state = {}
    for k, v in model.state_dict().items():
        if k == "pos_emb.weight":
            v = v[-window:]
        elif k == "recency":
            v = v[:window]
        state[k] = v
    new.load_state_dict(state)
    # the history items a request reads: BERT4Rec's window holds its mask token too
    items = int(window) - (1 if getattr(new, "mask_id", None) is not None else 0)
    return new.eval(), new_kwargs, {"window_before": old, "window": int(window), "history_items": items}
