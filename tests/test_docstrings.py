"""Every docstring example in the package runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest
from conftest import free_compiled_programs

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
    # each package module compiles its own examples: free them before the next module (this
    # test alone otherwise grows one worker past 2 GB)
    free_compiled_programs()
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
