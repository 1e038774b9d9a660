"""Maximum likelihood: train a density model (e.g. `nde.FFJORD`) on samples through `fit`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_batch_fits, check_batch_size, draw_minibatch, eval_shape_or_raise
from ..compilation.options import compiler_options as cpu_compiler_options
from .strategies import AbstractStrategy


class MaximumLikelihood(AbstractStrategy):
    """Negative mean log-likelihood of a minibatch drawn afresh at every step.

    loss = -mean(log p(x_b)) + kinetic * mean(∫‖f‖²) + jacobian * mean(∫‖ε^T ∂f/∂z‖²), where
    the second and third terms are RNODE's regularisers (Finlay et al. 2020), computed only when
    their weight is non-zero. The data are an (N, D) array of samples; `batch_size` distinct rows
    are drawn uniformly (without replacement, as every strategy's minibatches) from the step's key
    (all rows, in order, if `batch_size` is None). The model needs `log_prob(x, key)` (and
    `log_prob_and_stats(x, key)` for the regularisers); `prepare` checks both, and the shapes.

    Example:
        >>> import jax, optax, neuraldiffeq as nde
        >>> x = nde.datasets.toy_2d("8gaussians", 512, jax.random.key(0))
        >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (16, 16), key=jax.random.key(1)),
        ...                   trace="exact", rtol=1e-3, atol=1e-3)
        >>> result = nde.fit(flow, x, nde.MaximumLikelihood(batch_size=64),
        ...                  optimizer=optax.adam(1e-2), steps=3, progress=False)
        >>> result.losses.shape
        (3,)
    """

    batch_size: int | None = eqx.field(static=True)
    kinetic: float = eqx.field(static=True)
    jacobian: float = eqx.field(static=True)

    def __init__(
        self, batch_size: int | None = None, *, kinetic: float = 0.0, jacobian: float = 0.0
    ):
        batch_size = check_batch_size(batch_size)
        for name, value in (("kinetic", kinetic), ("jacobian", jacobian)):
            if not (np.isscalar(value) and np.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{name} (a regulariser weight) must be a finite number >= 0, got {value!r}."
                )
        self.batch_size = batch_size
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)

    def prepare(self, model: Any, data: Any) -> jax.Array:
        """Validate the samples (a finite (N, D) float array, N >= 1) against the model."""
        needs = "log_prob" if self.kinetic == 0.0 and self.jacobian == 0.0 else "log_prob_and_stats"
        if not callable(getattr(model, needs, None)):
            raise ValueError(
                f"MaximumLikelihood{'' if needs == 'log_prob' else ' with regularisers'} needs a "
                f"model with a {needs}(x, key) method (e.g. nde.FFJORD), got "
                f"{type(model).__name__}."
            )
        try:
            arr = np.asarray(data)
        except Exception as e:  # e.g. a TimeSeries: not an array of samples
            raise ValueError(
                "MaximumLikelihood needs an (N, D) array of samples, got "
                f"{type(data).__name__} ({e})."
            ) from None
        if arr.dtype == object or arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                "MaximumLikelihood needs an (N, D) array of samples (one row per sample), got "
                f"{type(data).__name__} of shape {getattr(arr, 'shape', None)}."
            )
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"samples must be numeric, got dtype {arr.dtype}.")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
            raise ValueError(
                f"samples contain NaN or infinite values ({bad} rows): drop them first."
            )
        out = jnp.asarray(data)
        if not jnp.issubdtype(out.dtype, jnp.inexact):
            out = out.astype(jnp.result_type(float))
        check_batch_fits(self.batch_size, out.shape[0], "samples")
        logp = eval_shape_or_raise(
            lambda x: getattr(model, needs)(x, jax.random.key(0)),
            (out[:2],),
            f"MaximumLikelihood: {type(model).__name__}.{needs} fails on samples of shape "
            f"{out.shape[1:]}. Is the model built for {out.shape[1]}-dimensional data?",
        )
        logp = logp[0] if needs == "log_prob_and_stats" else logp
        if logp.shape != out[:2].shape[:1]:
            raise ValueError(
                f"MaximumLikelihood: {type(model).__name__}.{needs} returns shape {logp.shape} "
                f"for a batch of shape {out[:2].shape}; it must return one log-density per row."
            )
        return out

    @property
    def stochastic(self) -> bool:  # fresh samples every step: keep the last iterate
        return True

    @property
    def compiler_options(self) -> dict[str, str] | None:
        # A batch of samples through the flow: the backward pass is full of sums over the batch,
        # which these options make faster on the CPU (see neuraldiffeq.compilation.options).
        return cpu_compiler_options()

    def batch_axes(self, prepared: jax.Array) -> int:
        # the samples (rows) are split over the devices; a minibatch draw gathers across them
        return 0

    def loss(self, model: Any, prepared: jax.Array, key: jax.Array) -> jax.Array:
        key = jax.random.key(0) if key is None else key
        batch_key, probe_key = jax.random.split(key)
        x = prepared
        if self.batch_size is not None:
            x = x[draw_minibatch(batch_key, x.shape[0], self.batch_size, "MaximumLikelihood")]
        if self.kinetic == 0.0 and self.jacobian == 0.0:
            return -jnp.mean(model.log_prob(x, probe_key))
        logp, stats = model.log_prob_and_stats(x, probe_key)
        return (
            -jnp.mean(logp)
            + self.kinetic * jnp.mean(stats.kinetic)
            + self.jacobian * jnp.mean(stats.jacobian)
        )
