"""Next-item losses that do not score the whole catalogue at every position.

The full softmax costs positions x catalogue per batch (logits, their softmax and its gradient):
at 23.7k items that is most of an epoch. Two alternatives, both scoring the hidden states
against a few hundred to a few thousand item embeddings only:

* sampled softmax ("ce"): the candidates of a batch are its own targets (in-batch negatives)
  plus `negatives` items drawn once per batch, uniformly or by popularity, shared by every
  position (mixed negative sampling, Yang et al. 2020), each item once. For a position, every
  candidate but its own target is a negative whose logit is corrected by minus the log of the
  probability that the item is among the candidates at all (the logQ correction of sampled
  softmax, Bengio & Senecal 2008, Yi et al. 2019, in its form for a set without repeats): the
  sum of exp(logit) / probability over the negatives drawn is then an unbiased estimate of the
  full softmax's sum over every other item (Horvitz-Thompson), and when the candidates are
  certain to cover the catalogue the loss is the full softmax exactly. The positive is always
  present for its own position and is not corrected.
* gBCE ("gbce", gSASRec: Petrov & Macdonald 2023): binary cross-entropy with the positive's
  probability raised to beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = negatives / (items - 1)
  the sampling rate and t in [0, 1] the calibration (t = 1: fully calibrated, t = 0: plain BCE),
  against `negatives` uniform negatives. It counters the overconfidence BCE with few negatives
  learns. The calibration is derived for uniform negatives, so gBCE takes the uniform sampler.
  Unlike gSASRec, the positive's term keeps full weight and the negatives' terms are averaged
  (gSASRec's mean over both drowns the positive when negatives are many: see `_gbce`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLERS = ("uniform", "popularity")
LOSS_TYPES = ("ce", "gbce")
GBCE_T = 0.75  # gSASRec's calibration on its datasets


def target_counts(train_seqs: list[np.ndarray], num_items: int, exclude: int | None = None) -> np.ndarray:
    """How often each item (index 1..num_items; [num_items + 1], entry 0 = 0) is a next-item
    target in the training sequences: every item but a sequence's first."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    tails = [np.asarray(s[1:], dtype=np.int64) for s in train_seqs if len(s) > 1]
    if tails:
        counts += np.bincount(np.concatenate(tails), minlength=num_items + 1)[: num_items + 1]
    counts[0] = 0
    if exclude is not None:
        counts[exclude] = 0
    return counts


class SampledLoss:
    """Sampled softmax or gBCE over a model's item table (see the module doc). A plain callable
    (no parameters of its own); draws from torch's global generator, which training seeds and
    checkpoints, so a resumed run draws the same negatives."""

    def __init__(self, num_items: int, counts: np.ndarray, negatives: int, sampler: str = "uniform",
                 loss_type: str = "ce", label_smoothing: float = 0.0, gbce_t: float = GBCE_T,
                 oov_index: int | None = None):
        self.num_items = int(num_items)
        self.negatives = int(negatives)
        self.sampler = sampler
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        self.gbce_t = float(gbce_t)
        valid = np.ones(num_items + 1, dtype=np.float64)
        valid[0] = 0
        if oov_index is not None:
            valid[oov_index] = 0  # never a target, never a negative
        # target distribution (what in-batch candidates are drawn from)
        pop = np.asarray(counts, dtype=np.float64) * valid
        self.pop = torch.from_numpy(pop / max(pop.sum(), 1.0))
        q = valid if sampler == "uniform" else pop + valid * 1e-12  # every item reachable
        self.q = torch.from_numpy(q / q.sum())
        self.q_float = self.q.float()
        n_valid = int(valid.sum())
        # gSASRec: alpha the sampling rate, beta the power of the positive's probability
        alpha = min(1.0, self.negatives / max(n_valid - 1, 1))
        self.beta = alpha * (self.gbce_t * (1 - 1 / alpha) + 1 / alpha) if alpha > 0 else 1.0

    def _draw(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.q_float, n, replacement=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        mask = y > 0
        task = self.from_hidden(model.hidden(x)[mask], y[mask], model.item_table())
        return {"loss": task, "task_loss": task}

    def from_hidden(self, h: torch.Tensor, target: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The loss for hidden states [P, d] with targets [P] (indices 1..N) against `table`."""
        if self.loss_type == "gbce":
            return self._gbce(h, target, table)
        return self._sampled_softmax(h, target, table)

    def _inclusion_log_prob(self, cand: torch.Tensor, positions: int) -> torch.Tensor:
        """log P(item in the candidate set) for a position: the other positions' targets (drawn
        by target popularity) plus the `negatives` draws by q, each with replacement."""
        log_miss = (positions - 1) * torch.log1p(-self.pop[cand].clamp(max=1 - 1e-12)) \
            + self.negatives * torch.log1p(-self.q[cand].clamp(max=1 - 1e-12))
        return torch.log((-torch.expm1(log_miss)).clamp_min(1e-30))

    def candidate_logits(self, h: torch.Tensor, target: torch.Tensor, table: torch.Tensor):
        """Each position's corrected logits over the batch's candidates [P, C] and the column of
        its own target [P]: logsumexp of a row estimates the full softmax's log partition."""
        neg = self._draw(self.negatives) if self.negatives > 0 else target.new_empty(0)
        cand, inverse = torch.unique(torch.cat([target, neg]), return_inverse=True)   # [C]
        pos_col = inverse[: len(target)]
        logits = h @ table[cand].T                                        # [P, C]
        correction = self._inclusion_log_prob(cand, len(target)).to(logits.dtype)
        rows = torch.arange(len(target))
        pos = logits[rows, pos_col]
        logits = logits - correction
        logits[rows, pos_col] = pos                                       # the positive is certain
        return logits, pos_col

    def _sampled_softmax(self, h: torch.Tensor, target: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        logits, pos_col = self.candidate_logits(h, target, table)
        logp = torch.log_softmax(logits, dim=1)
        nll = -logp.gather(1, pos_col[:, None]).squeeze(1)
        eps = self.label_smoothing
        if not eps:
            return nll.mean()
        # label smoothing spread evenly over the candidates
        return ((1 - eps) * nll - eps * logp.mean(1)).mean()

    def _gbce(self, h: torch.Tensor, target: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        neg = self._draw(self.negatives)                                  # shared by the batch
        pos_logit = (h * table[target]).sum(1)
        neg_logits = h @ table[neg].T                                     # [P, K]
        keep = (neg[None, :] != target[:, None]).to(h.dtype)              # accidental hits dropped
        # -log(sigmoid(s)^beta) = -beta * log(sigmoid(s)); negatives: -log(1 - sigmoid(s))
        pos_term = -self.beta * F.logsigmoid(pos_logit)
        neg_term = -(F.logsigmoid(-neg_logits) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        # The positive at full weight, its negatives averaged. gSASRec averages over the positive
        # and its negatives together, which gives the positive 1/(1 + K) of the loss: with
        # hundreds of negatives the model then scores every item low, the positive included
        # (MovieLens-100k, 1,024 negatives: 37% of the full softmax's NDCG@10; benchmarks/scale).
        return (pos_term + neg_term).mean()
