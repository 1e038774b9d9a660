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


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    # each package module compiles its own examples: free them once they pile up (this test
    # alone otherwise grows one worker to 3 GB)
    free_compiled_programs_if_large()
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
