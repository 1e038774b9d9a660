"""Every docstring example in the package runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest
from conftest import free_compiled_programs_if_large

import neuraldiffeq

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(neuraldiffeq.__path__, prefix="neuraldiffeq.")
    if not name.endswith("__main__")
)


#: Modules whose examples fit or differentiate a model, or solve several models (about 1.8 CPU
#: seconds or more each, mostly compiling): the long tier runs them, as it runs the docs pages'
#: examples; the default run runs every other module's examples (each module's own test file
#: checks what its examples show).
LONG = {
    "neuraldiffeq.datasets.lorenz",
    "neuraldiffeq.datasets.synthetic",
    "neuraldiffeq.demos.bouncing_ball",
    "neuraldiffeq.fitting.checkpoint",
    "neuraldiffeq.fitting.collocation",
    "neuraldiffeq.fitting.elbo",
    "neuraldiffeq.fitting.fit",
    "neuraldiffeq.fitting.likelihood",
    "neuraldiffeq.fitting.loop",
    "neuraldiffeq.fitting.moments",
    "neuraldiffeq.fitting.presets",
    "neuraldiffeq.fitting.series",
    "neuraldiffeq.fitting.shooting",
    "neuraldiffeq.fitting.strategies",
    "neuraldiffeq.fitting.supervised",
    "neuraldiffeq.inference.discovery",
    "neuraldiffeq.models.cde",
    "neuraldiffeq.models.cnf",
    "neuraldiffeq.models.concat_squash",
    "neuraldiffeq.models.dde",
    "neuraldiffeq.models.hamiltonian",
    "neuraldiffeq.models.hybrid",
    "neuraldiffeq.models.latent",
    "neuraldiffeq.models.latent_sde",
    "neuraldiffeq.models.ode",
    "neuraldiffeq.models.odemm",
    "neuraldiffeq.models.sde",
    "neuraldiffeq.models.vae",
    "neuraldiffeq.solve.bdf",
    "neuraldiffeq.solve.config",
    "neuraldiffeq.solve.dde",
    "neuraldiffeq.solve.events",
    "neuraldiffeq.solve.linear",
    "neuraldiffeq.solve.sensitivity",
    "neuraldiffeq.solve.stiffness",
}


def test_long_names_are_modules():
    assert LONG <= set(MODULES), LONG - set(MODULES)


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.long) if m in LONG else m for m in MODULES]
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    # each package module compiles its own examples: free them once they pile up (this test
    # alone otherwise grows one worker to 3 GB)
    free_compiled_programs_if_large()
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
