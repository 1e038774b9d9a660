"""Multiple shooting: fit short overlapping segments in parallel, tied by a continuity penalty.

Solving a badly initialised neural ODE over a long horizon gives a loss landscape full of local
minima (the spiral on [0, 5] stays stuck with single shooting). Multiple shooting restarts the
solve from the data every `group_size - 1` points, so each segment only has to be right over a
short time, and penalises the jumps between consecutive segments so that, at the optimum, the
segments join into one trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import (
    as_array,
    check_batch_fits,
    check_batch_size,
    check_state_shapes,
    draw_minibatch,
    series_shapes,
)
from ..models.dde import ObservedPast
from .losses import l2, reduction_over_batch
from .strategies import (
    AbstractStrategy,
    PerSeries,
    as_timeseries,
    call_model,
    segment_starts,
    series_args,
)

__all__ = ["MultipleShooting", "ObservedPast", "SegmentStates", "auto_group_size", "segment_ranges"]


def segment_ranges(n_times: int, group_size: int) -> list[tuple[int, int]]:
    """The segments of DiffEqFlux's `multiple_shoot`, as 0-based inclusive `(first, last)` pairs.

    In DiffEqFlux's 1-based terms the segments are `i:min(T, i + g - 1)` for
    `i = 1, g, 2g - 1, ...` (< T): consecutive segments share their end points.

    Example:
        >>> from neuraldiffeq.fitting.shooting import segment_ranges
        >>> segment_ranges(7, 3)
        [(0, 2), (2, 4), (4, 6)]
        >>> segment_ranges(6, 3)
        [(0, 2), (2, 4), (4, 5)]
    """
    if not (isinstance(group_size, int | np.integer) and group_size >= 2):
        raise ValueError(
            f"group_size must be an integer >= 2 (points per segment), got {group_size!r}."
        )
    if group_size > n_times:
        raise ValueError(
            f"group_size {group_size} is larger than the number of time points {n_times}; use "
            f"group_size <= {n_times} (group_size = {n_times} is single shooting)."
        )
    return [
        (i, min(n_times - 1, i + group_size - 1)) for i in range(0, n_times - 1, group_size - 1)
    ]


def auto_group_size(n_times: int) -> int:
    """About five segments of at least three points: the `group_size=None` choice.

    Example:
        >>> from neuraldiffeq.fitting.shooting import auto_group_size
        >>> auto_group_size(30), auto_group_size(21)
        (7, 5)
    """
    return min(n_times, max(3, -(-(n_times - 1) // 5) + 1))


class SegmentStates(eqx.Module):
    """A model plus trainable initial states of the multiple-shooting segments.

    `nde.fit` trains every float array of what it is given, so wrapping the model makes the
    segment starts trainable without any change to `fit`. `MultipleShooting` then starts segment
    k of trajectory b from `states[b, k]` instead of the observation (useful with noisy data);
    other strategies see the wrapped model (calls, `.field` and `vector_field` are forwarded).
    Build it with `MultipleShooting.with_states(model, data)` and take `result.model.model` after
    fitting.

    Example:
        >>> import neuraldiffeq as nde
        >>> data = nde.datasets.spiral()
        >>> shooting = nde.MultipleShooting(group_size=5)
        >>> wrapped = shooting.with_states(nde.NeuralODE(lambda t, y, args: -y), data)
        >>> wrapped.states.shape
        (1, 8, 2)
    """

    model: Any
    states: jax.Array

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        return self.model(ts, y0) if args is None else self.model(ts, y0, args)

    @property
    def field(self):
        return self.model.field

    @property
    def vector_field(self) -> Callable:
        """The wrapped model's `vector_field` (so `nde.Collocation` fits a wrapped model too).

        A property, so that a wrapped model without one (a delay model) has none either.
        """
        return self.model.vector_field


class MultipleShooting(AbstractStrategy):
    """Multiple shooting: overlapping segments solved in parallel (vmap), plus continuity.

    The series is cut into the segments of `segment_ranges(T, group_size)`; each starts from the
    observation at its first time (or a trainable state, see `with_states`), and all segments of
    all trajectories are solved in one vmapped call. The loss is

        loss_fn(segment predictions, observations)
        + continuity * sum |end of segment k - start of segment k+1|

    (DiffEqFlux's `multiple_shoot`, with its L1 continuity term). `group_size = T` is a single
    segment: exactly the `nde.Trajectory` loss.

    Arguments:
        group_size: points per segment (>= 2), including the end point shared with the next;
            None picks about five segments from the data (`auto_group_size`).
        continuity: weight of the continuity penalty.
        loss_fn: data misfit `loss_fn(pred, target, mask)`, default `nde.losses.l2`.
        batch_size: trajectories per step, drawn without replacement with the step's key (as
            `nde.Trajectory(batch_size=...)`); None: all of them every step.
        args: passed to the model (and so to its vector field) in every segment's solve.

    A model whose future depends on its past (a delay model such as `nde.NeuralDDE`) exposes
    `with_past(ts, ys)`: the same model whose history is the observations `(ts, ys)`. Each
    segment then starts with its trajectory's observed past as history, not a constant one; this
    needs fully observed data. Other models restart from the segment's first state alone.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> data = nde.datasets.spiral(n_points=30, t1=5.0)
        >>> mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))
        >>> strategy = nde.MultipleShooting(group_size=3, continuity=200.0)
        >>> result = nde.fit(model, data, strategy, optimizer=optax.adam(0.05), steps=3,
        ...                  progress=False)
        >>> result.losses.shape
        (3,)
    """

    group_size: int | None = eqx.field(static=True)
    continuity: float = eqx.field(default=100.0, static=True)
    loss_fn: Callable = l2
    batch_size: int | None = eqx.field(default=None, static=True)

    args: Any = None

    def __check_init__(self):
        check_batch_size(self.batch_size)
        if self.group_size is not None and not (
            isinstance(self.group_size, int | np.integer) and self.group_size >= 2
        ):
            raise ValueError(
                f"group_size must be an integer >= 2 (points per segment), got {self.group_size!r}."
            )
        if not (
            np.isscalar(self.continuity) and np.isfinite(self.continuity) and self.continuity >= 0
        ):
            raise ValueError(f"continuity must be a non-negative number, got {self.continuity!r}.")

    def prepare(self, model: Any, data: Any) -> dict[str, jax.Array]:
        batch = as_timeseries(data).as_batch()
        n = batch.ts.shape[0]
        group_size = self.group_size or auto_group_size(n)
        ranges = segment_ranges(n, group_size)
        # Every segment gets group_size slots so that all of them solve in one vmap; the last,
        # possibly shorter, segment repeats its final time and its padding is masked out.
        slots = np.arange(group_size)
        index = np.stack([np.minimum(a + slots, b) for a, b in ranges])
        valid = np.stack([a + slots <= b for a, b in ranges])
        observed = np.ones(batch.ys.shape, bool) if batch.mask is None else np.asarray(batch.mask)
        y0 = segment_starts(batch.ts, batch.ys, observed, index[:, 0])
        check_batch_fits(self.batch_size, batch.ys.shape[0], "trajectories")
        n_batch, dim = batch.ys.shape[0], batch.ys.shape[-1]
        if isinstance(model, SegmentStates):  # the strategy's own wrapper, not a model type
            if model.states.shape != (n_batch, len(ranges), dim):
                raise ValueError(_states_message(model.states.shape, (n_batch, len(ranges), dim)))
            model = model.model
        if _with_past(model) is not None and not observed.all():
            raise ValueError(
                f"MultipleShooting gives the segments of a model with a past "
                f"({type(model).__name__}.with_past) their trajectory's observed past as history, "
                "so it needs fully observed data: impute the missing values first."
            )
        ts, y0_shape = series_shapes(batch.ys, group_size)
        args = series_args(self.args, n_batch)
        check_state_shapes(model, ts, y0_shape, args, strategy="MultipleShooting", call=call_model)
        return {
            "ts": batch.ts,
            "ys": batch.ys,
            "index": as_array(index),
            "weight": as_array(valid[None, :, :, None] & observed[:, index]),
            "y0": as_array(y0),
        }

    @property
    def stochastic(self) -> bool:  # a fresh draw of trajectories every step
        return self.batch_size is not None

    def batch_reduction(self, model: Any, prepared: dict) -> str | None:
        if self.stochastic or isinstance(model, SegmentStates):  # states: a batch-sized parameter
            return None
        return reduction_over_batch(self.loss_fn, masked=True)  # the weights mask the misfit

    def batch_axes(self, prepared: dict) -> dict:
        # trajectories are split over the devices (with their segment starts and weights); the
        # times and the segment index table are the same for all of them
        return {"ts": None, "ys": 0, "index": None, "weight": 0, "y0": 0}

    def loss(self, model, prepared, key) -> jax.Array:
        ts, ys, index, weight = (
            prepared["ts"],
            prepared["ys"],
            prepared["index"],
            prepared["weight"],
        )
        n_batch, n_seg = ys.shape[0], index.shape[0]
        seg_ts = ts[index]  # (S, g)
        if isinstance(model, SegmentStates):
            y0 = model.states
            if y0.shape != (n_batch, n_seg, ys.shape[-1]):
                raise ValueError(_states_message(y0.shape, (n_batch, n_seg, ys.shape[-1])))
            model = model.model
        else:
            y0 = prepared["y0"]  # (B, S, D)
        args = self.args
        if self.batch_size is not None:
            chosen = draw_minibatch(key, n_batch, self.batch_size, "MultipleShooting")
            ys, y0, weight = ys[chosen], y0[chosen], weight[chosen]
            args = args.take(chosen) if isinstance(args, PerSeries) else args
            n_batch = self.batch_size
        per_series = isinstance(args, PerSeries)
        with_past = _with_past(model)
        if with_past is not None:  # each segment's history: its trajectory's observed past

            def solve(seg, start, trajectory_ys, a):
                return call_model(with_past(ts, trajectory_ys), seg, start, a)

        else:

            def solve(seg, start, trajectory_ys, a):
                del trajectory_ys
                return call_model(model, seg, start, a)

        if n_batch * n_seg == 1:  # single shooting: no vmap (see strategies.batch_solve)
            one = args.series(0) if per_series else args
            preds = solve(seg_ts[0], y0[0, 0], ys[0], one)[None, None]
        else:
            flat_ts = jnp.broadcast_to(seg_ts, (n_batch, *seg_ts.shape)).reshape(
                -1, seg_ts.shape[1]
            )
            flat_past = jnp.repeat(ys, n_seg, axis=0)  # row b * S + k: trajectory b
            flat_y0 = y0.reshape(-1, y0.shape[-1])
            if per_series:  # row b * S + k: trajectory b's args
                flat_args = args.take(jnp.repeat(jnp.arange(n_batch), n_seg)).value
                flat = jax.vmap(solve)(flat_ts, flat_y0, flat_past, flat_args)
            else:
                flat = jax.vmap(lambda a, b, c: solve(a, b, c, args))(flat_ts, flat_y0, flat_past)
            preds = flat.reshape(n_batch, n_seg, *flat.shape[1:])  # (B, S, g, D)
        misfit = self.loss_fn(preds, ys[:, index], weight)
        if n_seg == 1:
            return misfit
        # Every segment but the last has all its slots, so its end is slot g - 1.
        jumps = preds[:, :-1, -1] - preds[:, 1:, 0]
        return misfit + self.continuity * jnp.sum(jnp.abs(jumps))

    def with_states(self, model: Any, data: Any) -> SegmentStates:
        """Wrap `model` with trainable segment initial states, initialised at the observations.

        Example: see `SegmentStates`.
        """
        batch = as_timeseries(data).as_batch()
        n = batch.ts.shape[0]
        ranges = segment_ranges(n, self.group_size or auto_group_size(n))
        starts = np.array([a for a, _ in ranges])
        observed = np.ones(batch.ys.shape, bool) if batch.mask is None else np.asarray(batch.mask)
        return SegmentStates(
            model, jnp.asarray(segment_starts(batch.ts, batch.ys, observed, starts))
        )


def _with_past(model) -> Callable | None:
    """The model's `with_past(ts, ys)` (a model with a history, e.g. a delay model), or None."""
    return getattr(model, "with_past", None)


def _states_message(got, want) -> str:
    return (
        f"SegmentStates.states has shape {got}, but this data has {want} (trajectories, "
        "segments, states); build it with MultipleShooting.with_states(model, data) for this data."
    )
