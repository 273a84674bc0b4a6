"""Evaluation of a torch model: its scores, the evaluation inputs of a split (optionally a
fixed sample of users) and the ranking metrics over them (full ranking or sampled)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import Dataset, pad_left
from .metrics import evaluate_scores


@torch.no_grad()
def model_scores(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.asarray(inputs, dtype=np.int64))).numpy()


def sample_users(n: int, users: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of a fixed random sample of `users` of `n` users; all of them when
    `users` is None or not smaller than `n`. The same seed gives the same users everywhere."""
    idx = np.arange(n)
    if users is not None and users < n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=users, replace=False))
    return idx


def eval_inputs(ds: Dataset, split: str, maxlen: int, users: int | None = None, seed: int = 0):
    """(inputs [U, maxlen], targets, histories) for a split, optionally a fixed user sample."""
    hist, targets = ds.eval_split(split)
    idx = sample_users(len(hist), users, seed)
    hist = [hist[i] for i in idx]
    return pad_left(hist, maxlen), targets[idx], hist


def evaluate_model(model: nn.Module, ds: Dataset, split: str, *, sampled: bool = True,
                   reference_topk: np.ndarray | None = None, users: int | None = None, ranks: list | None = None):
    x, t, h = eval_inputs(ds, split, model.maxlen, users)
    return evaluate_scores(lambda b: model_scores(model, b), x, t, h, sampled=sampled, never=ds.oov_index,
                           reference_topk=reference_topk, num_items=ds.num_items, ranks=ranks)

