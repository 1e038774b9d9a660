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

    @property
    def stochastic(self) -> bool:
        """True when the loss depends on the step's key (minibatches, sampled paths).

        Then one step's loss is a noisy estimate, so `fit` returns the last iterate rather than
        the parameters that happened to draw the luckiest batch.
        """
        return False

    @property
    def compiler_options(self) -> dict[str, str] | None:
        """XLA options for `fit`'s compiled step (None: XLA's defaults).

        A strategy whose loss runs one wide batch through the model (a flow's log-likelihood)
        returns `nde.compiler_options()`: faster steps on the CPU for ~20% more compile time.
        """
        return None


class Trajectory(AbstractStrategy):
    """Single shooting: solve from each trajectory's first observation over the whole series.

    loss = `loss_fn(predictions, observations, mask)`, summed over all trajectories and times
    (default `nde.losses.l2`, the sum of squared errors). The model is called as
    `model(ts, y0) -> (T, D)`.

    Minibatching (torchdiffeq's `ode_demo.py`): with `batch_time`, each step solves
    `batch_size` random windows of `batch_time` consecutive points, each started from its first
    observation (trajectory and start drawn uniformly, with the step's key); with only
    `batch_size`, each step solves that many trajectories drawn without replacement. The loss is
    then the misfit summed over the sampled windows. Without either, every step uses all data.

    Arguments:
        loss_fn: misfit `loss_fn(pred, target, mask)`.
        batch_time: points per random window (>= 2), or None for whole series.
        batch_size: windows (or trajectories) per step; default: the number of trajectories.

    Example:
        >>> import neuraldiffeq as nde, jax
        >>> data = nde.datasets.spiral()
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> strategy = nde.Trajectory()
        >>> float(strategy.loss(model, strategy.prepare(data), jax.random.key(0))) > 0
        True
        >>> windows = nde.Trajectory(batch_time=10, batch_size=20)
        >>> float(windows.loss(model, windows.prepare(data), jax.random.key(0))) > 0
        True
    """

    loss_fn: Callable = l2
    batch_time: int | None = eqx.field(default=None, static=True)
    batch_size: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        for name, low in (("batch_time", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= low):
                raise ValueError(f"{name} must be None or an integer >= {low}, got {value!r}.")

    def prepare(self, data: Any) -> TimeSeries:
        batch = as_timeseries(data).as_batch()
        if batch.mask is not None and not bool(jnp.all(batch.mask[:, 0])):
            raise ValueError(
                "Trajectory starts each solve from the first observation, but some trajectories "
                "have missing values at the first time point. Drop those trajectories or "
                "impute their initial state."
            )
        n_batch, n_times = batch.ys.shape[0], batch.ys.shape[1]
        if self.batch_time is not None:
            if self.batch_time > n_times:
                raise ValueError(
                    f"batch_time {self.batch_time} exceeds the {n_times} time points of the data."
                )
            if batch.mask is not None:
                raise ValueError(
                    "minibatching with batch_time starts windows anywhere, so it needs fully "
                    "observed data (no mask); impute the missing values or drop batch_time."
                )
        elif self.batch_size is not None and self.batch_size > n_batch:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {n_batch} trajectories of the data "
                "(without batch_time, batch_size samples whole trajectories)."
            )
        return batch

    @property
    def stochastic(self) -> bool:
        return self.batch_time is not None or self.batch_size is not None

    def loss(self, model, prepared: TimeSeries, key) -> jax.Array:
        if self.batch_time is None and self.batch_size is None:
            preds = batch_solve(model, prepared.ts, prepared.ys[:, 0])
            return self.loss_fn(preds, prepared.ys, prepared.mask)
        n_batch, n_times, dim = prepared.ys.shape
        size = n_batch if self.batch_size is None else self.batch_size
        if self.batch_time is None:  # whole trajectories, without replacement
            chosen = draw_trajectories(key, n_batch, size, "Trajectory")
            ys = prepared.ys[chosen]
            mask = None if prepared.mask is None else prepared.mask[chosen]
            return self.loss_fn(batch_solve(model, prepared.ts, ys[:, 0]), ys, mask)
        if key is None:
            raise ValueError("a minibatching Trajectory needs a PRNG key to sample with.")
        key_b, key_s = jax.random.split(key)
        which = jax.random.randint(key_b, (size,), 0, n_batch)
        starts = jax.random.randint(key_s, (size,), 0, n_times - self.batch_time + 1)

        def window(b, s):
            ts = jax.lax.dynamic_slice(prepared.ts, (s,), (self.batch_time,))
            ys = jax.lax.dynamic_slice(prepared.ys[b], (s, 0), (self.batch_time, dim))
            return ts, ys

        ts_w, ys_w = jax.vmap(window)(which, starts)
        preds = jax.vmap(model)(ts_w, ys_w[:, 0])
        return self.loss_fn(preds, ys_w, None)


def draw_trajectories(key: jax.Array | None, n_batch: int, size: int, owner: str) -> jax.Array:
    """`size` distinct trajectory indices out of `n_batch`, drawn with `key` (a minibatch)."""
    if key is None:
        raise ValueError(f"a minibatching {owner} needs a PRNG key to sample with.")
    return jax.random.choice(key, n_batch, (size,), replace=False)


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
