"""The CLI reference, generated from the --help of every command:

    python -m edgekd.docgen > docs/cli.md

tests/test_docgen.py regenerates it and fails when docs/cli.md is stale. The output is fixed:
100 columns, no colour, whatever terminal runs it."""
from __future__ import annotations

import re
import sys

ENV = {"COLUMNS": "100", "LINES": "50", "TERMINAL_WIDTH": "100", "NO_COLOR": "1", "TERM": "dumb",
       "FORCE_COLOR": None, "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
HEADER = """# edgekd command line reference

Generated from each command's `--help` by `python -m edgekd.docgen > docs/cli.md`; do not edit
by hand (`tests/test_docgen.py` fails when this file is stale).
"""


def _walk(cmd, path=()):
    if getattr(cmd, "hidden", False):
        return
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, path + (name,))


def render() -> str:
    from typer.main import get_command
    from typer.testing import CliRunner

    from .cli import app

    runner = CliRunner()
    parts = [HEADER]
    for path, _ in _walk(get_command(app)):
        r = runner.invoke(app, [*path, "--help"], prog_name="edgekd", env=ENV, color=False, terminal_width=100)
        if r.exit_code != 0:
            raise RuntimeError(f"edgekd {' '.join(path)} --help failed: {r.output}")
        text = "\n".join(line.rstrip() for line in r.output.splitlines()).strip("\n")
        text = re.sub(r"\n{3,}", "\n\n", text)
        parts.append(f"## `edgekd{' ' if path else ''}{' '.join(path)}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
