"""THE training loop, top to bottom, and the teacher stage.

`fit` trains any registered model with a loss function that returns its parts
({"loss", "task_loss", ...}); distillation plugs in by passing a different loss function.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .artifact import DEFAULT_STORE, Artifact, atomic_write, check_name, destination, path_lock
from .data import Dataset, training_pairs
from .errors import ArtifactError, ConfigError, EdgeKDWarning, TrainingError, require_finite
from .evaluation import evaluate_model
from .models import create_model, model_kwargs
from .torch_io import save_torch_artifact

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict]


@dataclass(frozen=True)
class TrainConfig:
    """Training options with recommended defaults. Model-shape fields left as None take the
    registered model's defaults."""

    model: str = "sasrec"
    d: int | None = None
    blocks: int | None = None
    heads: int | None = None
    dropout: float | None = None
    maxlen: int | None = None
    epochs: int = 200
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    # A teacher's validation NDCG@10 can sit on a plateau for 10-20 epochs before it climbs
    # again (MovieLens-100k, label smoothing 0.2): a patience of 10 stopped one of three seeds
    # at 0.096 test NDCG@10 where the others went on to 0.11.
    patience: int = 30
    min_epochs: int = 1
    label_smoothing: float = 0.2  # on the task loss; chosen on ML-100k validation NDCG@10 (docs/distillation.md)
    # Length-bucketed batches: windows of similar length batched together and each batch cut to
    # its longest window, so left padding is not computed (exact: padding changes nothing).
    bucket: bool = False
    eval_users: int | None = None  # validate on a fixed sample of users (all when None)
    seed: int = 0
    threads: int | None = None
    # The next-item loss: 0 negatives = full softmax over the catalogue; N > 0 = sampled (see
    # sampled_losses: "ce" sampled softmax with in-batch + N negatives, "gbce" gSASRec's gBCE).
    # None: full softmax up to SAMPLE_ABOVE items, else DEFAULT_NEGATIVES sampled (resolved()).
    negatives: int | None = None
    sampler: str = "uniform"
    loss_type: str = "ce"

    def __post_init__(self):
        require_finite(self)  # --lr inf or nan: refused before anything runs
        model_kwargs(self.model)  # raises ConfigError listing the registered models
        _check_sampling(self)
        for name in ("epochs", "batch_size", "patience", "min_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.eval_users is not None and self.eval_users < 1:
            raise ConfigError(f"eval_users must be >= 1, got {self.eval_users}")

    def resolved(self, num_items: int, bidirectional: bool = False) -> "TrainConfig":
        """This config with `negatives` decided for a catalogue of `num_items` (what the card records)."""
        if bidirectional and (self.negatives or self.loss_type != "ce"):
            raise ConfigError(f"{self.model}'s Cloze loss is full-softmax only; drop --negatives and --loss-type")
        if self.negatives is not None:
            return self
        n = 0 if bidirectional else auto_negatives(num_items, self.loss_type)
        return dataclasses.replace(self, negatives=n)

    def arch_kwargs(self, num_items: int) -> dict:
        return model_kwargs(self.model, num_items=num_items, d=self.d, blocks=self.blocks,
                            heads=self.heads, dropout=self.dropout, maxlen=self.maxlen)

    def to_dict(self) -> dict:
        return asdict(self)


# Above this many items the full softmax is sampled unless --negatives says otherwise: one batch's
# logits (128 windows x 50 positions x 20k items, float32) are already 0.5 GB, held three times
# over (logits, softmax, gradient), and scoring them is most of an epoch's time; on a 1.7k-item
# catalogue (MovieLens-100k) the full softmax is cheap and is what the teacher was tuned with.
SAMPLE_ABOVE = 20_000
DEFAULT_NEGATIVES = 256  # gSASRec's count; with in-batch negatives a few thousand candidates a batch


def auto_negatives(num_items: int, loss_type: str = "ce") -> int:
    return DEFAULT_NEGATIVES if loss_type == "gbce" or num_items > SAMPLE_ABOVE else 0


def _check_sampling(cfg) -> None:
    from .sampled_losses import LOSS_TYPES, SAMPLERS

    if cfg.negatives is not None and cfg.negatives < 0:
        raise ConfigError(f"negatives must be >= 0 (0: full softmax), got {cfg.negatives}")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    if cfg.loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {cfg.loss_type!r}")
    if cfg.loss_type == "gbce" and cfg.negatives == 0:
        raise ConfigError("loss_type gbce needs sampled negatives (--negatives > 0)")
    if cfg.loss_type == "gbce" and cfg.sampler != "uniform":
        raise ConfigError("gbce's calibration is derived for uniform negatives; use --sampler uniform")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> dict:
    """Full-softmax cross-entropy over the catalogue at every non-padding position."""
    logits = position_logits(model, x, y)
    task = F.cross_entropy(logits, y[y > 0] - 1, label_smoothing=label_smoothing)
    return {"loss": task, "task_loss": task}


def cloze_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> dict:
    """Masked-item prediction (BERT4Rec): hide random items of each window (y holds the window's
    items) and predict them from both sides, full-softmax over the catalogue."""
    tokens, targets = model.cloze(y)
    hit = targets > 0
    h = model.encode(tokens)
    if not bool(hit.any()):  # nothing masked in this batch (short windows): no loss, not NaN
        task = h.sum() * 0.0
        return {"loss": task, "task_loss": task}
    logits = model.score(h[hit])
    task = F.cross_entropy(logits, targets[hit] - 1, label_smoothing=label_smoothing)
    return {"loss": task, "task_loss": task}


def task_loss(model: nn.Module, label_smoothing: float = 0.0, cfg: TrainConfig | None = None,
              ds: Dataset | None = None) -> LossFn:
    """The loss a model trains on alone: Cloze for a bidirectional model (always full softmax),
    else next-item CE: full softmax, or sampled when `cfg` (resolved) has negatives > 0."""
    if cfg is not None and cfg.negatives and ds is not None:
        if getattr(model, "bidirectional", False):
            raise ConfigError(f"{cfg.model}'s Cloze loss is full-softmax only; use --negatives 0")
        from .sampled_losses import SampledLoss, target_counts

        return SampledLoss(ds.num_items, target_counts(ds.train_sequences(), ds.num_items, ds.oov_index),
                           cfg.negatives, cfg.sampler, cfg.loss_type, label_smoothing, oov_index=ds.oov_index)
    fn = cloze_loss if getattr(model, "bidirectional", False) else cross_entropy_loss
    return functools.partial(fn, label_smoothing=label_smoothing) if label_smoothing else fn


def position_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Scores [positions, num_items] for the positions that have a target."""
    h = model.hidden(x)
    return model.score(h[y > 0])


def fit(model: nn.Module, ds: Dataset, loss_fn: LossFn, cfg: TrainConfig,
        progress: Callable[[dict], None] | None = None, checkpoint: Path | None = None,
        resume: bool = False, identity: dict | None = None, tensorboard: Path | None = None) -> dict:
    """Train `model`; see `_fit`. With a checkpoint, the run holds a lock on it (one process
    per checkpoint: a second run with the same name in the same store fails at once)."""
    if checkpoint is None or distributed()[0] != 0:
        return _fit(model, ds, loss_fn, cfg, progress, checkpoint, resume, identity, tensorboard)
    checkpoint = Path(checkpoint)
    with path_lock(checkpoint.with_name(checkpoint.name + ".lock"), "training"):
        return _fit(model, ds, loss_fn, cfg, progress, checkpoint, resume, identity, tensorboard)


def _fit(model: nn.Module, ds: Dataset, loss_fn: LossFn, cfg: TrainConfig,
         progress: Callable[[dict], None] | None = None, checkpoint: Path | None = None,
         resume: bool = False, identity: dict | None = None, tensorboard: Path | None = None) -> dict:
    """Train `model` on the training split with `loss_fn`, early-stopping on validation
    NDCG@10 (full ranking). Restores the best weights and returns the history.

    With `checkpoint`, the whole training state (weights, optimiser, random generators, best
    weights, history) is written there after every epoch, so an interrupted run (Ctrl-C, a
    crash) loses at most the epoch in progress; `resume=True` continues from it and ends where
    an uninterrupted run with the same seed would. The file is removed when training ends.

    With `tensorboard`, every epoch's losses, validation metrics and time go to TensorBoard
    scalars in that directory (a resumed run continues the same curves)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = distributed()
    seed_everything(cfg.seed + rank)  # dropout differs per process; the order below does not
    x_all, y_all = training_pairs(ds.train_sequences(), model.maxlen)
    x_all, y_all = torch.from_numpy(x_all), torch.from_numpy(y_all)
    lengths = ((x_all > 0) | (y_all > 0)).sum(1)  # real positions per window (left-padded)
    if ds.oov_index is not None:
        # The out-of-vocabulary item is an input (a stand-in for the pruned items), never a
        # target: a model is not taught to predict "something rare".
        y_all[y_all == ds.oov_index] = 0
    # A loss with parameters of its own (a distillation projector) trains beside the model.
    loss_module = loss_fn if isinstance(loss_fn, nn.Module) else None
    if hasattr(loss_fn, "prepare"):  # e.g. a distillation's teacher cache, over every training window
        loss_fn.prepare(x_all, y_all)
    takes_rows = bool(getattr(loss_fn, "takes_rows", False))
    params = list(model.parameters()) + (list(loss_module.parameters()) if loss_module is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"ndcg": -1.0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    history = []
    started = time.perf_counter()
    first = 1
    # What a checkpoint must match to be resumed: the settings, the data and (for a student)
    # the teacher. A checkpoint of another run with the same name is refused, not continued.
    key = {"config": cfg.to_dict(), "dataset": ds.fingerprint(), **(identity or {})}
    if checkpoint is not None and not resume and Path(checkpoint).is_file():
        warnings.warn(f"{checkpoint}: an interrupted run's checkpoint is discarded; this run starts over "
                      "(pass --resume to continue it instead)", EdgeKDWarning, stacklevel=2)
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        state = load_checkpoint(Path(checkpoint), key)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise ArtifactError(f"{checkpoint}: weights do not fit this model: {str(e).splitlines()[0]}",
                                hint="delete it to start over") from None
        if loss_module is not None and state.get("loss"):
            loss_module.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["order_rng"])
        best = {"ndcg": state["best_ndcg"], "epoch": state["best_epoch"], "state": state["best_model"]}
        history = json.loads(state["history"])
        first = state["epoch"] + 1
        started -= state["elapsed"]
    if rank:  # one process writes checkpoints, curves and progress
        checkpoint, tensorboard, progress = None, None, None
    step = _Step(model, loss_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # DDP averages the gradients of the processes' shares of each batch; it also starts
        # every process from rank 0's weights.
        step = DistributedDataParallel(step)
    writer = _tensorboard_writer(tensorboard, first)
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        if loss_module is not None:
            loss_module.train()
        if hasattr(loss_fn, "start_epoch"):
            loss_fn.start_epoch(epoch)
        batch_list = make_batches(lengths, cfg.batch_size, gen, cfg.bucket)
        sums: dict[str, float] = {}
        batches = 0
        for bb in batch_list:
            b = bb[rank::world]   # this process's share of the batch
            if world == 1 and not bool((y_all[b] > 0).any()):
                continue  # nothing to predict here (only padding or out-of-vocabulary targets)
            xb, yb = x_all[b], y_all[b]
            if cfg.bucket:
                width = int(lengths[b].max())
                xb, yb = xb[:, xb.shape[1] - width:], yb[:, yb.shape[1] - width:]
            parts = step(xb, yb, b) if takes_rows else step(xb, yb)
            if not torch.isfinite(parts["loss"].detach()):
                raise _diverged(epoch, f"the loss became {float(parts['loss'].detach())}", cfg)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            batches += 1
        train_s = time.perf_counter() - t0
        if world > 1:
            sums = _mean_over_processes(sums, world)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise _diverged(epoch, "the weights became non-finite", cfg)
        val, _ = evaluate_model(model, ds, "valid", sampled=False, users=cfg.eval_users)
        if not np.isfinite(val["ndcg@10"]):
            raise _diverged(epoch, f"validation NDCG@10 is {val['ndcg@10']}", cfg)
        row = {"epoch": epoch, **{k: v / max(batches, 1) for k, v in sums.items()},
               "valid_ndcg@10": val["ndcg@10"], "valid_hr@10": val["hr@10"],
               "epoch_s": train_s}
        history.append(row)
        if val["ndcg@10"] > best["ndcg"]:
            best = {"ndcg": val["ndcg@10"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        row["best_epoch"] = best["epoch"]
        if checkpoint is not None:
            save_checkpoint(Path(checkpoint), key, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "loss": loss_module.state_dict() if loss_module is not None else {},
                "torch_rng": torch.get_rng_state(), "order_rng": gen.get_state(),
                "best_model": best["state"], "best_ndcg": best["ndcg"], "best_epoch": best["epoch"],
                "history": json.dumps(history), "epoch": epoch,
                "elapsed": time.perf_counter() - started})
        if progress:
            progress(row)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "best_epoch"):
                    writer.add_scalar(("valid/" if k.startswith("valid_") else "train/") + k, v, epoch)
            writer.flush()
        if epoch >= cfg.min_epochs and epoch - best["epoch"] >= cfg.patience:
            break
    if writer is not None:
        writer.close()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    model.load_state_dict(best["state"])
    model.eval()
    out = {"history": history, "best_epoch": best["epoch"], "best_valid_ndcg@10": best["ndcg"],
           "epochs_run": len(history), "train_seconds": time.perf_counter() - started,
           "seconds_per_epoch": float(np.mean([r["epoch_s"] for r in history]))}
    if world > 1:
        out["processes"] = world
        out["replicas_agree"] = _replicas_agree(model)
    return out


def _diverged(epoch: int, what: str, cfg: TrainConfig) -> TrainingError:
    return TrainingError(f"training diverged in epoch {epoch}: {what}; nothing was saved",
                         hint=f"lower --lr (it is {cfg.lr:g}) and train again")


def make_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, bucket: bool) -> list[torch.Tensor]:
    """One epoch's batches (index tensors). Shuffled; with `bucket`, windows are sorted by length
    (ties in random order) and cut into batches, and the batches are shuffled."""
    n = len(lengths)
    order = torch.randperm(n, generator=gen)
    if not bucket:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = order[torch.sort(lengths[order], stable=True).indices]
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [chunks[j] for j in torch.randperm(len(chunks), generator=gen).tolist()]


class _Step(nn.Module):
    """One training step's loss as a module, so that DistributedDataParallel can wrap it (the
    loss functions call the model's hidden/score, not its forward)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn  # a module loss (projector, online teacher) is trained too

    def forward(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
        if rows is None:
            return self.loss_fn(self.model, x, y)
        return self.loss_fn(self.model, x, y, rows=rows)  # the batch's window indices (a teacher cache)


def distributed() -> tuple[int, int]:
    """(rank, world size): joins the process group (gloo: CPUs) when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def on_rank_zero(finish: Callable[[], Artifact]) -> Artifact | None:
    """After training: `finish()` (evaluate, write the one artifact) on rank 0 only; under
    torchrun every process then waits for it and leaves the process group together (a process
    that exits with the group still open can abort at interpreter shutdown, failing the run after
    the artifact was written). Other ranks return None. Outside torchrun: just `finish()`."""
    out = finish() if distributed()[0] == 0 else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return out


def _mean_over_processes(sums: dict, world: int) -> dict:
    import torch.distributed as dist

    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t)}


