"""`import neuraldiffeq` and `neuraldiffeq --help` stay light: JAX loads when a name needs it."""

import ast
import subprocess
import sys
from pathlib import Path

import neuraldiffeq as nde

HEAVY = ("jax", "diffrax", "equinox", "optax", "matplotlib", "tqdm")


def loaded_after(code: str) -> set[str]:
    """The heavy packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))


def test_import_and_help_load_no_heavy_package():
    assert loaded_after("import neuraldiffeq") == set()
    help_only = (
        "from neuraldiffeq.cli import main\n"
        "for argv in (['--help'], ['fit', '--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass"
    )
    assert loaded_after(help_only) == set()
    # a name that needs JAX brings it in
    assert "jax" in loaded_after("import neuraldiffeq as nde; nde.NeuralODE")


def test_every_public_name_resolves_and_type_checkers_see_the_same_names():
    for name in nde.__all__:
        assert getattr(nde, name) is not None, name
    assert nde.datasets.spiral is not None and nde.losses.l2 is not None
    tree = ast.parse(Path(nde.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))  # the TYPE_CHECKING block
    imported = {a.asname or a.name for n in ast.walk(block) for a in getattr(n, "names", [])}
    assert imported == set(nde.__all__)
    try:
        nde.NoSuchName  # noqa: B018
    except AttributeError as err:
        assert "NoSuchName" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
