"""docs/cli.md is generated from the CLI's --help (python -m edgekd.docgen > docs/cli.md)."""
import os
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_up_to_date():
    from edgekd.docgen import render

    assert DOC.read_text() == render(), "docs/cli.md is stale: run `python -m edgekd.docgen > docs/cli.md`"


def test_the_reference_does_not_depend_on_the_terminal():
    """The module as a script gives the same text on a narrow colour terminal."""
    env = {**os.environ, "COLUMNS": "40", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    p = subprocess.run([sys.executable, "-m", "edgekd.docgen"], capture_output=True, text=True, env=env,
                       timeout=120, check=True)
    assert p.stdout == DOC.read_text()
    assert "\x1b[" not in p.stdout and "## `edgekd pipeline`" in p.stdout
