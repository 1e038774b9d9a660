import contextlib
import ctypes
import gc
import os
import resource
import tempfile

import jax
import matplotlib
import pytest

matplotlib.use("Agg")


# Most of the suite's time is XLA compiling many small programs that then run for milliseconds;
# LLVM's optimisation passes cost more there than they save. No fast-math, but round-off may
# differ (sums vectorised in another order): a test must not hang on one chaotic path.
# Also off: hoisting loop-invariant code out of while loops (the costliest HLO pass on a diffrax
# solve's nested loops; it moves operations, it does not change them) and LLVM's code generation
# split over threads (both cores are busy with the two workers). Measured on five of the suite's
# programs (float64 gradients of an ODE, DDE, FFJORD and latent SDE solve, a fused fit step):
# 6.0 -> 4.6 CPU s to compile, the same run times. Benchmarks, demos and users keep XLA's defaults.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false "
    "--xla_disable_hlo_passes=while-loop-invariant-code-motion "
    "--xla_cpu_parallel_codegen_split_count=1"
)


#: MLIR locations of each lowered operation: this JAX writes the whole Python traceback of every
#: operation into the module it compiles (up to 100 frames); debug information only, the program
#: is the same without it. Off, each operation keeps its innermost user frame as its location.
#: Measured on test_sensitivity_matrix.py + test_latent.py, two runs each: 55.6 -> 53.0 CPU s.
FULL_TRACEBACKS = "JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS"


#: Python's cyclic garbage collector runs every 700 new objects by default; tracing a diffrax
#: solve allocates millions of short-lived objects (each collection also walks everything that
#: survived), so collecting every 100k objects saves CPU time at the same peak memory (figures:
#: benchmarks/RESULTS.md).
GC_THRESHOLD = (100_000, 50, 1000)


def pytest_configure(config):
    """Compiled programs go to a cache that outlives the session (under .pytest_cache, or
    $NEURALDIFFEQ_CACHE_DIR if set): a second run of a module loads its steps instead of
    compiling them again. The CLI tests' subprocesses inherit the variable."""
    gc.set_threshold(*GC_THRESHOLD)
    # before jax starts its backend (at the first computation); subprocesses inherit it. Flags
    # already set for these passes win (e.g. XLA_FLAGS=--xla_llvm_disable_expensive_passes=false
    # runs the suite with XLA's defaults).
    flags = os.environ.get("XLA_FLAGS", "")
    if not any(f.split("=")[0] in flags for f in FAST_COMPILE.split()):
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
    # subprocesses read the variable; this process imported jax already (a value set by the
    # caller wins)
    os.environ.setdefault(FULL_TRACEBACKS, "false")
    jax.config.update(
        "jax_include_full_tracebacks_in_locations",
        os.environ[FULL_TRACEBACKS].lower() in ("1", "true", "yes", "on"),
    )
    from neuraldiffeq.compilation.persistent import CACHE_DIR_VARIABLE, enable_compilation_cache

    if not os.environ.get(CACHE_DIR_VARIABLE):
        cache = getattr(config, "cache", None)  # None under `-p no:cacheprovider`
        folder = cache.mkdir("jax-compilation") if cache else tempfile.mkdtemp(prefix="nde-jax-")
        os.environ[CACHE_DIR_VARIABLE] = str(folder)
    enable_compilation_cache(os.environ[CACHE_DIR_VARIABLE])
    # ...but fit's exported-step cache (`compilation.exported`) stays off in this process:
    # exporting every distinct step costs CPU time on a cold run and the suite rarely fits the
    # same step twice. test_exported.py turns it
    # on per test; subprocesses (test_startup's two-process run, the CLI tests) use it as users do.
    import neuraldiffeq.compilation.exported

    neuraldiffeq.compilation.exported.directory = lambda: None


@contextlib.contextmanager
def _float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
    """float64 for one test (finite-difference checks)."""
    with _float64():
        yield


@pytest.fixture(scope="module")
def x64_module():
    """float64 from the first test that asks for it to the end of its module (its compiled
    programs are shared by the module's tests); a whole module: `pytestmark =
    pytest.mark.usefixtures("x64_module")`."""
    with _float64():
        yield


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


#: A worker frees its compiled programs once it holds more than this much memory: freeing
#: always costs recompilation, never freeing lets two workers outgrow a small machine. At 3 GiB
#: a worker peaks near 3.5 GB (two of them well inside the 24 GB of CI's machines) and the
#: default run spends less time recompiling than at 1 GiB.
FREE_ABOVE_BYTES = 3 << 30


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return None  # not Linux: unknown, so free every time


def free_compiled_programs_if_large() -> None:
    """`free_compiled_programs()` once this process holds over `FREE_ABOVE_BYTES`.

    Freeing after every module costs time too: the next module traces and compiles again what
    they share (JAX's random-number and array-creation programs, diffrax's solver internals; the
    persistent cache then saves only the XLA step), while never freeing lets memory pile up;
    so this frees only above a threshold.
    """
    resident = _resident_bytes()
    if resident is None or resident > FREE_ABOVE_BYTES:
        free_compiled_programs()


@pytest.fixture(autouse=True, scope="module")
def _free_after_each_module():
    """A worker otherwise keeps every executable of the suite alive, and two workers then need
    over 4 GB; so after each module, what has piled up is freed (above `FREE_ABOVE_BYTES`)."""
    yield
    free_compiled_programs_if_large()


@pytest.hookimpl(optionalhook=True)  # xdist may be absent (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """Under `-n N`, whole modules go to one worker (xdist's `--dist loadfile`)."""
    from xdist.scheduler import LoadFileScheduling

    return LoadFileScheduling(config, log)


# The modules that take longest (by `pytest --durations`), longest first. Each module runs
# whole on one worker (`pytest_xdist_make_scheduler`), so its module
# fixtures (a 4-device subprocess, the docs site, finite-difference references) are built once;
# starting the long modules first keeps both workers busy until the end instead of leaving one
# of them alone with a long module at the end.
LONGEST_FIRST = [
    "test_docs.py",
    "test_docstrings.py",
    "test_sensitivity_matrix.py",
    "test_devices.py",
    "test_stiff.py",
    "test_cnf.py",
    "test_ode.py",
    "test_shooting.py",
    "test_collocation.py",
    "test_latent.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
