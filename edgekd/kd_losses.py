"""Distillation losses: a registry of terms that `edgekd distill --loss` combines (`kl+hint`).

Every term sees one `KDBatch`: the student's and the teachers' hidden states and full-catalogue
logits at the training positions of a batch (the same positions the task loss uses). Several
teachers are combined here, once, so that every term works with one teacher or many:

- soft labels (`kl`, and the top-K lists of `rd` and `rrd`) come from the teachers' weighted
  mixture of distributions, p = sum_i w_i softmax(t_i / T);
- logit matching (`mse`) matches the weighted mean of the teachers' logits;
- `hint` projects the student into each teacher's space with its own learned projector.

The student loss is  CE(student, next item) + sum_term weight_term * term.

With a teacher cache (`--teacher-cache K`, `TeacherCache`) the frozen teacher runs once, before
training, and keeps only each position's top-K items and logits (fp16): then `t_logits` are
[P, K] at the columns `t_idx`, soft labels are the teacher's distribution renormalised over its
top-K, `mse` matches those K scores, and `rd`/`rrd` read their top-K from the cache. Building
it scores every cached position against the catalogue; above `TeacherCache.MAX_SCORES` such
scores an automatic cache holds fewer positions per window (`--cache-positions`, the last target
always among them) and the terms are computed there only, the task loss still at every position.

A teacher cache with a sampled task loss (`--negatives N`, the default above 20,000 items) never
scores the whole catalogue for the student either (`s_logits` is None): the student is scored
at the cached columns, and what a term needs from the rest of the catalogue (the log-partition
of `rd`, the "rest" of `rrd`) is estimated from N uniform draws outside them, each weighted by
(catalogue size / N). A batch then costs P x (K + N) scores instead of P x catalogue, and with K
equal to the catalogue the terms are exactly the full ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import OOV_SCORE


@dataclass
class KDBatch:
    s_hidden: torch.Tensor           # [P, d_s] student hidden states at the target positions
    s_logits: torch.Tensor | None    # [P, N] student scores over the catalogue; None: bounded (see the module doc)
    t_hidden: list[torch.Tensor]     # per teacher [P, d_t]
    t_logits: list[torch.Tensor]     # per teacher [P, N]
    t_weights: list[float]           # sum to 1
    student: nn.Module
    teachers: list[nn.Module]
    epoch: int = 1
    # Cross-domain: the catalogue columns both sides know (student's, and each teacher's for the
    # same items); None when teacher and student share the catalogue.
    s_cols: torch.Tensor | None = None
    t_cols: list | None = None
    # A teacher cache: the catalogue columns of t_logits ([P, K], the teacher's top-K, best first).
    t_idx: torch.Tensor | None = None
    negatives: int = 0               # bounded: uniform draws standing for the columns outside t_idx
    _cache: dict = field(default_factory=dict)

    @property
    def num_cols(self) -> int:
        """The catalogue's columns (the student's scores' width)."""
        return self.s_logits.shape[1] if self.s_logits is not None else self.student.item_table().shape[0] - 1

    def s_scores(self, cols: torch.Tensor) -> torch.Tensor:
        """The student's scores at columns `cols` [P, C] (computed there alone when bounded)."""
        if self.s_logits is not None:
            return self.s_logits.gather(1, cols)
        rows = self.student.item_table()[cols + 1]                           # [P, C, d]
        return self._pin(torch.einsum("pcd,pd->pc", rows, self.s_hidden), cols)

    def _pin(self, scores: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The student's out-of-vocabulary column (the last) scores OOV_SCORE, as in `score`."""
        if not getattr(self.student, "oov", False):
            return scores
        return scores.masked_fill(cols == self.num_cols - 1, OOV_SCORE)

    def s_logprob(self, T: float = 1.0) -> torch.Tensor:
        """The student's log-probabilities at temperature T at the teacher's columns: over the
        catalogue [P, N], or with a teacher cache over its top-K, renormalised [P, K]."""
        if self.t_idx is None:
            return F.log_softmax(self.s_logits / T, -1)
        return F.log_softmax(self.s_at_teacher() / T, -1)

    def s_at_teacher(self) -> torch.Tensor:
        """The student's scores at the teacher's columns ([P, N], or [P, K] with a cache)."""
        if self.t_idx is None:
            return self.s_logits
        if "s_at_teacher" not in self._cache:
            self._cache["s_at_teacher"] = self.s_scores(self.t_idx)
        return self._cache["s_at_teacher"]

    def s_topk_scores(self, k: int) -> torch.Tensor:
        """The student's scores at the teachers' top-k columns [P, k], best first."""
        return self.s_at_teacher()[:, :k] if self.t_idx is not None else self.s_logits.gather(1, self.t_topk(k))

    def s_logz(self) -> torch.Tensor:
        """log of the student's softmax normaliser over the catalogue [P, 1] (estimated when bounded)."""
        if "logz" not in self._cache:
            if self.s_logits is not None:
                self._cache["logz"] = torch.logsumexp(self.s_logits, -1, keepdim=True)
            else:
                inside = torch.logsumexp(self.s_at_teacher(), -1, keepdim=True)
                self._cache["logz"] = torch.logaddexp(inside, self._outside_lse())
        return self._cache["logz"]

    def s_lse_below(self, k: int) -> torch.Tensor:
        """log-sum-exp of the student's scores outside the teachers' top-k [P, 1] (estimated when bounded)."""
        if self.s_logits is not None:
            return torch.logsumexp(self.s_logits.scatter(1, self.t_topk(k), float("-inf")), -1, keepdim=True)
        rest = self._outside_lse()
        if self.t_idx.shape[1] > k:
            rest = torch.logaddexp(rest, torch.logsumexp(self.s_at_teacher()[:, k:], -1, keepdim=True))
        return rest

    def _outside_lse(self) -> torch.Tensor:
        """Bounded: log of the sum of exp(score) over the columns outside t_idx [P, 1], estimated
        from `negatives` uniform draws over the catalogue (a draw inside t_idx counts 0, each
        other one num_cols / negatives: an unbiased estimate of the sum)."""
        if "outside" not in self._cache:
            n, m = self.num_cols - int(bool(getattr(self.student, "oov", False))), max(1, self.negatives)
            neg = torch.randint(0, n, (m,), device=self.s_hidden.device)
            s = self.s_hidden @ self.student.item_table()[neg + 1].T                      # [P, m]
            srt = self.t_idx.sort(-1).values
            at = torch.searchsorted(srt, neg.expand(len(srt), m).contiguous()).clamp_max(srt.shape[1] - 1)
            hit = srt.gather(1, at) == neg                                                # [P, m]: inside t_idx
            s = s.masked_fill(hit, -1e30)
            self._cache["outside"] = torch.logsumexp(s, -1, keepdim=True) + math.log(n / m)
        return self._cache["outside"]

    def item_rows(self, which: int | None) -> torch.Tensor:
        """Item embeddings (no padding row) of the student (None) or teacher `which`, restricted
        to the matched items when the catalogues differ."""
        if which is None:
            t = self.student.item_table()[1:]
            return t if self.s_cols is None else t[self.s_cols]
        t = self.teachers[which].item_table()[1:]
        return t if self.t_cols is None else t[self.t_cols[which]]

    def t_logprob(self, T: float = 1.0) -> torch.Tensor:
        """log of the teachers' mixture distribution at temperature T: [P, N]."""
        key = ("logprob", T)
        if key not in self._cache:
            parts = [math.log(w) + F.log_softmax(t / T, -1) for t, w in zip(self.t_logits, self.t_weights) if w > 0]
            self._cache[key] = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), 0)
        return self._cache[key]

    def t_logits_mean(self) -> torch.Tensor:
        if "mean" not in self._cache:
            self._cache["mean"] = sum(w * t for t, w in zip(self.t_logits, self.t_weights))
        return self._cache["mean"]

    def t_topk(self, k: int) -> torch.Tensor:
        """The teachers' top-k items per position, best first: [P, k] column indices."""
        if self.t_idx is not None:  # cached sorted, best first
            return self.t_idx[:, :k]
        key = ("topk", k)
        if key not in self._cache:
            self._cache[key] = self.t_logprob(1.0).topk(min(k, self.num_cols), -1).indices
        return self._cache[key]


