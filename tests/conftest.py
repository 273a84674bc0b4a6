from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# EDGEKD_ML100K: another place for it (a git worktree elsewhere than beside the data)
ML100K = Path(os.environ.get("EDGEKD_ML100K") or
              Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k" / "u.data")
TINY = {"users": 150, "items": 60, "mean_length": 12, "tastes": 4, "seed": 3}


@pytest.fixture(scope="session")
def tiny_spec():
    from edgekd.data import DataSpec

    return DataSpec(format="synthetic", synthetic=TINY)


@pytest.fixture(scope="session")
def tiny_ds(tiny_spec):
    from edgekd.data import load_data

    return load_data(tiny_spec)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_ds, store):
    from edgekd.train import TrainConfig, train_teacher

    cfg = TrainConfig(model="sasrec", d=16, maxlen=20, epochs=3, patience=3, eval_users=None, seed=0)
    return train_teacher(tiny_ds, cfg, store=store, name="tiny-teacher")


@pytest.fixture(scope="session")
def tiny_student(tiny_ds, tiny_teacher, store):
    from edgekd.distill import DistillConfig, distill

    cfg = DistillConfig(d=8, maxlen=20, epochs=2, patience=2)
    return distill(tiny_teacher, tiny_ds, cfg, store=store, name="tiny-student")


@pytest.fixture
def fast_target(tmp_path) -> Path:
    p = tmp_path / "fast-cpu.toml"
    p.write_text('kind = "local"\nthreads = 1\nwarmup = 2\nmin_runs = 20\nmin_seconds = 0.05\n')
    return p


@pytest.fixture
def card_writes(monkeypatch) -> list[dict]:
    """Every artifact card written while the test runs (save_artifact's and any rewrite), in
    order: a stage writes each of its cards once, complete."""
    import edgekd.artifact as art

    written: list[dict] = []
    real = art.write_json

    def spy(path, obj):
        if Path(path).name == art.CARD:
            written.append(json.loads(json.dumps(obj)))
        return real(path, obj)

    monkeypatch.setattr(art, "write_json", spy)
    return written


def written_once(cards: list[dict], name: str) -> dict:
    """The one card written for artifact `name` (fails if it was written twice or never)."""
    mine = [c for c in cards if c.get("name") == name]
    assert len(mine) == 1, f"{name}: its card was written {len(mine)} times"
    return mine[0]
