"""The base install without its optional extras: no module imports pyarrow, matplotlib or scipy
when it is imported; data files are read line by line without [large] (pyarrow), with one
notice for a big file; reports and search write tables without [report] (matplotlib), with a
one-line notice where the charts would be."""
from __future__ import annotations

import html
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDWarning

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("pyarrow", "matplotlib", "scipy")

# Run in a child: these imports fail, and find_spec finds nothing, as if the packages were not
# installed.
BLOCK = """
import sys
sys.modules.update(dict.fromkeys({blocked!r}))
"""


def run_without(code: str, blocked=EXTRAS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=set(blocked)) + code], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_no_module_imports_an_optional_extra_when_it_is_imported():
    """Every edgekd module but the pyarrow fast path itself (and __main__, which runs the CLI)
    imports without the three."""
    code = """
import pkgutil, importlib, edgekd
names = [m.name for m in pkgutil.walk_packages(edgekd.__path__, "edgekd.") if m.name not in ("edgekd.data_arrow", "edgekd.__main__")]
for n in names:
    importlib.import_module(n)
print(len(names), sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in {blocked!r}))
""".format(blocked=set(EXTRAS))
    p = run_without(code)
    assert p.returncode == 0, p.stderr
    count, loaded = p.stdout.split(" ", 1)
    assert int(count) > 20 and loaded.strip() == "[]"


def test_the_floors_need_no_scipy(tiny_ds):
    from edgekd.baselines import baseline_metrics

    code = """
import html
import json
from edgekd.baselines import baseline_metrics
from edgekd.data import DataSpec, load_data
from tests.conftest import TINY
print(json.dumps(baseline_metrics(load_data(DataSpec(format="synthetic", synthetic=TINY)))))
"""
    p = run_without(code, blocked=("scipy",))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(json.dumps(baseline_metrics(tiny_ds)))


MOVIELENS = "".join(f"{u}\t{i}\t5\t{t}\n" for u in range(1, 9) for t, i in enumerate(range(u, u + 6)))


def test_without_pyarrow_files_are_read_line_by_line_with_one_notice_when_big(tmp_path, monkeypatch):
    from edgekd import data
    from edgekd.data import DataSpec, load_data

    p = tmp_path / "u.data"
    p.write_text(MOVIELENS)
    spec = DataSpec(format="movielens", path=str(p))
    want = load_data(spec, fast=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setattr(data, "_suggested_large", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert load_data(spec).fingerprint() == want.fingerprint()  # small: silently
        assert not seen
        monkeypatch.setattr(data, "LARGE_FILE_BYTES", len(MOVIELENS) - 1)
        for _ in range(3):
            assert load_data(spec).fingerprint() == want.fingerprint()
    assert [w.category for w in seen] == [EdgeKDWarning]  # once, however many files
    msg = str(seen[0].message)
    assert "\n" not in msg and str(p) in msg and "pip install 'edgekd[large]'" in msg


def test_with_pyarrow_a_big_file_needs_no_notice(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from edgekd import data
    from edgekd.data import DataSpec, load_data

    p = tmp_path / "u.data"
    p.write_text(MOVIELENS)
    monkeypatch.setattr(data, "_suggested_large", False)
    monkeypatch.setattr(data, "LARGE_FILE_BYTES", 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_data(DataSpec(format="movielens", path=str(p)))
    assert not seen


def test_the_cli_notice_for_a_big_file_is_one_line(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("".join(f"u{k % 7} {k % 11}\n" for k in range(100)))
    code = f"""
import sys
from edgekd import data
data.LARGE_FILE_BYTES = 10
sys.argv = ["edgekd", "data", "stats", "--data", {str(p)!r}, "--format", "sasrec"]
from edgekd.cli import main
main()
"""
    r = run_without(code, blocked=("pyarrow",))
    assert r.returncode == 0, r.stderr
    notes = [l for l in (r.stdout + r.stderr).splitlines() if "edgekd[large]" in l]
    assert len(notes) == 1 and notes[0].startswith("warning:"), r.stderr


@pytest.fixture
def bench_run(tiny_student, fast_target, tmp_path):
    from edgekd.bench import bench
    from edgekd.targets import load_target

    _, recs = bench([tiny_student], load_target(str(fast_target)), out=tmp_path / "results", users=30)
    assert all(r["status"] == "ok" for r in recs)
    return tmp_path / "results" / recs[0]["run_id"]


NOTICE = "No charts: matplotlib is not installed; charts need `pip install 'edgekd[report]'`."


def test_without_matplotlib_the_report_is_tables_and_one_notice(bench_run, tmp_path, monkeypatch):
    from edgekd.report import build_report

    stale = tmp_path / "out" / "latency_vs_ndcg.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier report's chart")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rep = build_report(bench_run, tmp_path / "out")
    md = rep["text"]
    assert rep["charts"] is False and "tiny-student" in md and "| model |" in md
    assert [l for l in md.splitlines() if "matplotlib" in l] == [
        f"Tables per target: [report.html](report.html). {NOTICE}"]
    assert "![" not in md and not stale.exists()
    page = rep["html"].read_text()
    assert "<img" not in page and "tiny-student" in page and "<table>" in page
    assert html.unescape(page).count("pip install 'edgekd[report]'") == 1
    assert json.loads(rep["json"].read_text())["rows"]


def test_with_matplotlib_the_report_has_its_charts(bench_run, tmp_path):
    pytest.importorskip("matplotlib")
    from edgekd.report import build_report

    rep = build_report(bench_run, tmp_path / "out")
    assert rep["charts"] is True and (tmp_path / "out" / "latency_vs_ndcg.png").is_file()
    assert "edgekd[report]" not in rep["text"] and "<img" in rep["html"].read_text()


def test_report_cli_without_matplotlib(bench_run, tmp_path, monkeypatch, capsys):
    from edgekd import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(sys, "argv", ["edgekd", "report", str(bench_run), "--dest", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert sum("edgekd[report]" in l for l in out.splitlines()) == 1 and "tiny-student" in out
    assert (tmp_path / "r" / "report.md").is_file() and not (tmp_path / "r" / "latency_vs_ndcg.png").exists()


def test_search_page_without_matplotlib_says_why_it_has_no_chart(tmp_path):
    from edgekd.search import SearchConfig, _html

    front = [{"number": 0, "params": {"student": "mlp"}, "user_attrs": {
        "kept": 0.97, "kept_low": 0.91, "p50_ms": 0.1, "speedup_p50": 60.0, "size_bytes": 2048, "size_ratio": 19.0,
        "peak_rss_bytes": 5e7}}]
    page = _html(front, None, {"target": "local-cpu", "conclusion": "nothing chosen"}, None,
                 tmp_path / "search.html", SearchConfig(min_speedup=50, min_smaller=20)).read_text()
    assert "<img" not in page and "pip install &#x27;edgekd[report]&#x27;" in page
    assert "<td>91.0%</td>" in page and "<td>kept bound, size</td>" in page  # how close it came


def test_serve_without_its_extra_names_the_extra_in_one_line(tiny_student):
    code = f"""
import sys
from edgekd.cli import main
sys.argv = ["edgekd", "serve", {str(tiny_student.path)!r}]
main()
"""
    p = run_without(code, blocked=("fastapi",))
    assert p.returncode == 2, p.stderr
    assert "serve extra" in p.stderr and "edgekd[serve]" in p.stderr and "Traceback" not in p.stderr, p.stderr
