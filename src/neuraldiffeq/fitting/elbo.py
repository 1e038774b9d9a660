"""`ELBO`: the strategy that trains latent-variable models (`nde.LatentODE`) with `fit`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .strategies import AbstractStrategy, as_timeseries


class ELBO(AbstractStrategy):
    """Maximise a model's evidence lower bound: loss = -model.elbo(ts, ys, mask, key).

    The model needs an `elbo(ts, ys, mask, key)` method (e.g. `nde.LatentODE`). Each step draws
    a fresh posterior sample from the step's key; with `batch_size` it also draws a random
    minibatch of series (without replacement), otherwise it uses every series.

    Example:
        >>> import jax, optax, neuraldiffeq as nde
        >>> s = nde.datasets.spirals(n_spirals=16, n_obs=30, key=jax.random.key(0))
        >>> model = nde.LatentODE(4, 2, key=jax.random.key(1))
        >>> result = nde.fit(model, s.data, nde.ELBO(batch_size=8), optimizer=optax.adam(1e-2),
        ...                  steps=2, progress=False)
        >>> result.losses.shape
        (2,)
    """

    batch_size: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.batch_size is not None and not (
            isinstance(self.batch_size, int | np.integer) and self.batch_size > 0
        ):
            raise ValueError(
                f"batch_size must be None or a positive integer, got {self.batch_size!r}."
            )

    def prepare(self, data: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        batch = as_timeseries(data).as_batch()
        n = batch.ys.shape[0]
        if self.batch_size is not None and self.batch_size > n:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the number of series ({n}); lower it or "
                "pass batch_size=None to use every series each step."
            )
        mask = jnp.ones(batch.ys.shape, bool) if batch.mask is None else batch.mask
        return batch.ts, batch.ys, mask

    @property
    def stochastic(self) -> bool:  # fresh samples every step: keep the last iterate
        return True

    def loss(self, model, prepared, key) -> jax.Array:
        if not hasattr(model, "elbo"):
            raise ValueError(
                f"ELBO needs a model with an elbo(ts, ys, mask, key) method such as nde.LatentODE, "
                f"got {type(model).__name__}."
            )
        ts, ys, mask = prepared
        k_batch, k_sample = jax.random.split(key)
        if self.batch_size is not None and self.batch_size < ys.shape[0]:
            idx = jax.random.choice(k_batch, ys.shape[0], (self.batch_size,), replace=False)
            ys, mask = ys[idx], mask[idx]
        return -model.elbo(ts, ys, mask, k_sample)
