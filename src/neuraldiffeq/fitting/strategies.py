"""Strategies turn (model, data) into a scalar loss; `fit` only ever sees that loss.

A strategy has two methods:
- `prepare(data)`: runs once, outside compiled code (validation, smoothing, normalisation), and
  returns a pytree of arrays;
- `loss(model, prepared, key)`: runs inside the compiled training step.

New strategies subclass `AbstractStrategy` and plug into `fit` without touching it. Presets
(a name standing for a list of stages) register themselves in `PRESETS`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..data import TimeSeries
from .losses import l2

#: name -> function(optimizer, steps) returning a list of `Stage`s; see `fit`.
PRESETS: dict[str, Callable[..., list]] = {}


class AbstractStrategy(eqx.Module):
    """Base class of fitting strategies (see the module docstring)."""

    def prepare(self, data: Any) -> Any:
        return as_timeseries(data)

    @abc.abstractmethod
    def loss(self, model: Any, prepared: Any, key: jax.Array) -> jax.Array:
        """Scalar loss of `model` on the prepared data."""


class Trajectory(AbstractStrategy):
    """Single shooting: solve from each trajectory's first observation over the whole series.

    loss = `loss_fn(predictions, observations, mask)`, summed over all trajectories and times
    (default `nde.losses.l2`, the sum of squared errors). The model is called as
    `model(ts, y0) -> (T, D)`.

    Example:
        >>> import neuraldiffeq as nde, jax
        >>> data = nde.datasets.spiral()
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> strategy = nde.Trajectory()
        >>> float(strategy.loss(model, strategy.prepare(data), jax.random.key(0))) > 0
        True
    """

    loss_fn: Callable = l2

    def prepare(self, data: Any) -> TimeSeries:
        batch = as_timeseries(data).as_batch()
        if batch.mask is not None and not bool(jnp.all(batch.mask[:, 0])):
            raise ValueError(
                "Trajectory starts each solve from the first observation, but some trajectories "
                "have missing values at the first time point. Drop those trajectories or "
                "impute their initial state."
            )
        return batch

    def loss(self, model, prepared: TimeSeries, key) -> jax.Array:
        preds = batch_solve(model, prepared.ts, prepared.ys[:, 0])
        return self.loss_fn(preds, prepared.ys, prepared.mask)


def batch_solve(model, ts: jax.Array, y0s: jax.Array) -> jax.Array:
    """`model(ts, y0)` for each row of `y0s` -> (B, T, D).

    A batch of one is solved without `vmap`: a vmapped adaptive solve turns the step loop's
    condition into a batched one, which costs compile time and run time for nothing.
    """
    if y0s.shape[0] == 1:
        return model(ts, y0s[0])[None]
    return jax.vmap(lambda y0: model(ts, y0))(y0s)


def as_timeseries(data: Any) -> TimeSeries:
    """Accept a `TimeSeries` or a `(ts, ys)` pair."""
    if isinstance(data, TimeSeries):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return TimeSeries(*data)
    raise ValueError(
        f"data must be an nde.TimeSeries or a (ts, ys) pair, got {type(data).__name__}."
    )
