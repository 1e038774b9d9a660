"""JAX's persistent compilation cache, switched on in one call.

Why: a small fit spends most of its first seconds compiling. With the cache on, a second process
(a new notebook kernel, the next CLI run, the next test session) loads the compiled training
step from disk instead. JAX keys that cache on the lowered program itself, so it can never serve
a program other than the one tracing produced. `fit` compiles its steps without host callbacks so
that the cache can keep them (see `compilation.cacheable`). The `neuraldiffeq` command turns it
on by itself (`--no-cache` turns it off).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "enable_compilation_cache"]

#: the environment variable that moves the cache (the CLI's and `enable_compilation_cache()`'s)
CACHE_DIR_VARIABLE = "NEURALDIFFEQ_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where compiled programs are kept: `$NEURALDIFFEQ_CACHE_DIR` if set, else
    `$XDG_CACHE_HOME/neuraldiffeq/jax` (`~/.cache/neuraldiffeq/jax`).

    Example:
        >>> import os, neuraldiffeq as nde
        >>> saved = os.environ.get("NEURALDIFFEQ_CACHE_DIR")
        >>> os.environ["NEURALDIFFEQ_CACHE_DIR"] = "/tmp/my-cache"
        >>> str(nde.default_cache_dir())
        '/tmp/my-cache'
        >>> if saved is None:
        ...     del os.environ["NEURALDIFFEQ_CACHE_DIR"]
        ... else:
        ...     os.environ["NEURALDIFFEQ_CACHE_DIR"] = saved
    """
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "neuraldiffeq" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled programs on disk so that the next process reuses them.

    Sets JAX's persistent compilation cache to `path` (default: `default_cache_dir()`) for every
    program this process compiles from now on, however small or quick to compile: the many
    small programs of a fit add up. Returns the directory, created if missing.

    With the cache on, `fit` may also skip *tracing* a step in a later process, but only a step
    made entirely of neuraldiffeq's and its pinned dependencies' code (jax, equinox, diffrax,
    optax, lineax, optimistix, numpy): the command line, the demos, a model built from
    `eqx.nn` layers and `nde.transforms`, with a built-in strategy and an optax optimizer. Such a
    step is exported (`jax.export`) to the `neuraldiffeq-exported` folder inside the cache and
    read back by the next process that runs it, keyed on the installed neuraldiffeq source, the
    dependencies' versions, JAX's settings and the step's structure, numbers and shapes.

    A step that holds any of your own code (a function, lambda, class, method or module of
    yours, anywhere in the model, strategy or optimizer) is traced in every process, as without
    this cache: no key made from Python objects can prove that your code has not changed since.
    Its compile is still served by JAX's cache. Multi-device fits (`devices=`) are traced every
    time too. A damaged entry is ignored and rewritten. In short: steps with user code are
    traced in every process; steps made only of neuraldiffeq may be read back.

    Arguments:
        path: the cache directory; None for `default_cache_dir()`.

    Example:
        >>> import tempfile, neuraldiffeq as nde
        >>> folder = nde.enable_compilation_cache(tempfile.mkdtemp())
        >>> folder.is_dir()
        True
        >>> nde.enable_compilation_cache() == nde.default_cache_dir()  # the default again
        True
    """
    import jax

    folder = default_cache_dir() if path is None else Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cannot create the compilation cache directory {str(folder)!r} ({e}); pass a "
            f"writable path, or set {CACHE_DIR_VARIABLE}."
        ) from e
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # JAX keeps only programs that took over a second to compile by default; on a small model
    # most take less, and together they are most of the start-up time.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # JAX decides once per process whether the cache is in use; a cache set after a first
    # compilation is otherwise ignored.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return folder
