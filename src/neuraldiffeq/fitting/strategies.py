"""Strategies turn (model, data) into a scalar loss; `fit` only ever sees that loss.

A strategy has two methods:
- `prepare(model, data)`: runs once per stage, outside compiled code, and returns a pytree of
  arrays. It validates the data, checks them against the model (shapes via `jax.eval_shape`, and
  that the model has what the strategy needs), and does one-off work (smoothing, normalisation).
- `loss(model, prepared, key)`: runs inside the compiled training step.

New strategies subclass `AbstractStrategy` and plug into `fit` without touching it. A strategy
never branches on a model's type: what it needs from a model is a method the model exposes
(e.g. `vector_field(t, y, args)` for `Collocation`, `with_past(ts, ys)` for delay models in
`MultipleShooting`, `elbo` for `ELBO`).

The field's `args`: time-series strategies (`Trajectory`, `MultipleShooting`, `Collocation`,
`MomentMatching`) take `args=` and pass it to every solve or field evaluation.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._checks import (
    as_array,
    check_batch_fits,
    check_batch_size,
    check_state_shapes,
    draw_minibatch,
    series_shapes,
)
from ..io.timeseries import TimeSeries
from .losses import l2, reduction_over_batch


class AbstractStrategy(eqx.Module):
    """Base class of fitting strategies (see the module docstring).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> class Quadratic(nde.AbstractStrategy):  # a strategy in six lines
        ...     def prepare(self, model, data):
        ...         return jnp.asarray(data)
        ...     def loss(self, model, target, key):
        ...         return jnp.sum((model.w - target) ** 2)
        >>> class Params(eqx.Module):
        ...     w: jax.Array
        >>> result = nde.fit(Params(jnp.zeros(2)), [1.0, 2.0], Quadratic(),
        ...                  optimizer=optax.adam(0.1), steps=3, progress=False)
        >>> result.losses.shape
        (3,)
    """

    def prepare(self, model: Any, data: Any) -> Any:
        """Validate `data` against `model`, once, outside compiled code; return a pytree."""
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
        returns `nde.compiler_options()`: faster steps on the CPU for a longer compile.
        """
        return None

    def batch_axes(self, prepared: Any) -> Any:
        """Where the batch axis of `prepared` is, for `nde.fit(..., devices=...)`.

        Returns a pytree prefix of `prepared`: at each of its leaves an int, the axis of every
        array below it that runs over independent examples (series, paths, samples), which `fit`
        shards over the devices; or None, for arrays every device needs whole (times, indices),
        which `fit` replicates. The loss must be the same function of the data however its batch
        axis is split (sums or means over it), which is what lets XLA insert the reductions.
        The default, None, replicates everything: correct for any strategy, but every device
        then does all the work, so a batched strategy overrides it.

        Example:
            >>> import jax, neuraldiffeq as nde
            >>> data = nde.datasets.spiral()
            >>> model = nde.NeuralODE(lambda t, y, args: -y)
            >>> strategy = nde.Trajectory()
            >>> axes = strategy.batch_axes(strategy.prepare(model, data))
            >>> axes.ts, axes.ys
            (None, 0)
        """
        del prepared
        return None

    def batch_reduction(self, model: Any, prepared: Any) -> str | None:
        """How the loss combines over the batch axes, for `nde.fit(..., devices=...)`.

        "sum" or "mean" when the loss is the sum or the mean, over the examples of the batch,
        of a term that depends only on that example (and the model): then `fit` computes each
        device's loss and gradient on its own share and adds them with one all-reduce, so a
        solver's step loop runs on each device independently. None (the default) when that is
        not so, e.g. when examples are drawn at random from the whole batch, or a loss term
        does not depend on the batch: `fit` then lets XLA partition the whole step, which is
        correct for any loss but synchronises the devices in every iteration of a solver loop.

        Example:
            >>> import neuraldiffeq as nde
            >>> data = nde.datasets.spiral()
            >>> model = nde.NeuralODE(lambda t, y, args: -y)
            >>> strategy = nde.Trajectory()
            >>> strategy.batch_reduction(model, strategy.prepare(model, data))
            'sum'
        """
        del model, prepared
        return None


