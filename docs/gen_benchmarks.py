"""mkdocs hook: fills the generated parts of the site at build time, so none of it is typed by hand.

- `benchmarks.md`: the marker `<!-- benchmarks -->` becomes `benchmarks/RESULTS.md` followed by
  every result file the benchmark scripts wrote under `benchmarks/results/` (Markdown included as
  it is, CSV as a table, JSON as a code block), headings demoted one level so that the page keeps
  one title.
- `api/cli.md`: each marker `<!-- cli-help: demo spiral -->` becomes the `--help` text of that
  command, taken from the argparse parser the `neuraldiffeq` command itself uses.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
_CLI_MARKER = re.compile(r"<!-- cli-help:([^>]*)-->")


def _demote(markdown: str) -> str:
    """Push every ATX heading down one level (outside code fences)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def _csv_table(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def benchmarks_markdown() -> str:
    """RESULTS.md, then each result file; Markdown files bring their own heading."""
    parts = [_demote((BENCHMARKS / "RESULTS.md").read_text()), "*From `benchmarks/RESULTS.md`.*"]
    for path in sorted((BENCHMARKS / "results").glob("*")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if path.suffix == ".md":
            parts += [_demote(text), f"*From `{rel}`.*"]
        elif path.suffix == ".csv":
            parts += [f"## `{rel}`", _csv_table(text)]
        elif path.suffix == ".json":
            parts += [f"## `{rel}`", "```json\n" + json.dumps(json.loads(text), indent=2) + "\n```"]
    return "\n\n".join(parts) + "\n"


def cli_help(command: str) -> str:
    from neuraldiffeq.cli import build_parser

    parser = build_parser()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        parser.parse_args([*command.split(), "--help"])
    return "```text\n" + buf.getvalue().rstrip() + "\n```"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "benchmarks.md":
        markdown = markdown.replace("<!-- benchmarks -->", benchmarks_markdown())
    return _CLI_MARKER.sub(lambda m: cli_help(m.group(1).strip()), markdown)


def on_serve(server, config, builder):
    server.watch(str(BENCHMARKS / "RESULTS.md"))
    server.watch(str(BENCHMARKS / "results"))
    return server