@dataclass(frozen=True)
class LossSpec:
    name: str
    summary: str
    build: Callable[..., nn.Module]   # build(cfg, student, teachers) -> module(batch) -> scalar
    weight_field: str                 # the DistillConfig field holding its weight


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, summary: str, weight_field: str):
    def deco(build):
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        _LOSSES[name] = LossSpec(name, summary, build, weight_field)
        return build
    return deco


def list_losses() -> list[LossSpec]:
    return [_LOSSES[k] for k in sorted(_LOSSES)]


def parse_losses(text: str) -> tuple[str, ...]:
    """'kl+hint' -> ('kl', 'hint'); unknown or repeated names are a ConfigError."""
    names = tuple(p.strip() for p in text.split("+") if p.strip())
    if not names:
        raise ConfigError(f"--loss {text!r} names no loss; registered: {', '.join(sorted(_LOSSES))}")
    for n in names:
        if n not in _LOSSES:
            raise ConfigError(f"unknown distillation loss {n!r}; registered: {', '.join(sorted(_LOSSES))} "
                              "(combine with +, e.g. kl+hint)")
    if len(set(names)) != len(names):
        raise ConfigError(f"--loss {text!r} names a loss twice")
    return names


def loss_spec(name: str) -> LossSpec:
    return _LOSSES[name]


