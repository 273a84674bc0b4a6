"""CLI exit codes: one line, no traceback. 0 ok, 1 failed, 2 usage."""
import os
from pathlib import Path
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


def test_distill_with_a_teacher_cache_of_some_positions_per_window(tiny_teacher, tmp_path):
    rc, out, err = run("distill", str(tiny_teacher.path), "--teacher-cache", "20", "--cache-positions", "2",
                       "--d", "8", "--epochs", "1", "--out", str(tmp_path), "--name", "cached2")
    assert rc == 0, err
    from edgekd.artifact import load_artifact

    a = load_artifact(tmp_path / "cached2")
    assert a.card["teacher_cache"]["positions_per_window"] == 2
    assert a.card["config"]["distill"]["cache_positions"] == 2


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


# ---------------------------------------------------------------- CLI polish (issue 14)

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

MAIN = ("train", "distill", "export", "quantize", "prune", "bench", "report", "pipeline", "inspect", "serve", "search")


def call(monkeypatch, capsys, *args):
    """The CLI in this process (edgekd.cli.main), for tests that patch something first."""
    from edgekd import cli

    monkeypatch.setattr(sys, "argv", ["edgekd", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    o = capsys.readouterr()
    return e.value.code, o.out, o.err


@pytest.fixture(scope="module")
def help_text():
    from edgekd.docgen import render

    sections = render().split("\n## `")[1:]
    return {s.split("`", 1)[0]: s for s in sections}


def test_version():
    import edgekd

    rc, out, _ = run("--version")
    assert rc == 0 and out.strip() == f"edgekd {edgekd.__version__}"


def test_shell_completion_is_offered(help_text):
    assert "--install-completion" in help_text["edgekd"] and "--show-completion" in help_text["edgekd"]


@pytest.mark.parametrize("what", ["models", "formats", "losses", "recipes", "targets"])
def test_list_json(what):
    rc, out, _ = run("list", what, "--json")
    rows = json.loads(out)
    assert rc == 0 and rows and all(isinstance(r["name"], str) for r in rows)


def test_every_main_command_has_an_example_and_flags_show_no_type(help_text):
    for cmd in MAIN:
        assert f"Example: edgekd {cmd} " in help_text[f"edgekd {cmd}"], cmd
    assert not [k for k, v in help_text.items() if "<bool>" in v]
    assert "--require-gain   " in help_text["edgekd quantize"]


def test_out_is_the_store_results_and_dest_name_the_rest(help_text):
    for cmd in ("train", "distill", "export", "quantize", "prune", "bench", "pipeline", "inspect"):
        line = next(l for l in help_text[f"edgekd {cmd}"].splitlines() if re.match(r"│ [ *]*--out ", l))
        assert "artifact store" in line, cmd
    for cmd in ("bench", "report", "pipeline"):
        assert "│ --results " in help_text[f"edgekd {cmd}"], cmd
    assert "│ --dest " in help_text["edgekd report"] and "│ --out " not in help_text["edgekd report"]
    assert "│ --store" not in help_text["edgekd bench"]


@pytest.fixture(scope="module")
def onnx_export(tiny_student, tiny_ds, store):
    from edgekd.export import export

    return export(tiny_student, "onnx-fp32", store=store, ds=tiny_ds, name="tiny-student-cli-onnx")


def test_inspect_finds_a_store_name(onnx_export, store, tmp_path):
    rc, out, err = run("inspect", onnx_export.name, "--out", str(store), cwd=tmp_path)
    assert rc == 0, err
    info = json.loads(out)
    assert info["artifact"]["name"] == onnx_export.name and info["file"].endswith("model.onnx")
    rc, _, err = run("inspect", "no-such-artifact", "--out", str(store), cwd=tmp_path)
    assert rc == 1 and "not an artifact" in one_clean_line(err)


def test_bench_store_names_results_json_and_report_dest(onnx_export, store, tmp_path, fast_target):
    rc, out, err = run("bench", onnx_export.name, "--out", str(store), "--results", str(tmp_path / "r"),
                       "--target", str(fast_target), "--json", cwd=tmp_path)
    assert rc == 0, err
    got = json.loads(out)
    assert err.splitlines()[0] == f"target fast-cpu: {fast_target}"
    assert Path(got["run_dir"]).parent == tmp_path / "r"
    assert [r["artifact"]["name"] for r in got["records"]] == ["tiny-teacher", onnx_export.name]
    assert all(r["status"] == "ok" for r in got["records"])
    rc, out, err = run("report", got["run_dir"], "--dest", str(tmp_path / "rep"), "--no-html", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "report.json").is_file()
    assert rep == json.loads((tmp_path / "rep" / "report.json").read_text())


def test_bench_a_plain_model_file(onnx_export, tmp_path, fast_target):
    mine = tmp_path / "mine.onnx"
    shutil.copy(onnx_export.file, mine)
    rc, out, err = run("bench", str(mine), "--target", str(fast_target), "--results", str(tmp_path / "r"), "--json")
    assert rc == 0, err
    rec = json.loads(out)["records"][0]
    assert rec["status"] == "ok" and rec["artifact"]["name"] == "mine.onnx"
    assert rec["latency_ms"]["p50_ms"] > 0 and rec["peak_rss_bytes"] > 0 and rec["accuracy"] is None
    rc, _, err = run("report", json.loads(out)["run_dir"])  # no accuracy, no report: said in one line
    assert rc == 2 and "without accuracy" in one_clean_line(err)
    (tmp_path / "x.txt").write_text("hi")
    rc, _, err = run("bench", str(tmp_path / "x.txt"), str(mine), "--target", str(fast_target))
    assert rc != 0 and len([l for l in err.splitlines() if l.startswith("error:")]) == 1


def test_a_plain_file_with_its_vocab_and_data_gets_the_artifacts_accuracy(onnx_export, tiny_ds, tiny_student,
                                                                          tmp_path, fast_target):
    from edgekd.bench import bench, bench_file, plain_file
    from edgekd.targets import load_target

    t = load_target(str(fast_target))
    mine = tmp_path / "mine.onnx"
    shutil.copy(onnx_export.file, mine)
    _, rec = bench_file(plain_file(mine), t, out=tmp_path / "r", ds=tiny_ds, vocab=tiny_student.vocab())
    _, recs = bench([onnx_export], t, out=tmp_path / "r2")
    assert rec["accuracy"]["ndcg@10"] == pytest.approx(recs[-1]["accuracy"]["ndcg@10"])
    other = {**tiny_student.vocab(), "items": list(reversed(tiny_student.vocab()["items"]))}
    from edgekd.errors import ConfigError

    with pytest.raises(ConfigError, match="vocabulary"):
        bench_file(plain_file(mine), t, out=tmp_path / "r3", ds=tiny_ds, vocab=other)


def test_pipeline_recipe_holds_every_setting_and_options_override_it(monkeypatch, capsys, tmp_path):
    from edgekd import pipeline as pl
    from edgekd.data import DataSpec

    cfg = pl.PipelineConfig(data=DataSpec(synthetic={"users": 40, "items": 30}), store=tmp_path / "m",
                            results=tmp_path / "r", maxlen=20, epochs=2, patience=2, seed=4, target="local-cpu",
                            exports=("onnx-fp32", "onnx-int8"))
    recipe = pl.write_recipe(cfg, tmp_path / "pipeline.toml")
    seen = []
    monkeypatch.setattr(pl, "run_pipeline", lambda c, **kw: seen.append(c))
    rc, _, err = call(monkeypatch, capsys, "pipeline", "--config", str(recipe))
    assert rc == 0, err
    assert seen[-1] == cfg
    rc, _, _ = call(monkeypatch, capsys, "pipeline", "--config", str(recipe), "--seed", "9",
                    "--formats", "onnx-fp32,tflite-fp32", "--target", "pi")
    assert (seen[-1].seed, seen[-1].exports, seen[-1].target, seen[-1].epochs) == \
        (9, ("onnx-fp32", "tflite-fp32"), "pi", 2)
    recipe.write_text("colour = 'blue'\n" + recipe.read_text())
    rc, _, err = call(monkeypatch, capsys, "pipeline", "--config", str(recipe))
    assert rc == 2 and "'colour' is not a pipeline setting" in one_clean_line(err)




@pytest.mark.slow
def test_prune_max_bytes_takes_a_size_and_says_what_it_kept(tiny_student, tmp_path):
    import shutil

    shutil.copytree(tiny_student.path, tmp_path / "s")
    rc, _, err = run("prune", str(tmp_path / "s"), "--method", "vocabulary", "--max-bytes", "lots")
    assert rc == 2 and "'lots' is not a size" in err and "Traceback" not in err
    rc, _, err = run("prune", str(tmp_path / "s"), "--max-bytes", "1MB")
    assert rc == 2 and "--method vocabulary" in one_clean_line(err)
    rc, out, err = run("prune", str(tmp_path / "s"), "--method", "vocabulary", "--max-bytes", "1.2kB",
                       "--budget-precision", "int8", "--out", str(tmp_path), "--rounds", "2")
    assert rc == 0, err
    assert "at int8, budget 1,200)" in out + err and out.strip().endswith("tiny-student-vocab-1200B-int8")
