"""The tiny synthetic pipeline end to end: train, distil (KD and no-KD), export x4, bench, report."""
import json

import pytest

from tests.conftest import TINY


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from edgekd.data import DataSpec
    from edgekd.pipeline import PipelineConfig, run_pipeline

    root = tmp_path_factory.mktemp("pipe")
    target = root / "fast.toml"
    target.write_text('kind = "local"\nthreads = 1\nwarmup = 2\nmin_runs = 20\nmin_seconds = 0.05\n')
    cfg = PipelineConfig(data=DataSpec(synthetic=TINY), store=root / "models", results=root / "results",
                         maxlen=20, epochs=2, patience=2, target=str(target))
    return cfg, run_pipeline(cfg)


def test_every_stage_produced_its_output(result):
    cfg, r = result
    names = {rec["artifact"]["name"] for rec in r["records"] if rec["status"] == "ok"}
    assert names == {"synthetic-teacher", "synthetic-student-kd", "synthetic-student-nokd",
                     *(f"synthetic-student-kd-{f}" for f in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"))}
    assert (r["run_dir"] / "report.md").is_file()
    assert len(list(r["run_dir"].glob("*__*.json"))) == 7


def test_every_stage_reports_its_peak_memory(result):
    from edgekd.pipeline import MEMORY_FILE

    cfg, r = result
    memory = json.loads((r["run_dir"] / MEMORY_FILE).read_text())
    assert memory == r["memory"]
    saved = memory["stages"]
    assert memory["peak_rss_mb"] == max([v["peak_rss_mb"] for v in saved.values()]
                                        + [memory["child_processes_peak_rss_mb"]])
    assert memory["child_processes_peak_rss_mb"] > 10  # the bench's runner processes
    assert list(saved) == ["data", "teacher", "student (kd on)", "student (kd off)",
                           *(f"export {f}" for f in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")),
                           "bench", "report"]
    from edgekd.pipeline import StagePeaks

    how = "this stage" if StagePeaks._reset() else "the process so far"  # no /proc/self/clear_refs: so far
    assert all(v["measured"] == how and 10 < v["peak_rss_mb"] < 8192 for v in saved.values())


def test_a_stage_peak_is_its_own_not_the_processs(tmp_path):
    """The high-water mark is reset per stage: a small stage after a big one reads small."""
    import numpy as np

    from edgekd.pipeline import StagePeaks

    p = StagePeaks()
    with p.stage("big"):
        a = np.ones(300 * 2**20 // 8)  # 300 MB touched
        del a
    with p.stage("small"):
        pass
    if p.peaks["small"]["measured"] != "this stage":
        pytest.skip("no per-stage peak on this OS (no /proc/self/clear_refs)")
    assert p.peaks["big"]["peak_rss_mb"] > p.peaks["small"]["peak_rss_mb"] + 250
    assert "big" in p.line() and "child processes" in p.line()


def test_bench_records_have_latency_memory_size_accuracy_and_deltas(result):
    _, r = result
    teacher = next(rec for rec in r["records"] if rec["artifact"]["stage"] == "teacher")
    assert teacher["vs_teacher"]["speedup_p50"] == pytest.approx(1.0)
    for rec in r["records"]:
        lat = rec["latency_ms"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["runs"] >= 20
        assert rec["peak_rss_bytes"] >= rec["baseline_rss_bytes"] > 0
        assert rec["size_bytes"] > 0 and rec["threads"] == 1
        assert 0 <= rec["accuracy"]["ndcg@10"] <= rec["accuracy"]["hr@10"] <= 1
        assert set(rec["vs_teacher"]) >= {"ndcg@10_rel", "speedup_p50", "size_ratio"}


def test_bench_accuracy_comes_from_the_file_itself(result):
    """The fp32 exports rank like their torch parent; the torch student's bench accuracy equals
    the figure computed at training time on the same test split."""
    _, r = result
    by = {rec["artifact"]["name"]: rec for rec in r["records"]}
    kd = by["synthetic-student-kd"]
    assert kd["accuracy"]["ndcg@10"] == pytest.approx(r["students"]["on"].metrics["test_ndcg@10"], abs=1e-6)
    for fmt in ("onnx-fp32", "tflite-fp32"):
        assert by[f"synthetic-student-kd-{fmt}"]["accuracy"]["ndcg@10"] == pytest.approx(
            kd["accuracy"]["ndcg@10"], abs=2e-3)


def test_report_is_built_from_the_records(result):
    _, r = result
    md = r["report"]["text"]
    for name in ("synthetic-teacher", "synthetic-student-nokd", "synthetic-student-kd-tflite-int8"):
        assert name in md
    rows = json.loads(r["report"]["json"].read_text())["rows"]
    assert len(rows) == 7


def test_resume_reuses_finished_artifacts(result):
    from dataclasses import replace

    from edgekd.pipeline import run_pipeline

    cfg, r = result
    lines = []

    class Say:
        def print(self, *a, **k):
            lines.append(" ".join(map(str, a)))

    again = run_pipeline(replace(cfg, resume=True), console=Say())
    assert again["teacher"].sha256 == r["teacher"].sha256
    assert sum(l.startswith("reusing") for l in lines) == 7


def test_html_report_is_self_contained_with_charts(result):
    import re

    pytest.importorskip("matplotlib", reason="charts are the [report] extra")
    _, r = result
    page = r["report"]["html"].read_text()
    assert page.startswith("<!doctype html>")
    assert page.count("<img ") == 3  # latency-vs-NDCG with its Pareto front, size, memory
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3  # images inlined
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    assert page.index("synthetic-teacher") < page.index("synthetic-student-kd-onnx-fp32")
    text = re.sub(r"<[^>]+>", " ", re.sub(r"src='data:[^']*'", "", page))
    assert not re.search(r"\bNone\b", text)  # a missing device figure is left out, not printed as None


def test_the_teacher_has_a_colour_no_other_model_has():
    pytest.importorskip("matplotlib", reason="charts are the [report] extra")
    from matplotlib.colors import to_rgb

    from edgekd.report import _colour

    teacher = to_rgb(_colour(0, True))
    others = [to_rgb(_colour(i, False)) for i in range(12)]
    assert all(sum(abs(a - b) for a, b in zip(teacher, o)) > 0.6 for o in others)
    assert not any(o[0] > 0.6 and o[1] < 0.3 and o[2] < 0.3 for o in others)  # no red beside a red teacher


def test_pareto_front():
    from edgekd.report import pareto_front

    pts = [(1.0, 0.5), (2.0, 0.6), (1.5, 0.4), (3.0, 0.6), (0.5, 0.1)]
    assert pareto_front(pts) == [4, 0, 1]


def test_resume_after_an_interrupted_bench_keeps_finished_cells(result, tmp_path):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    cfg, r = result
    arts = [r["students"]["on"], *r["exports"]]
    target = load_target(cfg.target)
    seen = []

    def interrupt(rec):
        seen.append(rec)
        if len(seen) == 3:
            raise KeyboardInterrupt

    import pytest
    with pytest.raises(KeyboardInterrupt):
        bench(arts, target, out=tmp_path, teacher=r["teacher"], run_id="run1", on_result=interrupt)
    finished = {p.name: p.read_text() for p in (tmp_path / "run1").glob("*__*.json")}
    assert len(finished) == 3
    assert not list((tmp_path / "run1").glob("*.npz"))  # derived inputs removed even on Ctrl-C
    run_dir, recs = bench(arts, target, out=tmp_path, teacher=r["teacher"], resume=True)
    assert run_dir.name == "run1"
    assert sum(bool(x.get("resumed")) for x in recs) == 3
    assert len(recs) == 1 + len(arts) and all(x["status"] == "ok" for x in recs)
    for name, text in finished.items():  # kept exactly as written
        assert (run_dir / name).read_text() == text


def test_resume_reuses_only_what_was_made_from_the_same_inputs(tmp_path):
    from edgekd.artifact import save_artifact
    from edgekd.pipeline import _reusable

    vocab = {"items": ["a", "b"]}

    def make(name, fp, parent=None, config=None):
        card = {"stage": "student", "format": "torch", "dataset": {"fingerprint": fp, "items": 2},
                "parent": [parent.lineage()] if parent else [], "config": config or {}}
        return save_artifact(tmp_path, name, "w.bin", lambda p: p.write_bytes(name.encode()), card, vocab)

    teacher = make("t", "fp1", config={"train": {"epochs": 2}})
    other = make("t2", "fp1", config={"train": {"epochs": 3}})
    make("s", "fp1", parent=teacher, config={"distill": {"kd": "on"}})
    assert _reusable(tmp_path, "t", fingerprint="fp1", config={"train": {"epochs": 2}}).name == "t"
    assert _reusable(tmp_path, "t", fingerprint="fp2", config={"train": {"epochs": 2}}) is None  # other data
    assert _reusable(tmp_path, "t", fingerprint="fp1", config={"train": {"epochs": 3}}) is None  # other settings
    assert _reusable(tmp_path, "s", fingerprint="fp1", parent=teacher, config={"distill": {"kd": "on"}}).name == "s"
    assert _reusable(tmp_path, "s", fingerprint="fp1", parent=other, config={"distill": {"kd": "on"}}) is None
    assert _reusable(tmp_path, "s", fingerprint="fp1", parent=teacher) is not None  # an export checks no config
    assert _reusable(tmp_path, "missing", fingerprint="fp1") is None


def test_each_run_writes_a_recipe_that_repeats_it(result):
    from dataclasses import replace

    from edgekd.pipeline import PipelineConfig, read_recipe

    cfg, r = result
    recipe = r["run_dir"] / "pipeline.toml"
    assert PipelineConfig(**read_recipe(recipe)) == replace(cfg, resume=False)


def test_without_the_tflite_extra_the_pipeline_skips_tflite_formats(result, monkeypatch, capsys):
    from dataclasses import replace

    from edgekd import extras
    from edgekd.pipeline import PipelineConfig, read_recipe, run_pipeline

    monkeypatch.setattr(extras, "tflite_available", lambda: False)
    cfg, _ = result
    r = run_pipeline(replace(cfg, exports=("onnx-fp32", "tflite-fp32"), resume=True))  # the trainings are reused
    said = capsys.readouterr().out
    notice = [l for l in said.splitlines() if l.startswith("skipping")]
    assert notice == ["skipping tflite-fp32: TFLite conversion is not installed; install the extra: "
                      "pip install 'edgekd[tflite]'"]
    assert [e.card["format"] for e in r["exports"]] == ["onnx-fp32"]
    assert PipelineConfig(**read_recipe(r["run_dir"] / "pipeline.toml")).exports == ("onnx-fp32",)


def test_without_matplotlib_the_pipeline_reports_tables_and_one_notice(result, monkeypatch, capsys):
    import sys
    from dataclasses import replace

    from edgekd.pipeline import run_pipeline

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the [report] extra were not installed
    cfg, _ = result
    r = run_pipeline(replace(cfg, exports=("onnx-fp32",), resume=True))  # the trainings are reused
    said = capsys.readouterr().out
    assert [l for l in said.splitlines() if "edgekd[report]" in l] == [
        "Tables per target: [report.html](report.html). No charts: matplotlib is not installed; charts need "
        "`pip install 'edgekd[report]'`."]
    assert "synthetic-student-kd-onnx-fp32" in r["report"]["text"] and r["report"]["charts"] is False
    assert not (r["run_dir"] / "latency_vs_ndcg.png").exists() and "<img" not in r["report"]["html"].read_text()