def _replicas_agree(model: nn.Module) -> bool:
    """Whether every process ends with the same weights (DDP keeps them in step)."""
    import torch.distributed as dist

    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum()])
    allv = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(allv, mine)
    return all(torch.allclose(v, allv[0], rtol=1e-9, atol=1e-9) for v in allv)


def _tensorboard_writer(log_dir: Path | None, first_epoch: int):
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package",
                          hint="pip install 'edgekd[tensorboard]'") from None
    # purge_step drops the events an interrupted run wrote after its last checkpoint
    return SummaryWriter(str(log_dir), purge_step=first_epoch if first_epoch > 1 else None)


def save_checkpoint(path: Path, key: dict, state: dict) -> None:
    """Atomically write a training checkpoint (tensors, numbers and strings only)."""
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({**state, "config": json.dumps(key, sort_keys=True)}, tmp))


def load_checkpoint(path: Path, key: dict) -> dict:
    try:
        # weights_only: a checkpoint is data, never code (a pickle could run anything)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})",
                            hint="delete it to start over") from None
    if state.get("config") != json.dumps(key, sort_keys=True):
        raise ArtifactError(f"{path}: checkpoint was made with other settings, data or teacher",
                            hint="rerun with the same options, or delete it to start over")
    return state


def checkpoint_path(store: Path, name: str) -> Path:
    """Where a training run that will write artifact `name` keeps its checkpoint. Checks first
    that the artifact can be written there (a safe name; nothing but an artifact in the way),
    so a run that could not be saved fails before it trains."""
    destination(store, name)
    return Path(store) / f".{name}.checkpoint.pt"


