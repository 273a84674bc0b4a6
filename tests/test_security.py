"""Hostile and clumsy input: each test reproduces one way edgekd was made to delete, write, run
or half-use something it should not have, and checks it now gets one clear error instead."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgekd.errors import ArtifactError, ConfigError, DataError, EdgeKDError, TargetError


def edgekd(*args, cwd=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    return subprocess.run([sys.executable, "-m", "edgekd", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_error(p) -> str:
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    return errors[0]


def copy_artifact(a, dest: Path) -> Path:
    import shutil

    shutil.copytree(a.path, dest)
    return dest


def edit_card(path: Path, **fields) -> None:
    card = json.loads((path / "artifact.json").read_text())
    card.update(fields)
    (path / "artifact.json").write_text(json.dumps(card))


# ---------------------------------------------------------------- 1. names

@pytest.mark.parametrize("name", ["../victim", "/abs/path", ".", "..", "a/b", "", "-rf", ".hidden", "a\nb",
                                  "x" * 200, "a\\b", "..."])
def test_unsafe_artifact_names_are_usage_errors(name):
    from edgekd.artifact import check_name

    with pytest.raises(ConfigError) as e:
        check_name(name)
    assert e.value.exit_code == 2


def test_train_with_a_name_outside_the_store_fails_before_touching_anything(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    p = edgekd("train", "--synthetic", "users=200", "--epochs", "1", "--out", tmp_path / "nstore",
               "--name", "../victim", cwd=tmp_path)
    assert p.returncode == 2 and "not allowed" in one_error(p)
    assert (victim / "f").read_text() == "x"
    assert not (tmp_path / "nstore").exists()


def test_a_directory_that_is_not_an_artifact_is_never_replaced(tmp_path, tiny_ds):
    from edgekd.artifact import save_artifact
    from edgekd.train import TrainConfig, train_teacher

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    with pytest.raises(ArtifactError, match="not an edgekd artifact"):
        save_artifact(tmp_path, "victim", "p.bin", lambda p: p.write_bytes(b"1"), {"stage": "t", "format": "x"}, {})
    # a training run refuses before it trains, not after
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="not an edgekd artifact"):
        train_teacher(tiny_ds, TrainConfig(d=8, maxlen=10, epochs=50, patience=50), store=tmp_path, name="victim")
    assert time.perf_counter() - t0 < 5
    assert (victim / "f").read_text() == "x" and sorted(os.listdir(victim)) == ["f"]


def test_an_artifact_is_replaced_by_a_new_one_of_the_same_name(tmp_path):
    from edgekd.artifact import load_artifact, save_artifact

    card = {"stage": "t", "format": "x"}
    save_artifact(tmp_path, "a", "p.bin", lambda p: p.write_bytes(b"1"), card, {"items": []})
    b = save_artifact(tmp_path, "a", "p.bin", lambda p: p.write_bytes(b"2"), card, {"items": []})
    assert load_artifact(tmp_path / "a").sha256 == b.sha256


def test_a_card_whose_name_is_a_path_is_refused(tiny_student, tmp_path):
    from edgekd.artifact import load_artifact

    a = copy_artifact(tiny_student, tmp_path / "s")
    edit_card(a, name="../../../x")
    with pytest.raises(ArtifactError, match="not a plain artifact name"):
        load_artifact(a)


def test_bench_run_name_outside_the_results_directory_is_refused(tiny_student, tmp_path, fast_target):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    with pytest.raises(ConfigError, match="bench run name"):
        bench([tiny_student], load_target(str(fast_target)), out=tmp_path / "r", run_id="../../x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- 2. target files

def _ssh_target(tmp_path, *lines) -> Path:
    t = tmp_path / "t.toml"
    t.write_text("\n".join(['kind = "ssh"', 'host = "pi"', *lines]) + "\n")
    return t


@pytest.mark.parametrize("option", ["ProxyCommand=touch /tmp/pwned", "ProxyCommand touch /tmp/pwned",
                                    "LocalCommand=touch /tmp/pwned", "PermitLocalCommand yes",
                                    "KnownHostsCommand=/bin/touch /tmp/pwned", "proxycommand  =  sh -c x",
                                    "PKCS11Provider=/tmp/evil.so", "Match exec true"])
def test_ssh_options_that_can_run_local_commands_need_an_explicit_opt_in(tmp_path, option):
    from edgekd.targets import TargetFileError, load_target

    t = load_target(str(_ssh_target(tmp_path, f"ssh_options = [{json.dumps(option)}]")))
    with pytest.raises(TargetFileError, match="could run a command on this machine") as e:
        t.transport()
    assert "--allow-local-commands" in e.value.hint
    # the user's explicit opt-in, for this run only
    assert option in " ".join(replace(t, allow_local_commands=True).transport().base())


def test_proxyjump_and_connection_options_need_no_opt_in(tmp_path):
    from edgekd.targets import load_target

    t = load_target(str(_ssh_target(tmp_path, 'ssh_options = ["ProxyJump=bastion", "Compression yes", '
                                              '"ServerAliveInterval=10"]')))
    assert "ProxyJump=bastion" in t.transport().base()


def test_an_ssh_config_file_that_runs_commands_needs_the_opt_in(tmp_path):
    from edgekd.targets import TargetFileError, load_target

    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host pi\n  HostName 127.0.0.1\n  ProxyCommand touch /tmp/pwned\n")
    t = load_target(str(_ssh_target(tmp_path, f'ssh_config = "{cfg}"')))
    with pytest.raises(TargetFileError, match="ssh_config:3"):
        t.transport()


def test_the_opt_in_cannot_come_from_the_target_file(tmp_path):
    from edgekd.targets import TargetFileError, load_target

    with pytest.raises(TargetFileError, match="allow_local_commands"):
        load_target(str(_ssh_target(tmp_path, "allow_local_commands = true")))


def test_a_custom_adb_client_is_a_local_command(tmp_path):
    from edgekd.targets import TargetFileError, load_target

    t = tmp_path / "phone.toml"
    t.write_text('kind = "adb"\nadb = "/tmp/evil"\n')
    with pytest.raises(TargetFileError, match="adb client"):
        load_target(str(t)).transport()


def test_bench_refuses_a_target_file_that_runs_commands_and_runs_nothing(tmp_path, tiny_student):
    marker = tmp_path / "pwned"
    t = _ssh_target(tmp_path, f'ssh_options = ["ProxyCommand=touch {marker}"]')
    p = edgekd("bench", tiny_student.path, "--target", t, "--results", tmp_path / "r")
    assert p.returncode != 0 and "--allow-local-commands" in one_error(p)
    assert not marker.exists()


@pytest.mark.parametrize("option", ["UserKnownHostsFile=/dev//null", "UserKnownHostsFile=//dev/null",
                                    "UserKnownHostsFile /dev/./null", "GlobalKnownHostsFile=none",
                                    "UserKnownHostsFile=~/k /dev/null", "StrictHostKeyChecking accept-new"])
def test_host_key_paths_are_compared_normalised(tmp_path, option):
    from edgekd.targets import load_target

    with pytest.raises(TargetError, match="host-key checking"):
        load_target(str(_ssh_target(tmp_path, f"ssh_options = [{json.dumps(option)}]")))


@pytest.mark.parametrize("mask", ["-f_0", "f_0", "0x0f", "0", "", "g", "+f"])
def test_taskset_must_be_a_plain_hex_mask(tmp_path, mask):
    from edgekd.targets import TargetFileError, load_target

    t = tmp_path / "phone.toml"
    t.write_text(f'kind = "adb"\ntaskset = "{mask}"\n')
    with pytest.raises(TargetFileError, match="taskset"):
        load_target(str(t))


# ---------------------------------------------------------------- 3. payload path, 4. vocab

@pytest.mark.parametrize("payload", ["/etc/passwd", "../other/model.safetensors", "..", "sub/model.safetensors"])
def test_the_payload_is_a_plain_file_in_the_artifact(tiny_student, tmp_path, payload):
    from edgekd.artifact import load_artifact, sha256_file

    a = copy_artifact(tiny_student, tmp_path / "s")
    other = tmp_path / "other"
    copy_artifact(tiny_student, other)
    target = Path(payload) if payload.startswith("/") else a / payload
    sha = sha256_file(target) if target.is_file() else "0" * 64
    edit_card(a, file=payload, sha256=sha)
    with pytest.raises(ArtifactError, match="plain file name"):
        load_artifact(a)


def test_a_payload_symlink_is_refused(tiny_student, tmp_path):
    from edgekd.artifact import load_artifact

    a = copy_artifact(tiny_student, tmp_path / "s")
    real = tmp_path / "elsewhere.safetensors"
    (a / "model.safetensors").rename(real)
    (a / "model.safetensors").symlink_to(real)
    with pytest.raises(ArtifactError, match="not a regular file"):
        load_artifact(a)


def test_a_changed_vocab_is_detected(tiny_student, tmp_path):
    from edgekd.artifact import load_artifact

    a = copy_artifact(tiny_student, tmp_path / "s")
    vocab = json.loads((a / "vocab.json").read_text())
    vocab["items"] = vocab["items"][:10]
    (a / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(a)
    # and without the recorded hash (a card from before it was recorded), by its size
    card = json.loads((a / "artifact.json").read_text())
    del card["vocab_sha256"]
    (a / "artifact.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="10 items, but the model scores"):
        load_artifact(a)


def test_exports_carry_a_checked_vocab(tiny_student):
    assert tiny_student.card["vocab_sha256"]
    assert len(tiny_student.vocab()["items"]) == tiny_student.card["arch_kwargs"]["num_items"]


# ---------------------------------------------------------------- 5. diverged training

@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1.0, 0.0])
def test_non_finite_or_non_positive_settings_are_refused(lr):
    from edgekd.distill import DistillConfig
    from edgekd.train import TrainConfig

    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=lr)
    with pytest.raises(ConfigError):
        DistillConfig(temperature=float("nan"))


def test_a_diverged_training_stops_with_a_clear_error_and_saves_nothing(tiny_ds, tmp_path):
    from edgekd.errors import TrainingError
    from edgekd.train import TrainConfig, train_teacher

    cfg = TrainConfig(d=8, maxlen=10, epochs=2, patience=2, lr=1e30)
    with pytest.raises(TrainingError, match=r"diverged in epoch 1") as e:
        train_teacher(tiny_ds, cfg, store=tmp_path, name="diverged")
    assert "lower --lr" in e.value.hint
    assert not (tmp_path / "diverged").exists()


def test_cli_diverged_training_exits_1_with_one_line(tmp_path):
    p = edgekd("train", "--synthetic", "users=200", "--lr", "1e30", "--epochs", "2", "--out", tmp_path)
    assert p.returncode == 1 and "diverged in epoch 1" in one_error(p)
    assert [f for f in os.listdir(tmp_path) if not f.startswith(".")] == []


def test_an_artifact_with_non_finite_weights_is_refused(tiny_student, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from edgekd.artifact import load_artifact, sha256_file
    from edgekd.torch_io import load_torch_model

    a = copy_artifact(tiny_student, tmp_path / "s")
    state = load_file(str(a / "model.safetensors"))
    k = next(k for k, v in state.items() if v.is_floating_point())
    state[k] = torch.full_like(state[k], float("nan"))
    save_file(state, str(a / "model.safetensors"))
    edit_card(a, sha256=sha256_file(a / "model.safetensors"))
    with pytest.raises(ArtifactError, match="non-finite"):
        load_torch_model(load_artifact(a))


def test_json_edgekd_writes_is_strict(tmp_path):
    from edgekd.artifact import save_artifact, write_json

    with pytest.raises(EdgeKDError, match="non-finite"):
        write_json(tmp_path / "x.json", {"a": [1.0, float("nan")]})
    with pytest.raises(ArtifactError, match="metrics.ndcg"):
        save_artifact(tmp_path, "n", "p.bin", lambda p: p.write_bytes(b"1"),
                      {"stage": "t", "format": "x", "metrics": {"ndcg": float("inf")}}, {"items": []})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 6. odd ids and malformed files

def test_odd_ids_load_as_strings_and_digits_sort_numerically(tmp_path):
    from edgekd.data import build_dataset, load_sasrec

    big = "9" * 5000
    p = tmp_path / "s.txt"
    lines = [f"u {i}" for i in ("--0", "²", big, "10", "9", "-3", "007", "x")]
    p.write_text("\n".join(lines) + "\n")
    ds = build_dataset(load_sasrec(p), "s")
    assert ds.items == ["-3", "007", "9", "10", big, "--0", "x", "²"]


def test_a_non_utf8_csv_names_the_line(tmp_path):
    from edgekd.data import load_csv

    p = tmp_path / "x.csv"
    p.write_bytes(b"user,item,timestamp\nu1,i1,1\nu1,\xff\xfe,2\n")
    with pytest.raises(DataError, match=r"x.csv:3: not UTF-8"):
        load_csv(p)


def test_an_absurd_line_is_refused_without_reading_it_whole(tmp_path):
    from edgekd.data import MAX_LINE_BYTES, load_movielens

    p = tmp_path / "u.data"
    with open(p, "wb") as f:
        f.write(b"1\t2\t3\t4\n")
        f.write(b"1" * (MAX_LINE_BYTES * 3) + b"\n")
    with pytest.raises(DataError, match=r"u.data:2: line longer"):
        load_movielens(p)


# ---------------------------------------------------------------- 7. concurrent runs, discarded checkpoints

def test_a_second_run_on_the_same_checkpoint_fails_at_once(tmp_path):
    from edgekd.artifact import path_lock

    with path_lock(tmp_path / ".x.lock", "training"):
        with pytest.raises(EdgeKDError, match="already running"):
            with path_lock(tmp_path / ".x.lock", "training"):
                pass
    assert not (tmp_path / ".x.lock").exists()  # released and removed: no leftovers in the store
    with path_lock(tmp_path / ".x.lock"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_concurrent_trainings_with_one_name(tmp_path):
    args = ["train", "--synthetic", "users=300", "--epochs", "3", "--d", "8", "--out", tmp_path, "--name", "same"]
    first = subprocess.Popen([sys.executable, "-m", "edgekd", *map(str, args)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / ".same.checkpoint.pt.lock").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        p = edgekd(*args)
        assert p.returncode == 1 and "already running" in one_error(p)
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0


def test_starting_over_says_the_interrupted_checkpoint_is_discarded(tiny_ds, tmp_path):
    from edgekd.errors import EdgeKDWarning
    from edgekd.train import TrainConfig, checkpoint_path, train_teacher

    checkpoint_path(tmp_path, "w").write_bytes(b"an interrupted run's checkpoint")
    with pytest.warns(EdgeKDWarning, match="discarded"):
        train_teacher(tiny_ds, TrainConfig(d=8, maxlen=10, epochs=1), store=tmp_path, name="w")


# ---------------------------------------------------------------- 8. Ctrl-C

def test_ctrl_c_says_what_was_interrupted_and_how_to_resume(tmp_path):
    import threading

    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: give
    # the child the default disposition, as a terminal would (CI may run the suite in background).
    p = subprocess.Popen([sys.executable, "-m", "edgekd", "train", "--synthetic", "users=500", "--out", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    training = threading.Event()

    def read():
        for line in p.stderr:
            lines.append(line)
            if "epoch 1/" in line:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert training.wait(timeout=300), "".join(lines)  # interrupt it in the middle of training
    p.send_signal(signal.SIGINT)
    p.wait(timeout=300)
    reader.join(timeout=30)
    err = "".join(lines)
    assert p.returncode == 130, err
    line = next(l for l in lines if l.startswith("interrupted"))
    assert "train" in line and "--resume" in line and "Traceback" not in err


# ---------------------------------------------------------------- 9. generic errors

@pytest.mark.parametrize("users", ["0", "-5"])
def test_bench_users_must_be_positive(users, tiny_student, tmp_path):
    p = edgekd("bench", tiny_student.path, "--users", users, "--results", tmp_path)
    assert p.returncode == 2 and "users" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("content", ["null", '"a string"', "[1, 2]", "42", '{"name": 1}', "NaN", "{"])
def test_a_card_that_is_not_an_object_is_one_clear_error(tiny_student, tmp_path, content):
    from edgekd.artifact import load_artifact

    a = copy_artifact(tiny_student, tmp_path / "s")
    (a / "artifact.json").write_text(content)
    with pytest.raises(ArtifactError, match="artifact.json"):
        load_artifact(a)


def test_a_corrupt_safetensors_file_is_one_clear_error(tiny_student, tmp_path):
    from edgekd.artifact import load_artifact, sha256_file

    a = copy_artifact(tiny_student, tmp_path / "s")
    (a / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    edit_card(a, sha256=sha256_file(a / "model.safetensors"))
    p = edgekd("export", a, "--target", "onnx-fp32", "--out", tmp_path / "store")
    assert p.returncode == 1 and "safetensors" in one_error(p)


def test_data_convert_onto_a_directory_is_a_usage_error(tmp_path):
    p = edgekd("data", "convert", tmp_path, "--synthetic", "users=100")
    assert p.returncode == 2 and "is a directory" in one_error(p)


def test_pipeline_refuses_a_target_that_runs_commands_before_it_trains(tmp_path):
    marker = tmp_path / "pwned"
    t = _ssh_target(tmp_path, f'ssh_options = ["ProxyCommand=touch {marker}"]')
    t0 = time.perf_counter()
    p = edgekd("pipeline", "--target", t, "--out", tmp_path / "m", "--results", tmp_path / "r", "--epochs", "1")
    assert p.returncode != 0 and "--allow-local-commands" in one_error(p)
    assert time.perf_counter() - t0 < 60 and not marker.exists() and not (tmp_path / "m").exists()