# ---------------------------------------------------------------- the terms

class _Term(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, b: KDBatch) -> torch.Tensor:
        return self.fn(b)


def soft_kl(s_logits: torch.Tensor, t_logprob: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p_t || softmax(s/T)), mean over positions; T^2 keeps the gradient scale
    independent of T (Hinton et al., 2015). `t_logprob` is log p_t at temperature T."""
    return kl_logprob(F.log_softmax(s_logits / T, -1), t_logprob, T)


def kl_logprob(s_logprob: torch.Tensor, t_logprob: torch.Tensor, T: float) -> torch.Tensor:
    """soft_kl from the student's log-probabilities (at the teacher's columns)."""
    return F.kl_div(s_logprob, t_logprob, log_target=True, reduction="batchmean") * (T * T)


@register_loss("kl", "soft labels over the full catalogue at temperature T, scaled by T^2 (Hinton et al. 2015)",
               "kd_weight")
def _kl(cfg, student, teachers) -> nn.Module:
    T = cfg.temperature

    return _Term(lambda b: kl_logprob(b.s_logprob(T), b.t_logprob(T), T))


@register_loss("mse", "logit matching: mean squared difference of the scores over the catalogue",
               "mse_weight")
def _mse(cfg, student, teachers) -> nn.Module:
    return _Term(lambda b: F.mse_loss(b.s_at_teacher(), b.t_logits_mean()))


@register_loss("rd", "Ranking Distillation (Tang & Wang 2018): the teacher's top-K as weighted extra positives",
               "rd_weight")
def _rd(cfg, student, teachers) -> nn.Module:
    K, lam, mu, warmup, m = cfg.rd_k, cfg.rd_lambda, cfg.rd_mu, cfg.rd_warmup, 100

    def rd(b: KDBatch) -> torch.Tensor:
        idx = b.t_topk(K)                                                    # [P, K]
        k = idx.shape[1]
        top = b.s_topk_scores(K)                                             # [P, K]
        r = torch.arange(k, dtype=top.dtype, device=idx.device)
        w = torch.exp(-(r + 1) / lam)
        w = (w / w.sum()).expand(idx.shape[0], k)                            # position importance
        logp = top - b.s_logz()                                              # [P, K] log-softmax
        if b.epoch > warmup:
            # Ranking discrepancy: push hardest where the student ranks the teacher's r-th item
            # far below r. The student's rank is estimated from m uniformly sampled items, as in
            # the paper (an exact rank over the catalogue would compare P*K*N scores).
            with torch.no_grad():
                n = b.num_cols
                probe = torch.randint(0, n, (idx.shape[0], m), device=idx.device)
                higher = (b.s_scores(probe).unsqueeze(1) > top.unsqueeze(2))
                s_rank = higher.float().mean(-1) * (n - 1)                   # [P, K], 0-based
                wd = torch.tanh(torch.clamp(mu * (s_rank - r), min=0.0))
                wd = wd / wd.sum(-1, keepdim=True).clamp_min(1e-12)
                w = 0.5 * (w + wd)                                           # hybrid weighting
        return -(w * logp).sum(-1).mean()
    return _Term(rd)


@register_loss("rrd", "relaxed ranking distillation (Kang et al. 2020): the teacher's top-K order above "
               "the rest of the catalogue (all of it, not a sample)", "rrd_weight")
def _rrd(cfg, student, teachers) -> nn.Module:
    K = cfg.rrd_k

    def rrd(b: KDBatch) -> torch.Tensor:
        top = b.s_topk_scores(K)                                             # [P, K]
        rest = b.s_lse_below(top.shape[1])                                   # [P, 1]
        # log( sum_{l >= k} exp s_l + sum_rest exp s_j ) for each k, by a reversed cumulative LSE
        tail = torch.logcumsumexp(top.flip(-1), -1).flip(-1)
        return -(top - torch.logaddexp(tail, rest)).sum(-1).mean()
    return _Term(rrd)


class _Hint(nn.Module):
    """Match the student's item embeddings and hidden states to each teacher's through a
    learned linear projector (student d -> teacher d), one per teacher."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module]):
        super().__init__()
        ds = student.item_table().shape[1]
        self.proj = nn.ModuleList(nn.Linear(ds, t.item_table().shape[1]) for t in teachers)

    def forward(self, b: KDBatch) -> torch.Tensor:
        s_items = b.item_rows(None)
        total = 0.0
        for i, (proj, t_h, w) in enumerate(zip(self.proj, b.t_hidden, b.t_weights)):
            with torch.no_grad():
                t_items = b.item_rows(i)
            total = total + w * (F.mse_loss(proj(s_items), t_items) + F.mse_loss(proj(b.s_hidden), t_h))
        return total


