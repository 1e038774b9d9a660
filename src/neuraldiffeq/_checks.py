"""Input checks shared by the public constructors: clear `ValueError`s at the boundary."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds actual values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_positive(value, name: str) -> None:
    if not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def check_times(ts, name: str = "ts") -> jax.Array:
    """A 1-D array of at least two strictly increasing finite times (checked when concrete)."""
    if is_concrete(ts):
        arr = np.asarray(ts)
        if arr.ndim != 1 or arr.shape[0] < 2:
            raise ValueError(
                f"{name} must be a 1-D array of at least 2 times, got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values.")
        if not np.all(np.diff(arr) > 0):
            raise ValueError(f"{name} must be strictly increasing (sort it; drop repeated times).")
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.inexact):
        ts = ts.astype(jnp.result_type(float))
    return ts


def count_params(tree) -> int:
    """Number of trainable (floating-point array) entries in a pytree."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return int(sum(leaf.size for leaf in leaves))