def train_teacher(ds: Dataset, cfg: TrainConfig = TrainConfig(), *, store: Path = DEFAULT_STORE,
                  name: str | None = None, progress: Callable[[dict], None] | None = None,
                  resume: bool = False, tensorboard: Path | None = None) -> Artifact:
    """Train a teacher (full-softmax next-item cross-entropy, or Cloze for BERT4Rec) and write
    its artifact."""
    seed_everything(cfg.seed)
    kw = cfg.arch_kwargs(ds.num_items)
    model = create_model(cfg.model, **kw)
    cfg = cfg.resolved(ds.num_items, getattr(model, "bidirectional", False))  # the card says which loss
    name = check_name(name or f"{ds.name}-teacher")
    log = fit(model, ds, task_loss(model, cfg.label_smoothing, cfg, ds), cfg, progress, checkpoint=checkpoint_path(store, name),
              resume=resume, tensorboard=tensorboard)

    def finish() -> Artifact:
        test, _ = evaluate_model(model, ds, "test")
        metrics = {**{f"test_{k}": v for k, v in test.items()}, "best_valid_ndcg@10": log["best_valid_ndcg@10"]}
        from .baselines import baseline_metrics

        # The floors a sequence model must clear, on the same split and protocol.
        metrics["floors_test_ndcg@10"] = {k: v["ndcg@10"] for k, v in baseline_metrics(ds).items()}
        return save_torch_artifact(
            model, store=store, name=name, stage="teacher", arch=cfg.model,
            arch_kwargs=kw, ds=ds, config={"train": cfg.to_dict()}, metrics=metrics, seed=cfg.seed,
            extra={"training": {k: v for k, v in log.items() if k != "history"}, "history": log["history"]})

    return on_rank_zero(finish)  # under torchrun, rank 0 evaluates and writes the one artifact