@register_loss("hint", "embedding hints: the student's item embeddings and final hidden state, projected "
               "by a learned linear map, match the teacher's", "hint_weight")
def _hint(cfg, student, teachers) -> nn.Module:
    return _Hint(student, teachers)


class DistillLoss(nn.Module):
    """CE on the next item plus the weighted distillation terms. An nn.Module so that `fit`
    trains the terms' own parameters (hint projectors) and checkpoints them."""

    def __init__(self, cfg, student: nn.Module, teachers: list[nn.Module], teacher_weights: list[float],
                 item_maps: list | None = None, sampled=None):
        super().__init__()
        self.teachers = teachers  # a plain list: frozen, not part of this module's state
        # Cross-domain (a teacher trained on other data): item_maps[i][k] is teacher i's index
        # of the student's item k (0: unknown to it). Only matched items carry a signal.
        self.item_map = None
        if item_maps and any(m is not None for m in item_maps):
            if len(teachers) != 1:
                raise ConfigError("cross-domain distillation takes one teacher")
            self.item_map = item_maps[0]
            self.s_cols = (self.item_map[1:] > 0).nonzero().squeeze(1)
            self.t_cols = self.item_map[1:][self.s_cols] - 1
        total = float(sum(teacher_weights))
        self.t_weights = [float(w) / total for w in teacher_weights]
        names = parse_losses(cfg.loss)
        self.weights = {n: float(getattr(cfg, _LOSSES[n].weight_field)) for n in names}
        self.terms = nn.ModuleDict({n: _LOSSES[n].build(cfg, student, teachers) for n in names})
        self.label_smoothing = float(cfg.label_smoothing)
        self.sampled = sampled
        self.epoch = 1
        self.cache_k = int(getattr(cfg, "teacher_cache", 0))
        self.cache_positions = getattr(cfg, "cache_positions", 0)
        self.seed = int(getattr(cfg, "seed", 0))
        self.cache: TeacherCache | None = None
        if self.cache_k:
            if len(teachers) != 1 or self.item_map is not None or getattr(teachers[0], "bidirectional", False):
                raise ConfigError("--teacher-cache takes one next-item (causal) teacher on the student's data")
            if "hint" in names:
                raise ConfigError("--teacher-cache keeps the teacher's top-K scores, not the hidden states hint needs")

    @property
    def takes_rows(self) -> bool:
        """`fit` passes each batch's window indices (the cache is looked up by them)."""
        return self.cache_k > 0

    def prepare(self, x_all: torch.Tensor, y_all: torch.Tensor) -> None:
        """Before training (`fit`): the teacher cache over every training window."""
        if self.cache_k:
            self.cache = TeacherCache(self.teachers[0], x_all, y_all, self.cache_k,
                                      per_window=self.cache_positions, seed=self.seed)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
        mask = y > 0
        s_h = student.hidden(x)[mask]
        # A teacher cache with a sampled task loss scores the student at the columns the terms
        # read only (bounded); otherwise the terms read the student's whole catalogue.
        bounded = self.cache is not None and self.sampled is not None
        s_logits = None if bounded else student.score(s_h)
        if self.sampled is not None:  # the task term sampled like the teacher's
            task = self.sampled.from_hidden(s_h, y[mask], student.item_table())
        else:
            task = F.cross_entropy(s_logits, y[mask] - 1, label_smoothing=self.label_smoothing)
        if self.cache is not None:
            if rows is None:
                raise RuntimeError("a teacher cache needs the batch's window indices (rows)")
            t_idx, t_val = self.cache.lookup(rows)
            kept = self.cache.kept_rows(rows)
            if kept is not None:  # the terms at the cached positions only; the task term saw all
                keep = kept[:, -mask.shape[1]:][mask]
                s_h = s_h[keep]
                s_logits = None if s_logits is None else s_logits[keep]
            b = KDBatch(s_h, s_logits, [], [t_val], self.t_weights, student, self.teachers, self.epoch, t_idx=t_idx,
                        negatives=self.sampled.negatives if bounded else 0)
            return self._combine(task, b)
        sel = None
        if any(getattr(t, "bidirectional", False) for t in self.teachers):
            # A bidirectional teacher needs one forward per prefix: distil at a random sample
            # of positions per window (the last always among them) instead of all of them.
            sel = self._sample_positions(mask)
            s_h, s_logits = s_h[sel], s_logits[sel]
        tx = x if self.item_map is None else self.item_map[x]   # unknown items read as padding
        with torch.no_grad():
            t_h = [self._teacher_hidden(t, tx, mask, sel) for t in self.teachers]
            t_logits = [t.score(h) for t, h in zip(self.teachers, t_h)]
        cols = {}
        if self.item_map is not None:
            s_logits = s_logits[:, self.s_cols]
            t_logits = [t[:, self.t_cols] for t in t_logits]
            cols = {"s_cols": self.s_cols, "t_cols": [self.t_cols]}
        b = KDBatch(s_h, s_logits, t_h, t_logits, self.t_weights, student, self.teachers, self.epoch, **cols)
        return self._combine(task, b)

    def _combine(self, task: torch.Tensor, b: KDBatch) -> dict:
        parts = {"task_loss": task}
        loss = task
        for n, term in self.terms.items():
            v = term(b)
            parts[f"{n}_loss"] = v
            loss = loss + self.weights[n] * v
        parts["loss"] = loss
        return parts

    positions_per_window = 8   # bidirectional teachers: prefixes distilled per training window
    prefix_window = 50         # ... each read through its last this many items

    def _sample_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Indices into the flattened target positions (mask order): up to
        positions_per_window per row, always including the row's last position."""
        key = torch.rand(mask.shape).masked_fill(~mask, 2.0)
        key[:, -1] = key[:, -1].masked_fill(mask[:, -1], -1.0)        # the last target first
        k = min(self.positions_per_window, mask.shape[1])
        chosen = torch.zeros_like(mask)
        chosen.scatter_(1, key.topk(k, 1, largest=False).indices, True)
        chosen &= mask
        return chosen[mask].nonzero().squeeze(1)

    def _teacher_hidden(self, t: nn.Module, x: torch.Tensor, mask: torch.Tensor, sel) -> torch.Tensor:
        if getattr(t, "bidirectional", False):
            rows, cols = mask.nonzero(as_tuple=True)
            return t.prefix_hidden(x, rows[sel], cols[sel], min(self.prefix_window, t.maxlen - 1))
        h = t.hidden(x)[mask]
        return h if sel is None else h[sel]


