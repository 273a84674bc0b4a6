import json
from pathlib import Path

import pytest

from edgekd.artifact import load_artifact, load_parent
from edgekd.errors import ArtifactError
from edgekd.torch_io import dataset_for, load_torch_model


def test_teacher_artifact_card(tiny_teacher, tiny_ds):
    c = tiny_teacher.card
    for key in ("name", "stage", "format", "file", "sha256", "arch", "arch_kwargs", "input_spec",
                "vocab", "config", "parent", "metrics", "dataset", "seed", "versions", "created"):
        assert key in c, key
    assert c["stage"] == "teacher" and c["format"] == "torch"
    assert c["dataset"]["fingerprint"] == tiny_ds.fingerprint()
    assert tiny_teacher.vocab()["items"] == tiny_ds.items
    assert 0 <= c["metrics"]["test_ndcg@10"] <= 1
    assert load_artifact(tiny_teacher.path).sha256 == tiny_teacher.sha256


def test_reload_gives_the_same_model(tiny_teacher, tiny_ds):
    import torch

    m = load_torch_model(load_artifact(tiny_teacher.path))
    ids = torch.randint(1, tiny_ds.num_items + 1, (2, m.maxlen))
    assert torch.equal(m(ids), load_torch_model(tiny_teacher)(ids))


def copy_artifact(a, dest):
    import shutil

    shutil.copytree(a.path, dest)
    return dest


def test_corrupt_payload_is_detected(tiny_teacher, tmp_path):
    d = copy_artifact(tiny_teacher, tmp_path / "a")
    p = d / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match artifact.json"):
        load_artifact(d)


def test_missing_or_broken_card(tiny_teacher, tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_artifact(tmp_path / "nothing")
    d = copy_artifact(tiny_teacher, tmp_path / "b")
    (d / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(d)


def test_weights_that_do_not_fit_the_arch(tiny_teacher, tmp_path):
    d = copy_artifact(tiny_teacher, tmp_path / "c")
    card = json.loads((d / "artifact.json").read_text())
    card["arch_kwargs"]["d"] = 8
    (d / "artifact.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="weights do not fit"):
        load_torch_model(load_artifact(d))


def test_dataset_mismatch_is_detected(tiny_teacher):
    from edgekd.data import DataSpec

    with pytest.raises(ArtifactError, match="trained on dataset"):
        dataset_for(tiny_teacher, DataSpec(synthetic={"users": 40, "items": 30, "tastes": 3, "seed": 9}))


def test_student_lineage_leads_to_its_teacher(tiny_student, tiny_teacher):
    from edgekd.artifact import find_teacher

    assert tiny_student.card["parent"][0]["sha256"] == tiny_teacher.sha256
    assert find_teacher(tiny_student).sha256 == tiny_teacher.sha256
    assert load_parent(tiny_student, tiny_student.card["parent"][0]).name == tiny_teacher.name
    assert "test_top10_overlap" in tiny_student.metrics


def test_the_runner_reads_the_input_length_from_input_spec():
    from edgekd.artifact import Artifact
    from edgekd.runner import input_maxlen

    card = {"arch_kwargs": {"maxlen": 50}, "input_spec": [{"name": "item_ids", "shape": ["batch", 20]}]}
    assert input_maxlen(Artifact(Path("x"), card)) == 20