class Trajectory(AbstractStrategy):
    """Single shooting: solve from each trajectory's first observation over the whole series.

    loss = `loss_fn(predictions, observations, mask)`, summed over all trajectories and times
    (default `nde.losses.l2`, the sum of squared errors). The model is called as
    `model(ts, y0) -> (T, D)`, or `model(ts, y0, args)` when `args` is given.

    Minibatching (torchdiffeq's `ode_demo.py`): with `batch_time`, each step solves
    `batch_size` random windows of `batch_time` consecutive points, each started from its first
    observation (trajectory and start drawn uniformly, with the step's key); with only
    `batch_size`, each step solves that many trajectories drawn without replacement. The loss is
    then the misfit summed over the sampled windows. Without either, every step uses all data.

    Arguments:
        loss_fn: misfit `loss_fn(pred, target, mask)`.
        batch_time: points per random window (>= 2), or None for whole series.
        batch_size: windows (or trajectories) per step; default: the number of trajectories.
        args: passed to the model (and so to its vector field) at every solve.

    Example:
        >>> import neuraldiffeq as nde, jax
        >>> data = nde.datasets.spiral()
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> strategy = nde.Trajectory()
        >>> float(strategy.loss(model, strategy.prepare(model, data), jax.random.key(0))) > 0
        True
        >>> windows = nde.Trajectory(batch_time=10, batch_size=20)
        >>> float(windows.loss(model, windows.prepare(model, data), jax.random.key(0))) > 0
        True
    """

    loss_fn: Callable = l2
    batch_time: int | None = eqx.field(default=None, static=True)
    batch_size: int | None = eqx.field(default=None, static=True)
    args: Any = None

    def __check_init__(self):
        value = self.batch_time
        if value is not None and not (isinstance(value, int) and value >= 2):
            raise ValueError(f"batch_time must be None or an integer >= 2, got {value!r}.")
        check_batch_size(self.batch_size)

    def prepare(self, model: Any, data: Any) -> TimeSeries:
        batch = as_timeseries(data).as_batch()
        if batch.mask is not None and not np.asarray(batch.mask)[:, 0].all():
            # a missing initial value (an empty first CSV cell) is interpolated from the nearest
            # observations, as MultipleShooting does for its segment starts; the misfit still
            # ignores it, since the mask stays False there (tree_at: TimeSeries zeroes masked ys)
            y0 = segment_starts(batch.ts, batch.ys, batch.mask, [0])[:, 0]
            ys = np.array(batch.ys)  # a NumPy copy: no program compiled for the update
            ys[:, 0] = y0
            batch = eqx.tree_at(lambda b: b.ys, batch, as_array(ys))
        n_batch, n_times = batch.ys.shape[0], batch.ys.shape[1]
        times = n_times
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
            times = self.batch_time
        else:
            check_batch_fits(self.batch_size, n_batch, "trajectories")
        ts, y0 = series_shapes(batch.ys, times)
        check_state_shapes(model, ts, y0, self.args, strategy="Trajectory", call=call_model)
        return batch

    @property
    def stochastic(self) -> bool:
        return self.batch_time is not None or self.batch_size is not None

    def batch_axes(self, prepared: TimeSeries) -> TimeSeries:
        # series (and their mask) are split over the devices; the shared times are replicated
        return jax.tree_util.tree_map(lambda x: None if x is prepared.ts else 0, prepared)

    def batch_reduction(self, model: Any, prepared: TimeSeries) -> str | None:
        if self.stochastic:  # windows and minibatches are drawn from the whole batch
            return None
        return reduction_over_batch(self.loss_fn, masked=prepared.mask is not None)

    def loss(self, model, prepared: TimeSeries, key) -> jax.Array:
        ts, ys, mask = prepared.ts, prepared.ys, prepared.mask
        if self.batch_time is None:
            if self.batch_size is not None:  # whole trajectories, without replacement
                chosen = draw_minibatch(key, ys.shape[0], self.batch_size, "Trajectory")
                ys = ys[chosen]
                mask = None if mask is None else mask[chosen]
            preds = batch_solve(model, ts, ys[:, 0], self.args)
            return self.loss_fn(preds, ys, mask)
        if key is None:
            raise ValueError("a minibatching Trajectory needs a PRNG key to sample with.")
        n_batch, n_times, dim = ys.shape
        size = n_batch if self.batch_size is None else self.batch_size
        key_b, key_s = jax.random.split(key)
        which = jax.random.randint(key_b, (size,), 0, n_batch)
        starts = jax.random.randint(key_s, (size,), 0, n_times - self.batch_time + 1)

        def window(b, s):
            ts_w = jax.lax.dynamic_slice(ts, (s,), (self.batch_time,))
            ys_w = jax.lax.dynamic_slice(ys[b], (s, 0), (self.batch_time, dim))
            return ts_w, ys_w

        ts_w, ys_w = jax.vmap(window)(which, starts)
        preds = jax.vmap(lambda t, y0: call_model(model, t, y0, self.args))(ts_w, ys_w[:, 0])
        return self.loss_fn(preds, ys_w, None)


