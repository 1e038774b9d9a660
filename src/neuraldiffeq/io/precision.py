"""The working precision: the float type data get in JAX, and casts that refuse to overflow it."""

from __future__ import annotations

import jax
import numpy as np


def working_dtype() -> np.dtype:
    """The float type arrays get in JAX: float32, or float64 with `jax_enable_x64`.

    Example:
        >>> from neuraldiffeq.io.precision import working_dtype
        >>> working_dtype() in ("float32", "float64")
        True
    """
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def working_max() -> float:
    """The largest finite value of the working precision.

    Example:
        >>> from neuraldiffeq.io.precision import working_max
        >>> working_max() > 3e38
        True
    """
    return float(np.finfo(working_dtype()).max)


def to_working_precision(arr: np.ndarray, name: str) -> np.ndarray:
    """Cast to the working precision; refuse finite values that overflow it, naming `name`.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.io.precision import to_working_precision
        >>> to_working_precision(np.array([1.0, 2.0]), "ys").tolist()
        [1.0, 2.0]
    """
    dtype = working_dtype()
    with np.errstate(over="ignore"):
        cast = arr.astype(dtype)
    overflow = np.isfinite(arr) & ~np.isfinite(cast)
    if overflow.any():
        where = tuple(int(i) for i in np.argwhere(overflow)[0])
        raise ValueError(
            f"{name}{list(where)} = {arr[where]:.3g} overflows {dtype} (largest "
            f"{np.finfo(dtype).max:.3g}). Rescale {name} (e.g. divide by a power of ten) or "
            "enable float64 with jax.config.update('jax_enable_x64', True)."
        )
    return cast


def beyond_working_precision(values: np.ndarray) -> np.ndarray:
    """Where float64 `values` are infinite or too large for the working precision (NaN, a
    missing value, is not). Each reader says in its own words which cell it was.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.io.precision import beyond_working_precision
        >>> beyond_working_precision(np.array([1.0, np.inf, np.nan, 1e300])).tolist()[:3]
        [False, True, False]
    """
    with np.errstate(invalid="ignore"):
        return np.isinf(values) | (np.abs(values) > working_max())
