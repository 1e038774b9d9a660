"""The package as published: one version, its metadata, and (long tier) a built wheel and sdist
that pass `twine check`, install into a fresh virtual environment and run a demo there."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import neuraldiffeq

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_defined_once_and_read_by_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "neuraldiffeq._version.__version__"}
    assert neuraldiffeq.__version__ == "0.2.0"
    assert f"## {neuraldiffeq.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "src" / "neuraldiffeq" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["neuraldiffeq"]


def run(command, **kwargs):
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.long
def test_wheel_and_sdist_build_check_install_and_run(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], timeout=900)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name.startswith(f"neuraldiffeq-{neuraldiffeq.__version__}-")
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], timeout=300)
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("py.typed", "datasets/data/hudson_bay_lynx_hare.csv", "io/csv.py"):
        assert f"neuraldiffeq/{part}" in names, part
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("LICENSE") for n in names)
    sdist_names = tarfile.open(sdist).getnames()
    for part in ("LICENSE", "CHANGELOG.md", "src/neuraldiffeq/py.typed"):
        assert any(n.endswith(part) for n in sdist_names), part

    # A fresh environment that sees this one's installed packages for the dependencies (nothing
    # is downloaded) but not its neuraldiffeq. Where the suite runs against a regular install
    # (CI's `pip install .`), the site folder holds neuraldiffeq itself, and pip would call the
    # wheel "already satisfied" and install nothing; so the venv sees a folder of links to every
    # entry of the site folders except neuraldiffeq's own. Plain folders on the path: their .pth
    # files (an editable install's hook) do not run. pip resolves the wheel's declared
    # dependencies against them.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    visible = tmp_path / "visible_packages"
    visible.mkdir()
    others = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    for folder in others:
        for entry in Path(folder).iterdir():
            own = entry.name.lower().replace("-", "_")
            if "neuraldiffeq" in own or entry.suffix == ".pth" or (visible / entry.name).exists():
                continue
            (visible / entry.name).symlink_to(entry)
    Path(purelib.strip(), "_test_env_packages.pth").write_text(f"{visible}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree either
    run([str(python), "-m", "pip", "install", "--no-index", str(wheel)], env=env, timeout=600)
    work = tmp_path / "elsewhere"  # not the repository: its src/ must not be importable
    work.mkdir()
    where = run(
        [
            str(python),
            "-c",
            "import neuraldiffeq as nde, pathlib; p = pathlib.Path(nde.__file__).parent; "
            "print(p); print((p / 'py.typed').is_file()); "
            "print(nde.datasets.lynx_hare().ys.shape, nde.__version__)",
        ],
        cwd=work,
        env=env,
        timeout=300,
    ).split("\n")
    assert where[0].startswith(str(venv)), f"imported from {where[0]}, not the wheel"
    assert where[1] == "True" and where[2] == f"(21, 2) {neuraldiffeq.__version__}"
    run(
        [str(venv / "bin" / "neuraldiffeq"), "demo", "spiral", "--steps", "5", "--out", "spiral"],
        cwd=work,
        env=env,
        timeout=600,
    )
    assert (work / "spiral" / "model.eqx").is_file() and (work / "spiral" / "fit.png").is_file()
