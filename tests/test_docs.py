"""The documentation site builds without a warning, and its examples are valid Python.

The site (mkdocs.yml, docs/) is built with `mkdocs build --strict`, which fails on a broken link,
a missing picture or an API reference that does not resolve. The docs packages are in the `test`
extra, so a missing mkdocs is an installation problem and fails rather than skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import neuraldiffeq

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# A fenced block marked `python` is a runnable example; shell commands and output use other tags.
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _python_blocks():
    for page in PAGES:
        for i, match in enumerate(_PYTHON_BLOCK.finditer(page.read_text())):
            yield pytest.param(page, match.group(1), id=f"{page.relative_to(ROOT)}#{i}")


def test_site_builds_strict(tmp_path):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings_handlers.python  # noqa: F401
    except ImportError as e:
        pytest.fail(
            f"the docs toolchain is not installed ({e}); install it with "
            '`pip install ".[docs]"` (it is also part of the `test` extra).'
        )
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    site = tmp_path / "site"
    # The pages that matter are there, with their generated content and pictures.
    assert "neuraldiffeq" in (site / "index.html").read_text()
    assert (site / "spiral_fit.png").is_file()
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- benchmarks -->" not in benchmarks and "test_margins.md" in benchmarks
    cli = (site / "api" / "cli" / "index.html").read_text()
    assert "usage: neuraldiffeq fit" in cli
    assert 'id="neuraldiffeq.NeuralODE"' in (site / "api" / "models" / "index.html").read_text()


@pytest.mark.parametrize("page, code", list(_python_blocks()))
def test_python_examples_are_valid_python(page, code):
    compile(code, str(page), "exec")


def test_every_public_name_has_an_api_entry():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: neuraldiffeq\.(\w+)\s*$", page.read_text(), re.M))
    missing = sorted(set(neuraldiffeq.__all__) - documented)
    assert not missing, f"add `::: neuraldiffeq.NAME` to a page under docs/api/ for {missing}"


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install ".[test]" && pytest -n 2 -q'
    assert command in ci and command in (ROOT / "README.md").read_text()
