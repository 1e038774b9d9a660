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


def strong_floats(tree):
    """Floating arrays (and Python floats) as strongly typed arrays.

    Weakly typed scalars (e.g. a Python float traced by `jax.grad`) are not seen as
    differentiable by `eqx.filter_custom_vjp`, which would silently give a zero gradient.
    """

    def strong(x):
        if isinstance(x, float) or (eqx.is_inexact_array(x)):
            x = jnp.asarray(x)
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree_util.tree_map(strong, tree)


def as_state(y0, name: str = "y0", vector: bool = False) -> jax.Array:
    """An initial state as a strongly typed floating array (`vector`: shape (D,) required)."""
    y0 = jnp.asarray(y0)
    if vector and y0.ndim != 1:
        raise ValueError(f"{name} must be a state vector of shape (D,), got shape {y0.shape}.")
    if not jnp.issubdtype(y0.dtype, jnp.inexact):
        y0 = y0.astype(jnp.result_type(float))
    return strong_floats(y0)
