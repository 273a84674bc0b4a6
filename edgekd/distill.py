"""Distillation: a student trained with the task loss plus a loss against a frozen teacher.

The student goes through the same `fit` loop as the teacher; only the loss function differs:

    loss = CE(student, next item) + kd_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))

over the full catalogue at every position. `kd="off"` trains the same student with the task
loss alone: the baseline distillation must beat.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .artifact import DEFAULT_STORE, Artifact
from .data import Dataset
from .errors import ArtifactError, ConfigError
from .models import create_model
from .train import (TrainConfig, checkpoint_path, cross_entropy_loss, evaluate_model, fit, load_torch_model,
                    save_torch_artifact, seed_everything)

KD_MODES = ("on", "off")


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    model: str = "sasrec-student"
    kd: str = "on"
    temperature: float = 2.0
    kd_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.kd not in KD_MODES:
            raise ConfigError(f"kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.kd_weight < 0:
            raise ConfigError(f"kd_weight must be >= 0, got {self.kd_weight}")


def kl_distillation_loss(teacher: nn.Module, temperature: float, kd_weight: float):
    """Cross-entropy plus temperature-scaled KL to the teacher's soft labels."""
    T = temperature

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        mask = y > 0
        s_logits = student.score(student.hidden(x)[mask])
        with torch.no_grad():
            t_logits = teacher.score(teacher.hidden(x)[mask])
        task = F.cross_entropy(s_logits, y[mask] - 1)
        # KL(p_t || p_s) = sum p_t (log p_t - log p_s), mean over positions; T^2 keeps the
        # gradient scale independent of T (Hinton et al., 2015).
        kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1),
                      log_target=True, reduction="batchmean") * (T * T)
        return {"loss": task + kd_weight * kd, "task_loss": task, "kd_loss": kd}

    return loss


def distill(teacher_artifact: Artifact, ds: Dataset, cfg: DistillConfig = DistillConfig(), *,
            store: Path = DEFAULT_STORE, name: str | None = None,
            progress: Callable[[dict], None] | None = None, resume: bool = False) -> Artifact:
    """Train a student from `teacher_artifact` (or alone, with kd='off') and write its artifact."""
    teacher_artifact.check_dataset(ds.fingerprint())
    teacher = load_torch_model(teacher_artifact)
    for p in teacher.parameters():
        p.requires_grad_(False)
    seed_everything(cfg.seed)
    kw = cfg.arch_kwargs(ds.num_items)
    if kw["maxlen"] > teacher.maxlen:
        # A shorter student reads the most recent items only; the teacher reads the same window.
        raise ConfigError(f"student maxlen {kw['maxlen']} exceeds the teacher's {teacher.maxlen}")
    student = create_model(cfg.model, **kw)
    if cfg.kd == "on":
        loss_fn = kl_distillation_loss(teacher, cfg.temperature, cfg.kd_weight)
    else:
        loss_fn = cross_entropy_loss
    suffix = "student-kd" if cfg.kd == "on" else "student-nokd"
    name = name or f"{ds.name}-{suffix}"
    log = fit(student, ds, loss_fn, cfg, progress, checkpoint=checkpoint_path(store, name), resume=resume,
              identity={"teacher": teacher_artifact.sha256})
    _, teacher_top = evaluate_model(teacher, ds, "test", sampled=False)
    test, _ = evaluate_model(student, ds, "test", reference_topk=teacher_top)
    metrics = {**{f"test_{k}": v for k, v in test.items()}, "best_valid_ndcg@10": log["best_valid_ndcg@10"]}
    # The teacher is the parent either way: with kd off it fixes the data and is the baseline.
    return save_torch_artifact(
        student, store=store, name=name, stage="student", arch=cfg.model,
        arch_kwargs=kw, ds=ds, config={"distill": cfg.to_dict()}, metrics=metrics,
        parent=[teacher_artifact.lineage()], seed=cfg.seed,
        extra={"training": {k: v for k, v in log.items() if k != "history"}, "history": log["history"]})


def find_teacher(a: Artifact) -> Artifact:
    """Walk an artifact's lineage back to its teacher."""
    from .artifact import load_parent

    seen = 0
    while a.card.get("stage") != "teacher":
        parents = a.card.get("parent") or []
        if not parents or seen > 32:
            raise ArtifactError(f"{a.path}: no teacher in its lineage", hint="pass --teacher")
        a = load_parent(a, parents[0])
        seen += 1
    return a
