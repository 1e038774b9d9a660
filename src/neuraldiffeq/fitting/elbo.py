"""`ELBO`: the strategy that trains latent-variable models (`nde.LatentODE`, `nde.VAE`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_batch_fits, check_batch_size, draw_minibatch, eval_shape_or_raise
from .strategies import AbstractStrategy, as_timeseries


class ELBO(AbstractStrategy):
    """Maximise a model's evidence lower bound: loss = -model.elbo(ts, ys, mask, key).

    The model needs an `elbo(ts, ys, mask, key, kl_weight=)` method (`nde.LatentODE`,
    `nde.LatentSDE`). Each step draws a fresh posterior sample from the step's key; with
    `batch_size` it also draws a random minibatch of series (without replacement), otherwise it
    uses every series.

    KL annealing: `kl_weight` < 1 scales the KL term (loss = -(log-likelihood - kl_weight·KL)),
    which lets the posterior fit the data before the prior pulls on it (torchsde's latent SDE
    example raises it linearly from 0 to 1). Anneal with stages of increasing weight, e.g.
    `[nde.Stage(nde.ELBO(kl_weight=w), optax.adam(1e-2), steps=100) for w in (0.1, 0.5, 1.0)]`;
    the default 1 is the ELBO itself.

    On data that are an (N, D) array of samples rather than time series (e.g. flattened
    images), the loss is -mean(model.elbo(x, key)) over a minibatch of rows, for a model whose
    `elbo(x, key)` returns one ELBO per row (e.g. `nde.VAE`).

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
    kl_weight: float = eqx.field(default=1.0, static=True)

    def __check_init__(self):
        check_batch_size(self.batch_size)
        if not (np.isscalar(self.kl_weight) and np.isfinite(self.kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}.")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}.")

    def prepare(self, model: Any, data: Any) -> Any:
        if isinstance(data, np.ndarray | jax.Array):
            return self._prepare_samples(model, data)
        if not callable(getattr(model, "elbo", None)):
            raise ValueError(
                "ELBO needs a model with an elbo(ts, ys, mask, key) method such as nde.LatentODE "
                "or nde.LatentSDE, "
                f"got {type(model).__name__}."
            )
        batch = as_timeseries(data).as_batch()
        check_batch_fits(self.batch_size, batch.ys.shape[0], "series")
        mask = jnp.ones(batch.ys.shape, bool) if batch.mask is None else batch.mask
        # Shapes (e.g. the data's dimension vs the model's) checked now, not in the compiled step.
        eval_shape_or_raise(
            lambda ts, ys, m: model.elbo(ts, ys, m, jax.random.key(0)),
            (batch.ts, batch.ys[:1], mask[:1]),
            f"ELBO: {type(model).__name__}.elbo fails on data of shape {batch.ys.shape[1:]} per "
            "series. Is the model built for this many observed components?",
        )
        return batch.ts, batch.ys, mask

    @property
    def stochastic(self) -> bool:  # fresh samples every step: keep the last iterate
        return True

    def _prepare_samples(self, model: Any, data) -> jax.Array:
        if not callable(getattr(model, "elbo", None)):
            raise ValueError(
                "ELBO on an (N, D) array of samples needs a model with an elbo(x, key) method "
                f"such as nde.VAE, got {type(model).__name__}."
            )
        arr = np.asarray(data)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.dtype.kind not in "biuf":
            raise ValueError(
                "ELBO on an array needs numeric (N, D) samples (one row per sample), got dtype "
                f"{arr.dtype} and shape {arr.shape}; time series go in an nde.TimeSeries."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("ELBO: the samples contain NaN or infinite values; drop them first.")
        x = jnp.asarray(data)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        check_batch_fits(self.batch_size, x.shape[0], "samples")
        out = eval_shape_or_raise(
            lambda x: model.elbo(x, jax.random.key(0)),
            (x[:2],),
            f"ELBO: {type(model).__name__}.elbo(x, key) fails on samples of shape {x.shape[1:]}. "
            "Is the model built for this data size?",
        )
        if out.shape != x[:2].shape[:1]:
            raise ValueError(
                f"ELBO: {type(model).__name__}.elbo(x, key) returns shape {out.shape} for a batch "
                f"of shape {x[:2].shape}; on samples it must return one ELBO per row."
            )
        return x

    def batch_axes(self, prepared: Any) -> Any:
        if not isinstance(prepared, tuple):  # samples: rows split over the devices
            return 0
        # series and their masks are split over the devices; the shared times are replicated
        return (None, 0, 0)

    def loss(self, model, prepared, key) -> jax.Array:
        if not isinstance(prepared, tuple):  # an (N, D) array of samples
            k_batch, k_sample = jax.random.split(key)
            x = prepared
            if self.batch_size is not None and self.batch_size < x.shape[0]:
                x = x[draw_minibatch(k_batch, x.shape[0], self.batch_size, "ELBO")]
            return -jnp.mean(model.elbo(x, k_sample))
        ts, ys, mask = prepared
        k_batch, k_sample = jax.random.split(key)
        if self.batch_size is not None and self.batch_size < ys.shape[0]:
            idx = draw_minibatch(k_batch, ys.shape[0], self.batch_size, "ELBO")
            ys, mask = ys[idx], mask[idx]
        return -model.elbo(ts, ys, mask, k_sample, kl_weight=self.kl_weight)
