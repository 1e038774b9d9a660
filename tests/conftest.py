import ctypes
import gc
import os
import tempfile

import jax
import matplotlib
import pytest

matplotlib.use("Agg")


def pytest_configure(config):
    """Compiled programs go to a cache that outlives the session (under .pytest_cache, or
    $NEURALDIFFEQ_CACHE_DIR if set): a second run of a module loads its steps instead of
    compiling them again. The CLI tests' subprocesses inherit the variable."""
    from neuraldiffeq.cache import CACHE_DIR_VARIABLE, enable_compilation_cache

    if not os.environ.get(CACHE_DIR_VARIABLE):
        cache = getattr(config, "cache", None)  # None under `-p no:cacheprovider`
        folder = cache.mkdir("jax-compilation") if cache else tempfile.mkdtemp(prefix="nde-jax-")
        os.environ[CACHE_DIR_VARIABLE] = str(folder)
    enable_compilation_cache(os.environ[CACHE_DIR_VARIABLE])


try:  # glibc keeps freed heap pages mapped; malloc_trim hands them back to the system
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def free_compiled_programs() -> None:
    """Drop every compiled program and return the freed memory to the system."""
    jax.clear_caches()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


@pytest.fixture(autouse=True, scope="module")
def _free_after_each_module():
    """A worker otherwise keeps every executable of the suite alive, and two workers then need
    over 4 GB; modules rarely share compiled programs, so each frees its own when done."""
    yield
    free_compiled_programs()
