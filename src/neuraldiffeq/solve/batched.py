"""A batch of ODE solves, each sample with its own adaptive steps, in loops over the batch.

`jax.vmap` of a diffrax solve gives every sample its own step sizes, but costs more than the
steps: (1) the loop runs, for every sample, as many steps as the slowest sample needs (the
others are masked, not skipped), and (2) the batch sits *outside* the loop's custom gradient
(diffrax's checkpointed while loop), so the backward pass carries a per-sample copy of the
cotangent of every weight the vector field closes over, read and written at every stage of every
step: for a network field, a batch-times-weights array, the larger part of a training step.

`solve_batched` makes the same steps with the batch *inside* the loop (`jax.vmap` of one
adaptive step of diffrax's own solver and step-size controller, per-sample times and step
sizes): the weights are shared by the whole batch inside the body and their cotangent is summed
over the batch where it is made, once per step. And it runs a sequence of loops over smaller and
smaller batches: when no more than 1/`shrink` of the rows are still going, those rows move to a
smaller batch (as few as `MIN_ROWS`), so finished samples stop costing steps. A sample's steps
do not depend on the others, so the numbers are those of `jax.vmap` of the diffrax solve (the
same operations on each sample; rounding may differ where a kernel sums in another order).

Covered: explicit Runge-Kutta solvers with adaptive steps (`PIDController` without `jump_ts`) or
constant steps, values saved at `ts`, forward in time, `nde.Direct` gradients (its `checkpoints`
per loop). Anything else is refused with a `ValueError`.
"""

from __future__ import annotations

import functools as ft
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._compat import checkpointed_while_loop, wrap_term
from .sensitivity import Direct

__all__ = ["solve_batched"]

#: No loop over fewer rows than this: a step of a few rows costs about what a step of one does
#: (per-operation overhead), and every loop is one more program to compile.
MIN_ROWS = 16


class _State(eqx.Module):
    tprev: jax.Array
    tnext: jax.Array
    y: jax.Array
    solver_state: Any
    controller_state: Any
    save_index: jax.Array
    ys: jax.Array
    num_steps: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array
    result: Any


def _set_rows(rows: jax.Array, full: jax.Array, part: jax.Array) -> jax.Array:
    return full.at[rows].set(part)


def _take_rows(rows: jax.Array, x: jax.Array) -> jax.Array:
    return x[rows]


def _clip_to_end(tprev, tnext, t1, t1_clip_floor, keep_step):
    # As diffrax's loop: a step ending within ~100 ULPs of t1 ends at t1.
    clip = tnext > t1_clip_floor
    tclip = jnp.where(keep_step, t1, tprev + 0.5 * (t1 - tprev))
    return jnp.where(clip, tclip, tnext)


def check_batchable(solver: Any, controller: Any, sensitivity: Any) -> None:
    """`ValueError` unless `solve_batched` makes the steps `jax.vmap` of the solve would."""
    if not isinstance(solver, diffrax.AbstractERK):
        raise ValueError(
            f"a batched solve steps explicit Runge-Kutta solvers (e.g. 'tsit5', 'dopri5'), got "
            f"{type(solver).__name__}; use jax.vmap of the model for implicit solvers."
        )
    # (a PIDController given jump_ts/step_ts is a ClipStepSizeController: refused here)
    if not isinstance(controller, diffrax.PIDController | diffrax.ConstantStepSize):
        raise ValueError(
            f"a batched solve needs a PIDController (without jump_ts) or constant steps, got "
            f"{type(controller).__name__}; use jax.vmap of the model."
        )
    if not isinstance(sensitivity, Direct):
        raise ValueError(
            f"a batched solve differentiates through its steps (sensitivity=nde.Direct()), got "
            f"{sensitivity!r}; use jax.vmap of the model for the other sensitivities."
        )


