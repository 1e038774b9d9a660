"""The documentation site builds without a warning, and its examples run.

The site (mkdocs.yml, docs/) is built with `mkdocs build --strict`, which fails on a broken link,
a missing picture or an API reference that does not resolve. The docs packages are in the `test`
extra, so a missing mkdocs is an installation problem and fails rather than skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import neuraldiffeq

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# A fenced block marked `python` is a runnable example; shell commands and output use other tags.
# A `python` block with a title (`python title="train.py, ..."`) is a script meant for another
# setting (several processes): it is compiled but not run here (tests/test_multihost.py runs it).
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ANY_PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _python_blocks():
    for page in PAGES:
        for i, match in enumerate(_ANY_PYTHON_BLOCK.finditer(page.read_text())):
            yield pytest.param(page, match.group(1), id=f"{page.relative_to(ROOT)}#{i}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with `mkdocs build --strict`."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings_handlers.python  # noqa: F401
    except ImportError as e:
        pytest.fail(
            f"the docs toolchain is not installed ({e}); install it with "
            '`pip install ".[docs]"` (it is also part of the `test` extra).'
        )
    out = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_site_builds_strict(site):
    # The pages that matter are there, with their generated content and pictures.
    assert "neuraldiffeq" in (site / "index.html").read_text()
    assert (site / "spiral_fit.png").is_file()
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- benchmarks -->" not in benchmarks and "test_margins.md" in benchmarks
    cli = (site / "api" / "cli" / "index.html").read_text()
    assert "usage: neuraldiffeq fit" in cli
    assert 'id="neuraldiffeq.NeuralODE"' in (site / "api" / "models" / "index.html").read_text()


# The rendered pages, in the long tier (a browser start and its render wait each, mostly wall
# time); the default run builds the site strictly (test_site_builds_strict)
@pytest.mark.long
@pytest.mark.parametrize(
    "page",
    ["index.html", "tutorials/collocation/index.html", "tutorials/neural-cde/index.html"],
)
def test_pages_render_in_headless_chromium(site, page, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip(
            "headless rendering needs Debian's `chromium` package (apt-get install chromium)"
        )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            (site / page).as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = matplotlib.image.imread(shot)[..., :3]
    background = pixels[-1, -1]
    ink = np.any(np.abs(pixels - background) > 0.1, axis=-1)
    # The header bar (top 48 px) is coloured; below it, navigation, text and pictures put ink on
    # about 5% of the window (a blank or header-only page: 0%).
    assert ink[:40].mean() > 0.5, f"{page}: no header bar"
    body = ink[60:].mean()
    assert body > 0.02, f"{page} rendered nearly blank below the header ({body:.1%} ink)"


@pytest.mark.long  # a browser run, as the rendered pages above
def test_formulas_render_offline_with_the_vendored_katex(site):
    """The neural-CDE page's formulas are typeset by the KaTeX copy in docs/javascripts/katex
    (no network: the page is opened from disk), not left as raw `$$ ... $$` source."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip(
            "headless rendering needs Debian's `chromium` package (apt-get install chromium)"
        )
    page = site / "tutorials" / "neural-cde" / "index.html"
    assert not re.search(r"<script[^>]+src=\"https?://[^\"]*katex", page.read_text())
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # KaTeX replaces each \[ ... \] of arithmatex with its own markup
    assert 'class="katex-display"' in dom and 'class="katex-html"' in dom
    visible = re.sub(r"<annotation.*?</annotation>", "", dom, flags=re.S)
    assert "\\mathrm{d}z" not in visible and "$$" not in visible


@pytest.mark.parametrize("page, code", list(_python_blocks()))
def test_python_examples_are_valid_python(page, code):
    compile(code, str(page), "exec")


# The short version of a long-running example: every `steps=N` (and `lbfgs_steps=N`) becomes 2,
# so each fit costs its compilations and two steps; nothing else in the code changes.
_STEPS = re.compile(r"\b((?:lbfgs_)?steps|warmup|samples)=[0-9_]+")


def short_version(code: str) -> str:
    """The example with its step, warm-up and sample counts cut to 2 (see `_STEPS`)."""
    return _STEPS.sub(r"\1=2", code)


def _pages_with_examples():
    seen = set()  # the getting-started page repeats the README's example: run it once
    for page in PAGES:
        blocks = tuple(_PYTHON_BLOCK.findall(page.read_text()))
        if blocks and blocks not in seen:
            seen.add(blocks)
            yield pytest.param(page, id=str(page.relative_to(ROOT)))


@pytest.mark.long
@pytest.mark.parametrize("page", list(_pages_with_examples()))
def test_python_examples_run(page, tmp_path, monkeypatch):
    """A page's `python` blocks run in order in one namespace, as a reader pastes them."""
    import jax

    monkeypatch.chdir(tmp_path)  # examples save files (model.eqx, ...) in the working folder
    (tmp_path / "data.csv").write_text(  # the file the CSV tutorial reads
        (ROOT / "src/neuraldiffeq/datasets/data/hudson_bay_lynx_hare.csv").read_text()
    )
    namespace: dict = {"__name__": "__docs_example__"}
    x64 = jax.config.jax_enable_x64
    try:
        for i, match in enumerate(_PYTHON_BLOCK.finditer(page.read_text())):
            code = short_version(match.group(1))
            exec(compile(code, f"{page.name} block {i}", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", x64)  # the FAQ's example switches float64 on


def test_short_version_cuts_only_step_counts():
    code = 'nde.fit(m, d, "auto", steps=600, lbfgs_steps=1_000)\nn_steps=5 # steps=300'
    assert (
        short_version(code) == 'nde.fit(m, d, "auto", steps=2, lbfgs_steps=2)\nn_steps=5 # steps=2'
    )


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
