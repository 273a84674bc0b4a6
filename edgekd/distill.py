"""Distillation: a student trained with the task loss plus losses against frozen teachers.

The student goes through the same `fit` loop as the teacher; only the loss function differs:

    loss = CE(student, next item) + sum over --loss terms of weight * term(student, teachers)

with the terms from the registry in `kd_losses` (kl, mse, rd, rrd, hint; combinable as
`kl+hint`) at every training position. Several teachers are mixed there. `kd="off"` trains the
same student with the task loss alone: the baseline distillation must beat.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .artifact import DEFAULT_STORE, Artifact
from .data import Dataset
from .errors import ConfigError
from .kd_losses import DistillLoss, MutualLoss, parse_losses
from .models import create_model
from .evaluation import evaluate_model
from .torch_io import load_torch_model, save_torch_artifact
from .train import TrainConfig, checkpoint_path, fit, on_rank_zero, seed_everything, task_loss

KD_MODES = ("on", "off")
# Above this many items a live teacher's and the student's logits of one batch (128 windows x 50
# positions x 50k items x 4 bytes, twice) are 2.6 GB, held several times over (softmax,
# gradient): distillation then reads a teacher cache of AUTO_CACHE_K items a position instead,
# where the run allows one (one next-item teacher on the student's data, no hint, not online).
CACHE_ABOVE = 50_000
AUTO_CACHE_K = 100


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    model: str = "sasrec-student"
    patience: int = 10
    label_smoothing: float = 0.0  # the student's task loss: the teacher's soft labels regularise it
    kd: str = "on"
    loss: str = "kl"
    temperature: float = 2.0
    kd_weight: float = 1.0      # kl
    mse_weight: float = 0.1
    rd_weight: float = 1.0
    rd_k: int = 10
    rd_lambda: float = 5.0
    rd_mu: float = 0.1
    rd_warmup: int = 2          # epochs with position weights only, then hybrid with discrepancy
    rrd_weight: float = 0.1
    rrd_k: int = 10
    hint_weight: float = 1.0
    teacher_weights: tuple[float, ...] | None = None   # one per teacher; equal when None
    init_from_teacher: bool = False
    online: bool = False        # mutual learning: a fresh teacher of the teacher's shape trains alongside
    # K > 0: the teacher's top-K per position computed once (kd_losses.TeacherCache); None: K =
    # AUTO_CACHE_K above CACHE_ABOVE items when the run can use one, else 0 (the card records which)
    teacher_cache: int | None = 0
    # Positions per training window the cache holds (the last always among them); 0: all; None:
    # all while the build stays under TeacherCache.MAX_SCORES teacher scores, else as many as fit
    cache_positions: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.kd not in KD_MODES:
            raise ConfigError(f"kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        parse_losses(self.loss)
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        for name in ("kd_weight", "mse_weight", "rd_weight", "rrd_weight", "hint_weight", "rd_mu"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("rd_k", "rrd_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.teacher_cache is not None and self.teacher_cache < 0:
            raise ConfigError(f"teacher_cache must be >= 0 (0: the teacher runs in every batch), got {self.teacher_cache}")
        if self.cache_positions is not None and self.cache_positions < 0:
            raise ConfigError(f"cache_positions must be >= 0 (0: every position), got {self.cache_positions}")
        if self.teacher_cache and self.kd == "on":
            names = parse_losses(self.loss)
            for name, k in (("rd", self.rd_k), ("rrd", self.rrd_k)):
                if name in names and k > self.teacher_cache:
                    raise ConfigError(f"{name} reads the teacher's top-{k}, more than --teacher-cache {self.teacher_cache} keeps")
        if not self.rd_lambda > 0:
            raise ConfigError(f"rd_lambda must be > 0, got {self.rd_lambda}")
        if self.teacher_weights is not None:
            if any(w < 0 for w in self.teacher_weights) or not sum(self.teacher_weights) > 0:
                raise ConfigError(f"teacher weights must be >= 0 and not all 0, got {list(self.teacher_weights)}")

    def resolved(self, num_items: int, bidirectional: bool = False, cache_ok: bool = True) -> "DistillConfig":
        """As TrainConfig's, and an automatic teacher cache (None) decided: K = AUTO_CACHE_K above
        CACHE_ABOVE items where the run can use one (`cache_ok`: one next-item teacher on the
        student's data), else 0."""
        cfg = super().resolved(num_items, bidirectional)
        if cfg.teacher_cache is None:
            can = (cache_ok and cfg.kd == "on" and not cfg.online and "hint" not in parse_losses(cfg.loss)
                   and max(cfg.rd_k, cfg.rrd_k) <= AUTO_CACHE_K)
            cfg = dataclasses.replace(cfg, teacher_cache=AUTO_CACHE_K if can and num_items > CACHE_ABOVE else 0)
        return cfg

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not d["teacher_cache"]:  # cards and checkpoints of runs without one read as before it existed
            del d["teacher_cache"]
        if d["cache_positions"] is None:  # automatic (the card's teacher_cache says what it kept)
            del d["cache_positions"]
        return d

    def default_name(self, ds_name: str) -> str:
        if self.kd == "off":
            return f"{ds_name}-student-nokd"
        if self.online:
            return f"{ds_name}-student-online"
        return f"{ds_name}-student-kd" if self.loss == "kl" else f"{ds_name}-student-kd-{self.loss.replace('+', '-')}"


def init_from_teacher(student: nn.Module, teacher: nn.Module, item_map: torch.Tensor | None = None) -> dict:
    """Set the student's item embeddings to the teacher's projected onto their top principal
    directions (truncated SVD, uncentred: the best rank-d approximation of the teacher's table),
    rescaled to the student's initial norm. Returns the share of the teacher table's energy kept."""
    t = teacher.item_table().detach()[1:].double()
    s = student.item_emb.weight
    d = s.shape[1]
    if d > t.shape[1]:
        raise ConfigError(f"--init-from-teacher: student d={d} is larger than the teacher's {t.shape[1]}")
    u, sv, vh = torch.linalg.svd(t, full_matrices=False)
    proj = t @ vh[:d].T                                   # [N, d] = U_d S_d
    rows = torch.arange(1, s.shape[0])
    if item_map is not None:                              # another catalogue: matched items only
        rows = (item_map > 0).nonzero().squeeze(1)
        proj = proj[item_map[rows] - 1]
    with torch.no_grad():
        scale = s[rows].norm() / proj.norm().clamp_min(1e-12)
        s[rows] = (proj * scale).to(s.dtype)
    return {"energy_kept": float((sv[:d] ** 2).sum() / (sv ** 2).sum())}


def teacher_item_map(teacher: Artifact, ds: Dataset) -> torch.Tensor | None:
    """None when `teacher` was trained on `ds`; else the map of `ds`'s items to its catalogue."""
    same = (teacher.card.get("dataset") or {}).get("fingerprint") == ds.fingerprint()
    return None if same else item_map(teacher, ds)


def item_map(teacher: Artifact, ds: Dataset) -> torch.Tensor:
    """For a teacher trained on other data: the teacher's index of each of `ds`'s items, matched
    by original id (0 where the teacher does not know the item). [num_items + 1], row 0 = 0."""
    t_items = teacher.vocab().get("items") or []
    where = {str(item): k + 1 for k, item in enumerate(t_items)}
    m = torch.tensor([0] + [where.get(str(item), 0) for item in ds.items], dtype=torch.long)
    if int((m > 0).sum()) == 0:
        raise ConfigError(f"teacher {teacher.name} shares no item ids with {ds.name}: nothing to distil",
                          hint="cross-domain distillation matches items by their original ids")
    return m


def distill(teacher_artifacts: Artifact | list[Artifact], ds: Dataset, cfg: DistillConfig = DistillConfig(), *,
            store: Path = DEFAULT_STORE, name: str | None = None,
            progress: Callable[[dict], None] | None = None, resume: bool = False,
            tensorboard: Path | None = None) -> Artifact:
    """Train a student from one or more teacher artifacts (or alone, with kd='off') and write
    its artifact. The first teacher is the reference for top-10 overlap and the maxlen limit."""
    arts = [teacher_artifacts] if isinstance(teacher_artifacts, Artifact) else list(teacher_artifacts)
    if not arts:
        raise ConfigError("distill needs at least one teacher")
    if cfg.teacher_weights is not None and len(cfg.teacher_weights) != len(arts):
        raise ConfigError(f"{len(cfg.teacher_weights)} teacher weights for {len(arts)} teachers")
    teachers = []
    maps: list = []
    for a in arts:
        t = load_torch_model(a)
        for p in t.parameters():
            p.requires_grad_(False)
        teachers.append(t)
        maps.append(teacher_item_map(a, ds))
    seed_everything(cfg.seed)
    kw = cfg.arch_kwargs(ds.num_items)
    limit = min(t.maxlen for t in teachers)
    if kw["maxlen"] > limit:
        # A shorter student reads the most recent items only; the teacher reads the same window.
        raise ConfigError(f"student maxlen {kw['maxlen']} exceeds the teacher's {limit}")
    student = create_model(cfg.model, **kw)
    if cfg.online and cfg.teacher_cache:
        raise ConfigError("--online trains its teacher: there is no frozen teacher to cache")
    if cfg.online and cfg.negatives:
        raise ConfigError("--online (mutual learning) trains with the full softmax; use --negatives 0")
    # the card says which task loss (mutual learning's stays full-softmax)
    cfg = cfg.resolved(ds.num_items, getattr(student, "bidirectional", False) or cfg.online,
                       cache_ok=len(teachers) == 1 and maps[0] is None and not getattr(teachers[0], "bidirectional", False))
    extra: dict = {}
    if any(m is not None for m in maps):
        extra["cross_domain"] = [None if m is None else {"teacher": a.name, "matched_items": int((m > 0).sum()),
                                                         "student_items": ds.num_items}
                                 for a, m in zip(arts, maps)]
    if cfg.init_from_teacher:
        extra["init_from_teacher"] = init_from_teacher(student, teachers[0], maps[0])
    if cfg.online:
        if cfg.kd != "on" or len(arts) != 1 or maps[0] is not None:
            raise ConfigError("--online takes one teacher on the same data, with kd on")
        if cfg.init_from_teacher:
            raise ConfigError("--online trains the teacher from scratch; --init-from-teacher has nothing to start from")
        # The teacher artifact gives the shape; its weights start over and learn with the student.
        online_teacher = create_model(arts[0].card["arch"], **arts[0].card["arch_kwargs"])
        loss_fn = MutualLoss(cfg, online_teacher)
    elif cfg.kd == "on":
        sampled = task_loss(student, cfg.label_smoothing, cfg, ds) if cfg.negatives else None
        loss_fn = DistillLoss(cfg, student, teachers, list(cfg.teacher_weights or [1.0] * len(teachers)),
                              item_maps=maps, sampled=sampled)
    else:
        loss_fn = task_loss(student, cfg.label_smoothing, cfg, ds)
    name = name or cfg.default_name(ds.name)
    log = fit(student, ds, loss_fn, cfg, progress, checkpoint=checkpoint_path(store, name), resume=resume,
              identity={"teacher": arts[0].sha256 if len(arts) == 1 else [a.sha256 for a in arts]},
              tensorboard=tensorboard)

    if getattr(loss_fn, "cache", None) is not None:
        extra["teacher_cache"] = dict(loss_fn.cache.info)
        if loss_fn.sampled is not None:  # bounded: the student scored at the cached columns and these draws
            extra["teacher_cache"]["student_outside_draws"] = loss_fn.sampled.negatives

    def finish() -> Artifact:
        teacher_top = None
        if maps[0] is None:  # overlap with a teacher of another catalogue is not defined
            _, teacher_top = evaluate_model(teachers[0], ds, "test", sampled=False)
        test, _ = evaluate_model(student, ds, "test", reference_topk=teacher_top)
        metrics = {**{f"test_{k}": v for k, v in test.items()}, "best_valid_ndcg@10": log["best_valid_ndcg@10"]}
        if cfg.online:  # the co-trained teacher, as it was when training stopped
            t_test, _ = evaluate_model(loss_fn.teacher.eval(), ds, "test", sampled=False)
            metrics["online_teacher_test_ndcg@10"] = t_test["ndcg@10"]
        # The teachers are the parents either way: with kd off they fix the data and the baseline.
        return save_torch_artifact(
            student, store=store, name=name, stage="student", arch=cfg.model,
            arch_kwargs=kw, ds=ds, config={"distill": cfg.to_dict()}, metrics=metrics,
            parent=[a.lineage() for a in arts], seed=cfg.seed,
            extra={**extra, "training": {k: v for k, v in log.items() if k != "history"}, "history": log["history"]})

    return on_rank_zero(finish)  # under torchrun, rank 0 evaluates and writes the one artifact