class TeacherCache:
    """A frozen teacher's top-K items and logits at every training position, computed once
    before training instead of in every batch of every epoch: K int32 indices and K fp16 logits
    per position (6 K bytes; e.g. 100k positions at K=100: 60 MB), in memory.

    Positions are the windows' targets (y > 0) in row-major order, as the loss sees them; a
    batch's are found from its window indices."""

    MAX_BYTES = 4 << 30
    # The build scores every kept position against the whole catalogue: above this many scores
    # (4 to 13 minutes on 2 cores in benchmarks/scale) an automatic cache keeps fewer positions
    # per window instead, so that its cost stops growing with the catalogue.
    MAX_SCORES = 10 ** 11

    def __init__(self, teacher: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, k: int,
                 batch_size: int = 256, per_window: int | None = 0, seed: int = 0):
        import time

        t0 = time.perf_counter()
        mask = y_all > 0
        n_items = teacher.item_table().shape[0] - 1
        if per_window is None:  # automatic: every position while the build fits MAX_SCORES
            per_window = 0 if int(mask.sum()) * n_items <= self.MAX_SCORES else \
                max(1, self.MAX_SCORES // (len(x_all) * n_items))
        self.kept = None
        if per_window:
            # Each window's last target (the next item a request asks for) and per_window - 1
            # others drawn at random, once: the KD terms read these, the task loss all positions.
            key = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)).masked_fill(~mask, 2.0)
            key[:, -1] = key[:, -1].masked_fill(mask[:, -1], -1.0)
            w = min(per_window, mask.shape[1])
            self.kept = torch.zeros_like(mask).scatter_(1, key.topk(w, 1, largest=False).indices, True) & mask
            mask = self.kept
        counts = mask.sum(1)
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts
        n_pos = int(counts.sum())
        k = min(k, n_items)
        need = n_pos * k * 6
        if need > self.MAX_BYTES:
            raise ConfigError(f"--teacher-cache {k}: {n_pos:,} training positions x {k} would take "
                              f"{need / 2**30:.1f} GiB (the limit is {self.MAX_BYTES / 2**30:.0f} GiB)",
                              hint=f"use a smaller K, e.g. --teacher-cache {max(1, self.MAX_BYTES // (n_pos * 6))}")
        self.idx = torch.empty(n_pos, k, dtype=torch.int32)
        self.val = torch.empty(n_pos, k, dtype=torch.float16)
        was_training = teacher.training
        teacher.eval()
        at = 0
        with torch.no_grad():
            for r in range(0, len(x_all), batch_size):
                h = teacher.hidden(x_all[r:r + batch_size])[mask[r:r + batch_size]]
                v, i = teacher.topk_scores(h, k)  # a block of items at a time
                self.idx[at:at + len(i)] = i.to(torch.int32)
                self.val[at:at + len(v)] = v.to(torch.float16)
                at += len(i)
        teacher.train(was_training)
        self.info = {"k": k, "positions": n_pos, "bytes": need, "seconds": round(time.perf_counter() - t0, 3)}
        if per_window:
            self.info["positions_per_window"] = int(per_window)

    def kept_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Which of windows `rows`' target positions the cache holds ([B, L] bool), or None: all."""
        return None if self.kept is None else self.kept[rows]

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached columns [P, K] (int64) and logits [P, K] (float32) of windows `rows`, their
        (kept) positions in the loss's order."""
        c = self.counts[rows]
        total = int(c.sum())
        first = torch.repeat_interleave(self.starts[rows], c)
        within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        at = first + within
        return self.idx[at].long(), self.val[at].float()


