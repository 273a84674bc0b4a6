import pytest
import torch

from edgekd.errors import ArtifactError, ConfigError
from edgekd.models import create_model
from edgekd.train import TrainConfig, cross_entropy_loss, fit

CFG = TrainConfig(model="sasrec-student", d=8, maxlen=20, epochs=4, patience=4, seed=1)


def fresh(ds):
    torch.manual_seed(CFG.seed)
    return create_model(CFG.model, **CFG.arch_kwargs(ds.num_items))


class Stop(KeyboardInterrupt):
    pass


def test_an_interrupted_run_resumes_to_the_same_result(tiny_ds, tmp_path):
    ref = fresh(tiny_ds)
    ref_log = fit(ref, tiny_ds, cross_entropy_loss, CFG, checkpoint=tmp_path / "ref.pt")
    assert not (tmp_path / "ref.pt").exists()  # removed when training ends

    def interrupt(row):
        if row["epoch"] == 2:
            raise Stop()

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Stop):
        fit(fresh(tiny_ds), tiny_ds, cross_entropy_loss, CFG, progress=interrupt, checkpoint=ckpt)
    assert ckpt.is_file()
    resumed = fresh(tiny_ds)
    log = fit(resumed, tiny_ds, cross_entropy_loss, CFG, checkpoint=ckpt, resume=True)
    assert [r["epoch"] for r in log["history"]] == [1, 2, 3, 4]
    assert [r["valid_ndcg@10"] for r in log["history"]] == [r["valid_ndcg@10"] for r in ref_log["history"]]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def interrupted_checkpoint(ds, tmp_path):
    """A checkpoint left by a run stopped after its first epoch."""
    def interrupt(row):
        raise Stop()

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Stop):
        fit(fresh(ds), ds, cross_entropy_loss, CFG, progress=interrupt, checkpoint=ckpt)
    return ckpt


def test_a_checkpoint_from_other_settings_is_refused(tiny_ds, tmp_path):
    from dataclasses import replace

    ckpt = interrupted_checkpoint(tiny_ds, tmp_path)

    with pytest.raises(ArtifactError, match="other settings"):
        fit(fresh(tiny_ds), tiny_ds, cross_entropy_loss, replace(CFG, lr=0.01), checkpoint=ckpt, resume=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="unreadable checkpoint"):
        fit(fresh(tiny_ds), tiny_ds, cross_entropy_loss, CFG, checkpoint=ckpt, resume=True)


def test_early_stopping_keeps_the_best_epoch(tiny_ds):
    log = fit(fresh(tiny_ds), tiny_ds, cross_entropy_loss, TrainConfig(
        model="sasrec-student", d=8, maxlen=20, epochs=30, patience=1, lr=0.05, seed=0))
    best = max(r["valid_ndcg@10"] for r in log["history"])
    assert log["best_valid_ndcg@10"] == best
    assert log["epochs_run"] - log["best_epoch"] <= 1


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=0)


def test_a_checkpoint_of_other_data_is_refused(tiny_ds, tmp_path):
    from edgekd.data import DataSpec, load_data

    ckpt = interrupted_checkpoint(tiny_ds, tmp_path)
    other = load_data(DataSpec(synthetic={"users": 150, "items": 60, "mean_length": 12, "tastes": 4, "seed": 4}))
    with pytest.raises(ArtifactError, match="other settings, data or teacher"):
        fit(fresh(other), other, cross_entropy_loss, CFG, checkpoint=ckpt, resume=True)


def test_tensorboard_scalars_are_written(tiny_ds, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from edgekd.train import TrainConfig, train_teacher

    tb = tmp_path / "tb"
    train_teacher(tiny_ds, TrainConfig(d=8, maxlen=10, epochs=2, patience=2), store=tmp_path, name="tb-teacher",
                  tensorboard=tb)
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/task_loss", "valid/valid_ndcg@10", "train/epoch_s"} <= set(tags)
    assert [e.step for e in acc.Scalars("valid/valid_ndcg@10")] == [1, 2]


def test_two_process_torchrun_teacher_trains_and_evaluates(tmp_path):
    """torchrun with 2 processes (gloo on CPU): DDP keeps the replicas in step, rank 0 writes
    one artifact with its test metrics."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "edgekd", "train", "--synthetic", "users=150", "--synthetic", "items=60",
                        "--dim", "16", "--maxlen", "20", "--epochs", "3", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    arts = [d for d in tmp_path.iterdir() if (d / "artifact.json").is_file()]
    assert len(arts) == 1
    card = json.loads((arts[0] / "artifact.json").read_text())
    assert card["training"]["processes"] == 2 and card["training"]["replicas_agree"] is True
    assert card["metrics"]["test_ndcg@10"] > card["metrics"]["floors_test_ndcg@10"]["popularity"]
    assert p.stderr.count("epoch 1/3") == 1        # one process reports progress
    # distillation under torchrun: one student, written once, by rank 0; nothing else left behind
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "edgekd", "distill", str(arts[0]), "--dim", "8", "--epochs", "2", "--out", str(tmp_path),
                        "--name", "s"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted([arts[0].name, "s"])
    assert json.loads((tmp_path / "s" / "artifact.json").read_text())["training"]["processes"] == 2


def test_length_buckets_cover_every_window_once_and_cutting_padding_is_exact(tiny_ds):
    import torch

    from edgekd.data import training_pairs
    from edgekd.models import create_model
    from edgekd.train import cross_entropy_loss, make_batches

    x, y = (torch.from_numpy(a) for a in training_pairs(tiny_ds.train_sequences(), 20))
    lengths = ((x > 0) | (y > 0)).sum(1)
    batches = make_batches(lengths, 16, torch.Generator().manual_seed(0), bucket=True)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(x)))
    spread = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert sum(spread) < sum(int(lengths[b].max() - lengths[b].min())
                             for b in make_batches(lengths, 16, torch.Generator().manual_seed(0), bucket=False))
    m = create_model("sasrec", num_items=tiny_ds.num_items, d=16, maxlen=20, dropout=0.0).eval()
    b = min(batches, key=lambda bb: int(lengths[bb].max()))   # the shortest bucket
    w = int(lengths[b].max())
    full = cross_entropy_loss(m, x[b], y[b])["loss"]
    cut = cross_entropy_loss(m, x[b][:, 20 - w:], y[b][:, 20 - w:])["loss"]
    assert w < 20 and torch.allclose(full, cut, atol=1e-5)


def test_bucketed_training_trains(tiny_ds):
    from edgekd.train import TrainConfig, cross_entropy_loss, fit

    m = fresh(tiny_ds)
    log = fit(m, tiny_ds, cross_entropy_loss, TrainConfig(d=16, maxlen=20, epochs=3, patience=3, bucket=True))
    assert log["history"][-1]["loss"] < log["history"][0]["loss"]
