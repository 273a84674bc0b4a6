"""Every relative link in the repository's Markdown files resolves: the file exists, and an
anchor (#section) names a heading of that file (GitHub's slugs)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "dist", "node_modules", ".pytest_cache"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    """The repository's documents; local output (a run's report.md under benchmarks/results/
    or an artifact under models/) is not, only those folders' own README."""
    def ours(rel: Path) -> bool:
        if SKIP_DIRS.intersection(rel.parts[:-1]) or any(p.endswith(".egg-info") for p in rel.parts):
            return False
        return not ((rel.parts[:2] == ("benchmarks", "results") and len(rel.parts) > 3)
                    or (rel.parts[0] == "models" and len(rel.parts) > 2))
    return sorted(p for p in ROOT.rglob("*.md") if ours(p.relative_to(ROOT)))


def slug(heading: str) -> str:
    s = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def links(path: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text)]


def broken(path: Path) -> list[str]:
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {file or path.name}")
    return bad


def test_there_are_documents_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "CONTRIBUTING.md", "benchmarks/RESULTS.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    assert broken(path) == []


def test_a_broken_link_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    doc.write_text("[ok](there.md) [ok](there.md#a-heading) [web](https://example.org)\n"
                   "`[in code](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n"
                   "[gone](missing.md) [bad anchor](there.md#nope)\n")
    assert broken(doc) == ["missing.md: no such file", "there.md#nope: no heading #nope in there.md"]


def committed_records() -> list[Path]:
    """The JSON records in the study folders (benchmarks/<study>/*.json). benchmarks/results/ is
    local output; aarch64/ writes its own summary shape (run.sh)."""
    return sorted(p for p in (ROOT / "benchmarks").glob("*/*.json")
                  if p.parent.name not in {"results", "aarch64"})


def test_there_are_records():
    assert len(committed_records()) > 10


@pytest.mark.parametrize("path", committed_records(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_records_have_the_standard_shape(path):
    import json

    rec = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(rec, dict) and sorted(rec) == sorted(["command", "commit", "machine", "date", "results"])
    for key in ("command", "commit", "machine"):
        assert isinstance(rec[key], str) and rec[key].strip(), key
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rec["date"])