def call_model(model, ts: jax.Array, y0: jax.Array, args: Any) -> jax.Array:
    """`model(ts, y0)`, or `model(ts, y0, args)` when there are `args`.

    Without args the model is called with two arguments, so any `model(ts, y0)` callable fits.
    """
    return model(ts, y0) if args is None else model(ts, y0, args)


def batch_solve(model, ts: jax.Array, y0s: jax.Array, args: Any = None) -> jax.Array:
    """`model(ts, y0, args)` for each row of `y0s` -> (B, T, D).

    A batch of one is solved without `vmap`: a vmapped adaptive solve turns the step loop's
    condition into a batched one, which costs compile time and run time for nothing.
    """
    if y0s.shape[0] == 1:
        return call_model(model, ts, y0s[0], args)[None]
    return jax.vmap(lambda y0: call_model(model, ts, y0, args))(y0s)


def as_timeseries(data: Any) -> TimeSeries:
    """Accept a `TimeSeries` or a `(ts, ys)` pair."""
    if isinstance(data, TimeSeries):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return TimeSeries(*data)
    raise ValueError(
        f"data must be an nde.TimeSeries or a (ts, ys) pair, got {type(data).__name__}."
    )


def segment_starts(ts, ys, observed, starts) -> np.ndarray:
    """Initial states of the segments starting at time indices `starts`: `(B, S, D)`.

    An observed start is the observation itself. A missing one (masked, e.g. an empty CSV cell)
    is interpolated linearly in time, per trajectory and state, between the nearest observations
    before and after it (held constant beyond the first or last), so one empty cell never stops
    multiple shooting. The misfit still ignores it: only observations enter the loss.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.fitting.strategies import segment_starts
        >>> ys = np.array([[[0.0], [9.0], [2.0], [3.0]]])
        >>> observed = np.array([[[True], [False], [True], [True]]])
        >>> segment_starts(np.arange(4.0), ys, observed, [0, 1, 2]).ravel().tolist()
        [0.0, 1.0, 2.0]
    """
    ts, ys, observed = np.asarray(ts), np.asarray(ys), np.asarray(observed, bool)
    starts = np.asarray(starts)
    y0 = ys[:, starts].copy()
    if observed[:, starts].all():
        return y0
    for b, d in zip(*np.nonzero(~observed[:, starts].all(axis=1)), strict=True):
        seen = observed[b, :, d]
        if not seen.any():
            raise ValueError(
                f"state {d} of trajectory {b} has no observed value, so its "
                "segment starts cannot be interpolated; drop that state or trajectory."
            )
        y0[b, :, d] = np.interp(ts[starts], ts[seen], ys[b, seen, d])
    return y0
