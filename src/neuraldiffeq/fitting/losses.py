"""Misfit functions `loss(pred, target, mask) -> scalar`; `mask` (bool, same shape) may be None."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sum of squared errors over observed entries (DiffEqFlux's `sum(abs2, data .- pred)`).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> float(nde.losses.l2(jnp.ones(3), jnp.zeros(3)))
        3.0
    """
    sq = (pred - target) ** 2
    return jnp.sum(sq if mask is None else jnp.where(mask, sq, 0.0))


def mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error over observed entries.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> float(nde.losses.mse(jnp.ones(4), jnp.zeros(4)))
        1.0
    """
    count = pred.size if mask is None else jnp.maximum(jnp.sum(mask), 1)
    return l2(pred, target, mask) / count


def reduction_over_batch(loss_fn, masked: bool) -> str | None:
    """How `loss_fn` combines over a batch axis of its arguments: "sum", "mean" or None.

    `l2` is a sum over entries, so over examples too. `mse` without a mask is a mean over
    examples of equal size; with a mask the examples' weights depend on their observed counts.
    Any other function is not known (None). Strategies use this for `batch_reduction`.

    Example:
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.losses import reduction_over_batch
        >>> reduction_over_batch(nde.losses.l2, masked=True)
        'sum'
        >>> print(reduction_over_batch(nde.losses.mse, masked=True))
        None
    """
    if loss_fn is l2:
        return "sum"
    if loss_fn is mse and not masked:
        return "mean"
    return None