def solve_batched(
    field: Callable,
    solver: diffrax.AbstractERK,
    controller: diffrax.AbstractStepSizeController,
    sensitivity: Direct,
    ts: jax.Array,
    y0: jax.Array,
    args: Any = None,
    *,
    dt0: float | None = None,
    max_steps: int,
    args_axis: int | None = 0,
    shrink: int | None = 2,
) -> tuple[jax.Array, dict, jax.Array]:
    """Solve dy/dt = field(t, y, args) for every row of `y0` (shape `(B, *state)`) from `ts[0]`
    to `ts[-1]`, saved at `ts`: `(ys, stats, result)` with `ys` of shape `(B, len(ts), *state)`,
    `stats` the per-sample step counts (as `diffrax.Solution.stats`) and `result` the per-sample
    diffrax result codes (a batched `diffrax.RESULTS` item).

    `args`: every leaf batched along axis 0 (`args_axis=0`) or shared (`args_axis=None`), as
    `jax.vmap(..., in_axes=args_axis)` reads it. `shrink`: move the rows still going to a batch
    `shrink` times smaller once they fit (`None`: one loop over the whole batch throughout).

    Example:
        >>> import diffrax, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.solve.batched import solve_batched
        >>> ys, stats, _ = solve_batched(
        ...     lambda t, y, k: -k * y, diffrax.Tsit5(), diffrax.PIDController(1e-6, 1e-6),
        ...     nde.Direct(), jnp.array([0.0, 1.0]), jnp.ones((2, 1)), jnp.array([1.0, 2.0]),
        ...     max_steps=64)
        >>> [round(float(v), 4) for v in ys[:, -1, 0]]  # exp(-1), exp(-2)
        [0.3679, 0.1353]
    """
    check_batchable(solver, controller, sensitivity)
    if args_axis not in (0, None):
        raise ValueError(f"args_axis must be 0 (args batched) or None (shared), got {args_axis!r}.")
    if shrink is not None and not (isinstance(shrink, int) and shrink >= 2):
        raise ValueError(f"shrink must be an integer >= 2 or None (no shrinking), got {shrink!r}.")
    if jnp.ndim(y0) < 1:
        raise ValueError(f"y0 must have a leading batch axis, got shape {jnp.shape(y0)}.")
    if is_concrete(ts) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts must be strictly increasing (a batched solve runs forward in time).")
    # The stages of one step as a plain (reverse-differentiable) loop: a checkpointed loop of
    # its own would again keep per-sample weight cotangents, this time per stage.
    if solver.scan_kind is None:
        solver = eqx.tree_at(lambda s: s.scan_kind, solver, "bounded", is_leaf=lambda x: x is None)
    time_dtype = jnp.result_type(ts.dtype, jnp.float32)
    ts = ts.astype(time_dtype)
    t0, t1 = ts[0], ts[-1]
    # as diffeqsolve hands it over (the first step size depends on it)
    terms = wrap_term(diffrax.ODETerm(field), jnp.where(t0 < t1, 1, -1))
    error_order = solver.error_order(terms)
    t1_clip_floor = t1
    for _ in range(100):
        t1_clip_floor = jnp.nextafter(t1_clip_floor, jnp.array(-jnp.inf, time_dtype))
    n_save = ts.shape[0]
    index = jnp.arange(n_save)
    batch = y0.shape[0]
    # batch sizes of the successive loops: each runs until its rows fit in the next
    sizes = [batch]
    while shrink is not None and sizes[-1] > MIN_ROWS:
        sizes.append(-(-sizes[-1] // shrink))

    def init(y, a):
        tnext, controller_state = controller.init(
            terms, t0, t1, y, dt0, a, solver.func, error_order
        )
        tnext = jnp.minimum(tnext, t1)
        return _State(
            tprev=t0,
            tnext=tnext,
            y=y,
            solver_state=solver.init(terms, t0, tnext, y, a),
            controller_state=controller_state,
            save_index=jnp.array(0),
            ys=jnp.zeros((n_save, *y.shape), y.dtype),
            num_steps=jnp.array(0),
            num_accepted_steps=jnp.array(0),
            num_rejected_steps=jnp.array(0),
            result=diffrax.RESULTS.successful,
        )

    def active(s: _State) -> jax.Array:
        return (s.tprev < t1) & diffrax.is_successful(s.result) & (s.num_steps < max_steps)

    def step(s: _State, a) -> _State:
        y, y_error, dense_info, solver_state, solver_result = solver.step(
            terms, s.tprev, s.tnext, s.y, a, s.solver_state, False
        )
        y_error = jnp.where(jnp.isnan(y_error), jnp.inf, y_error)
        keep, tprev, tnext, _, controller_state, controller_result = controller.adapt_step_size(
            s.tprev, s.tnext, s.y, y, a, y_error, error_order, s.controller_state
        )
        tprev = jnp.minimum(tprev, t1)
        tnext = _clip_to_end(tprev, tnext, t1, t1_clip_floor, keep)
        keep_ = lambda new, old: jnp.where(keep, new, old)  # noqa: E731
        y = keep_(y, s.y)
        solver_state = jax.tree_util.tree_map(keep_, solver_state, s.solver_state)
        solver_result = diffrax.RESULTS.where(keep, solver_result, diffrax.RESULTS.successful)
        result = diffrax.RESULTS.where(diffrax.is_okay(s.result), solver_result, s.result)
        result = diffrax.RESULTS.where(diffrax.is_okay(result), controller_result, result)
        # the saved times this accepted step covers, by the step's own interpolation
        interpolator = solver.interpolation_cls(t0=s.tprev, t1=s.tnext, **dense_info)
        save = keep & (index >= s.save_index) & (ts <= s.tnext)
        values = jax.vmap(interpolator.evaluate)(ts)
        mask = save.reshape((n_save,) + (1,) * (values.ndim - 1))
        return _State(
            tprev=tprev,
            tnext=tnext,
            y=y,
            solver_state=solver_state,
            controller_state=controller_state,
            save_index=s.save_index + jnp.sum(save),
            ys=jnp.where(mask, values, s.ys),
            num_steps=s.num_steps + 1,
            num_accepted_steps=s.num_accepted_steps + jnp.where(keep, 1, 0),
            num_rejected_steps=s.num_rejected_steps + jnp.where(keep, 0, 1),
            result=result,
        )

    def run(states: _State, level_args: Any, leave: int) -> _State:
        """Step `states` (with `level_args`) until at most `leave` of them are still going."""

        def body(states: _State) -> _State:
            go = jax.vmap(active)(states)
            new = jax.vmap(step, in_axes=(0, args_axis))(states, level_args)

            def pick(n, o):
                return jnp.where(go.reshape(go.shape + (1,) * (n.ndim - 1)), n, o)

            return jax.tree_util.tree_map(pick, new, states)

        def cond(states: _State) -> jax.Array:
            return jnp.sum(jax.vmap(active)(states)) > leave

        return checkpointed_while_loop(
            cond, body, states, max_steps=max_steps, checkpoints=sensitivity.checkpoints
        )

    states = jax.vmap(init, in_axes=(0, args_axis))(y0, args)
    final = states
    sample = jnp.arange(batch)  # which sample each row of `states` is
    for leave in sizes[1:] + [0]:
        states = run(states, args, leave)
        final = jax.tree_util.tree_map(ft.partial(_set_rows, sample), final, states)
        if leave:
            # the rows still going first, then as many finished ones as fill the smaller batch
            rows = jnp.argsort(jnp.invert(jax.vmap(active)(states)), stable=True)[:leave]
            states = jax.tree_util.tree_map(ft.partial(_take_rows, rows), states)
            sample = sample[rows]
            if args_axis is not None:
                args = jax.tree_util.tree_map(ft.partial(_take_rows, rows), args)
    result = jax.vmap(
        lambda tprev, r: diffrax.RESULTS.where(
            (tprev < t1) & diffrax.is_okay(r), diffrax.RESULTS.max_steps_reached, r
        )
    )(final.tprev, final.result)
    stats = {
        "num_steps": final.num_steps,
        "num_accepted_steps": final.num_accepted_steps,
        "num_rejected_steps": final.num_rejected_steps,
    }
    return final.ys, stats, result