class MutualLoss(nn.Module):
    """Online distillation by mutual learning (Zhang et al., 2018): teacher and student train
    together from scratch, each on its own cross-entropy plus a KL term towards the other's
    current (detached) soft labels:

        CE(s) + CE(t) + w T^2 KL(p_t || p_s) + w T^2 KL(p_s || p_t)

    The teacher is a submodule, so `fit` optimises and checkpoints it with the loss."""

    def __init__(self, cfg, teacher: nn.Module):
        super().__init__()
        if getattr(teacher, "bidirectional", False):
            raise ConfigError("--online needs a next-item (causal) teacher such as sasrec, not a bidirectional one")
        if parse_losses(cfg.loss) != ("kl",):
            raise ConfigError(f"--online trains with kl only, got --loss {cfg.loss}")
        self.teacher = teacher
        self.T = cfg.temperature
        self.w = cfg.kd_weight
        self.label_smoothing = float(cfg.label_smoothing)

    def forward(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        mask = y > 0
        target = y[mask] - 1
        s = student.score(student.hidden(x)[mask])
        t = self.teacher.score(self.teacher.hidden(x)[mask])
        eps = self.label_smoothing
        ce_s, ce_t = F.cross_entropy(s, target, label_smoothing=eps), F.cross_entropy(t, target, label_smoothing=eps)
        T = self.T
        kl_s = soft_kl(s, F.log_softmax(t.detach() / T, -1), T)
        kl_t = soft_kl(t, F.log_softmax(s.detach() / T, -1), T)
        return {"loss": ce_s + ce_t + self.w * (kl_s + kl_t), "task_loss": ce_s, "teacher_task_loss": ce_t,
                "kl_loss": kl_s, "teacher_kl_loss": kl_t}
