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

from ..models.dde import NeuralDDE
from .losses import l2
from .strategies import AbstractStrategy, as_timeseries, draw_trajectories


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


def segment_starts(ts, ys, observed, starts) -> np.ndarray:
    """Initial states of the segments starting at time indices `starts`: `(B, S, D)`.

    An observed start is the observation itself. A missing one (masked, e.g. an empty CSV cell)
    is interpolated linearly in time, per trajectory and state, between the nearest observations
    before and after it (held constant beyond the first or last), so one empty cell never stops
    multiple shooting. The misfit still ignores it: only observations enter the loss.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.fitting.shooting import segment_starts
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
                f"MultipleShooting: state {d} of trajectory {b} has no observed value, so its "
                "segment starts cannot be interpolated; drop that state or trajectory."
            )
        y0[b, :, d] = np.interp(ts[starts], ts[seen], ys[b, seen, d])
    return y0


class ObservedPast(eqx.Module):
    """A trajectory's observations, linearly interpolated: the history of a delay segment.

    A segment of a `nde.NeuralDDE` that starts at t_k needs y(t) for t < t_k: the data's own past,
    not the constant history a fresh solve would assume. Before the first observation it is the
    model's own history (`before`; None: the first observation, the default history).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.fitting.shooting import ObservedPast
        >>> past = ObservedPast(jnp.array([0.0, 1.0]), jnp.array([[0.0], [2.0]]), None)
        >>> past(0.25).tolist(), past(-1.0).tolist()
        ([0.5], [0.0])
    """

    ts: jax.Array
    ys: jax.Array
    before: Callable | jax.Array | None

    def __call__(self, t):
        inside = jax.vmap(lambda y: jnp.interp(t, self.ts, y), in_axes=1)(self.ys)
        if self.before is None:  # jnp.interp holds ys[0] before ts[0]: the default history
            return inside
        before = self.before(t) if callable(self.before) else self.before
        return jnp.where(t < self.ts[0], before, inside)


class SegmentStates(eqx.Module):
    """A model plus trainable initial states of the multiple-shooting segments.

    `nde.fit` trains every float array of what it is given, so wrapping the model makes the
    segment starts trainable without any change to `fit`. `MultipleShooting` then starts segment
    k of trajectory b from `states[b, k]` instead of the observation (useful with noisy data);
    other strategies see the wrapped model (calls and `.field` are forwarded). Build it with
    `MultipleShooting.with_states(model, data)` and take `result.model.model` after fitting.

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
        return getattr(self.model, "field", self.model)


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

    def __check_init__(self):
        if self.batch_size is not None and not (
            isinstance(self.batch_size, int | np.integer) and self.batch_size >= 1
        ):
            raise ValueError(
                f"batch_size must be None or an integer >= 1, got {self.batch_size!r}."
            )
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

    def prepare(self, data: Any) -> dict[str, jax.Array]:
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
        if self.batch_size is not None and self.batch_size > batch.ys.shape[0]:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {batch.ys.shape[0]} trajectories of "
                "the data."
            )
        return {
            "ts": batch.ts,
            "ys": batch.ys,
            "index": jnp.asarray(index),
            "weight": jnp.asarray(valid[None, :, :, None] & observed[:, index]),
            "observed": jnp.asarray(observed),
            "y0": jnp.asarray(y0),
        }

    @property
    def stochastic(self) -> bool:  # a fresh draw of trajectories every step
        return self.batch_size is not None

    def loss(self, model, prepared, key) -> jax.Array:
        ts, ys, index = prepared["ts"], prepared["ys"], prepared["index"]
        weight, observed = prepared["weight"], prepared["observed"]
        n_batch, n_seg = ys.shape[0], index.shape[0]
        seg_ts = ts[index]  # (S, g)
        if isinstance(model, SegmentStates):
            y0 = model.states
            if y0.shape != (n_batch, n_seg, ys.shape[-1]):
                raise ValueError(
                    f"SegmentStates.states has shape {y0.shape}, but this data has "
                    f"{(n_batch, n_seg, ys.shape[-1])} (trajectories, segments, states); build "
                    "it with MultipleShooting.with_states(model, data) for this data."
                )
            model = model.model
        else:
            y0 = prepared["y0"]  # (B, S, D)
        if self.batch_size is not None:
            chosen = draw_trajectories(key, n_batch, self.batch_size, "MultipleShooting")
            ys, y0 = ys[chosen], y0[chosen]
            weight, observed = weight[chosen], observed[chosen]
            n_batch = self.batch_size
        if isinstance(model, NeuralDDE):  # each segment's history: its trajectory's past
            past = eqx.error_if(
                ys,
                ~jnp.all(observed),
                "MultipleShooting gives a NeuralDDE's segments the observed past as history, "
                "so it needs fully observed data: impute the missing values first.",
            )
            solve = _with_past(model, ts)
        else:
            past = ys
            solve = lambda seg, start, _: model(seg, start)  # noqa: E731
        if n_batch * n_seg == 1:  # single shooting: no vmap (see strategies.batch_solve)
            preds = solve(seg_ts[0], y0[0, 0], past[0])[None, None]
        else:
            flat_ts = jnp.broadcast_to(seg_ts, (n_batch, *seg_ts.shape)).reshape(
                -1, seg_ts.shape[1]
            )
            flat_past = jnp.repeat(past, n_seg, axis=0)  # row b * S + k: trajectory b
            flat = jax.vmap(solve)(flat_ts, y0.reshape(-1, y0.shape[-1]), flat_past)
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


def _with_past(model: NeuralDDE, ts: jax.Array) -> Callable:
    """`solve(segment_ts, y0, trajectory_ys)` for a delay model whose history is the data's past."""

    def solve(seg_ts, start, trajectory_ys):
        past = ObservedPast(ts, trajectory_ys, model.history)
        with_past = eqx.tree_at(lambda m: m.history, model, past, is_leaf=lambda x: x is None)
        return with_past(seg_ts, start)

    return solve
