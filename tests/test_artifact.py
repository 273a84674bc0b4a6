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


def test_finish_measures_the_staged_artifact_before_its_one_card_is_written(tmp_path, card_writes):
    from edgekd.artifact import CARD, VOCAB, save_artifact

    seen = {}

    def finish(staged):
        # in the partial directory: the payload and vocab.json written, the card not yet
        seen["where"] = staged.path
        seen["files"] = sorted(p.name for p in staged.path.iterdir())
        assert staged.file.read_bytes() == b"weights" and staged.vocab() == {"items": ["a"]}
        assert staged.name == "m" and len(staged.sha256) == 64
        (staged.path / "measured.json").write_text("{}\n")  # a file beside it moves in place too
        return {"measured": "measured.json", "metrics": {**staged.metrics, "size": {"bytes": 7}}}

    a = save_artifact(tmp_path, "m", "w.bin", lambda p: p.write_bytes(b"weights"),
                      {"stage": "t", "format": "x", "metrics": {"loss": 1.0}}, {"items": ["a"]}, finish=finish)
    assert seen["files"] == sorted(["w.bin", VOCAB]) and seen["where"] != a.path
    assert (a.path / "measured.json").is_file() and not seen["where"].exists()
    assert card_writes == [a.card]  # written once, complete
    on_disk = json.loads((a.path / CARD).read_text())
    assert on_disk["measured"] == "measured.json" and on_disk["metrics"] == {"loss": 1.0, "size": {"bytes": 7}}
    assert load_artifact(a.path).card == on_disk


def test_a_failing_finish_saves_nothing(tmp_path):
    from edgekd.artifact import save_artifact

    def finish(staged):
        raise ArtifactError("could not measure it")

    with pytest.raises(ArtifactError, match="could not measure it"):
        save_artifact(tmp_path, "m", "w.bin", lambda p: p.write_bytes(b"w"), {"stage": "t", "format": "x"},
                      {"items": []}, finish=finish)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError, match="non-finite"):
        save_artifact(tmp_path, "m", "w.bin", lambda p: p.write_bytes(b"w"), {"stage": "t", "format": "x"},
                      {"items": []}, finish=lambda staged: {"latency": float("nan")})
    assert list(tmp_path.iterdir()) == []
