import gc

import jax
import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop each module's compiled programs when it is done: a worker otherwise keeps every
    executable of the suite alive, and two workers then need over 4 GB."""
    yield
    jax.clear_caches()
    gc.collect()
