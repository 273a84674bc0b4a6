"""CLI exit codes: one line, no traceback. 0 ok, 1 failed, 2 usage."""
import os
import subprocess
import sys




def run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=300)
    return p.returncode, p.stdout, p.stderr


def one_clean_line(err: str):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def test_malformed_data_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t3\t4\n1\t2\n")
    rc, _, err = run("train", "--data", str(bad), "--epochs", "1")
    assert rc == 1
    assert f"{bad}:2:" in one_clean_line(err)


def test_unknown_export_target_is_a_usage_error(tiny_teacher):
    rc, _, err = run("export", str(tiny_teacher.path), "--target", "tflite-int4")
    assert rc == 2
    assert "export formats" in one_clean_line(err)


def test_unknown_bench_target_is_a_usage_error(tiny_teacher):
    rc, _, err = run("bench", str(tiny_teacher.path), "--target", "pi-zero")
    assert rc == 2
    assert "unknown bench target" in one_clean_line(err)


def test_missing_artifact_is_one_line(tmp_path):
    rc, _, err = run("export", str(tmp_path / "nope"), "--target", "onnx-fp32")
    assert rc == 1
    assert "not an artifact" in one_clean_line(err)


def test_unknown_option_is_a_usage_error():
    rc, _, err = run("train", "--epochz", "3")
    assert rc == 2
    assert "--epochz" in one_clean_line(err)


def test_bad_target_file_names_the_field(tmp_path, tiny_teacher):
    t = tmp_path / "bad.toml"
    t.write_text('kind = "local"\nthreads = 0\n')
    rc, _, err = run("bench", str(tiny_teacher.path), "--target", str(t))
    assert rc == 1  # "failed": the bench cannot start with this target file
    assert "'threads'" in one_clean_line(err)


def test_list_commands():
    rc, out, _ = run("list", "models")
    assert rc == 0 and "sasrec-student" in out
    rc, out, _ = run("list", "formats")
    assert rc == 0 and all(f in out for f in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"))


def test_data_convert_and_stats(tmp_path):
    dest = tmp_path / "seq.txt"
    rc, out, _ = run("data", "convert", str(dest), "--synthetic", "users=30", "--synthetic", "items=20",
                     "--synthetic", "tastes=2")
    assert rc == 0 and dest.is_file()
    rc, out, _ = run("data", "stats", "--data", str(dest), "--format", "sasrec")
    assert rc == 0 and '"users": 30' in out
    rc, _, err = run("data", "stats", "--synthetic", "colour=blue")
    assert rc == 2 and "colour" in one_clean_line(err)


def test_error_text_with_brackets_is_printed_as_is(tmp_path):
    d = tmp_path / "[/tmp/x]"
    rc, _, err = run("export", str(d / "nope"), "--target", "onnx-fp32")
    assert rc == 1
    assert "[/tmp/x]" in one_clean_line(err)


def test_distill_with_two_teachers_and_combined_losses(tiny_teacher, tmp_path):
    rc, out, err = run("distill", "--teacher", str(tiny_teacher.path), "--teacher", str(tiny_teacher.path),
                       "--teacher-weight", "3", "--teacher-weight", "1", "--loss", "kl+hint",
                       "--d", "8", "--epochs", "1", "--out", str(tmp_path))
    assert rc == 0, err
    from edgekd.artifact import load_artifact

    a = load_artifact(next(tmp_path.glob("*-student-kd-kl-hint")))
    assert a.card["config"]["distill"]["teacher_weights"] == [3.0, 1.0]
    assert len(a.card["parent"]) == 2


def test_unknown_distillation_loss_is_a_usage_error(tiny_teacher, tmp_path):
    rc, _, err = run("distill", str(tiny_teacher.path), "--loss", "kl+dark", "--out", str(tmp_path))
    assert rc == 2
    assert "unknown distillation loss 'dark'" in one_clean_line(err)


def test_prune_vocabulary_prints_size_latency_and_the_unknown_item_policy(tiny_student, tmp_path):
    rc, out, err = run("prune", str(tiny_student.path), "--method", "vocabulary", "--coverage", "0.8",
                       "--unknown", "oov", "--out", str(tmp_path), "--name", "v80")
    assert rc == 0, err
    assert out.strip().endswith("v80")  # stdout: the artifact; the summary goes to stderr
    assert "items kept" in err and "latency (torch, batch 1, 1 thread(s), local CPU): p50" in err
    import json

    vocab = json.loads((tmp_path / "v80" / "vocab.json").read_text())
    assert vocab["unknown_items"] == "oov"
    rc, _, err = run("prune", str(tiny_student.path), "--method", "vocabulary", "--unknown", "drop",
                     "--out", str(tmp_path))
    assert rc == 2 and "unknown must be one of skip, oov" in one_clean_line(err)
