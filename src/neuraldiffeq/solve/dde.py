"""`solve_dde`: delay differential equations y'(t) = f(t, y(t), y(t - τ₁), ..., y(t - τ_L), args).

diffrax has no DDE solver (its issues #406 and #721 ask for one), so this module drives diffrax's
own pieces in a loop of its own, the way `diffrax.diffeqsolve` does for ODEs:

- each step is `solver.step(...)` of a diffrax Runge–Kutta solver (Tsit5, Bosh3, Dopri5, ...),
  whose `dense_info` is kept, and the past is read back through `solver.interpolation_cls`;
- step sizes come from `diffrax.PIDController` (the embedded error estimate), wrapped in diffrax's
  `ClipStepSizeController` so that the propagated discontinuities are stepped onto exactly;
- the loop is `equinox.internal.while_loop(kind="checkpointed")`, as in diffrax's
  `RecursiveCheckpointAdjoint`, so reverse-mode gradients flow through it with bounded memory.

No Runge–Kutta tableau, interpolant or step-size rule is written here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_array, is_concrete
from .config import build_config, on_failure, shortcuts
from .sensitivity import Direct

#: at most this many propagated discontinuities are tracked (the earliest ones).
MAX_DISCONTINUITIES = 256


class DDESolution(eqx.Module):
    """What `solve_dde` returns.

    Attributes:
        ts: the requested output times, shape (T,).
        ys: the solution at `ts`, shape (T, D).
        num_steps, num_accepted_steps: step counts of the adaptive loop.
        result: a `diffrax.RESULTS` value (`successful`, or why the solve failed).
        t0, t1: the interval solved over.
    Call `sol.evaluate(t)` for the dense (continuous) solution at any t in [t0, t1]; t < t0
    gives the history. (It holds the history callable: return it from `eqx.filter_jit`, or
    return `sol.ys` from `jax.jit`.)

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> sol = nde.solve_dde(lambda t, y, yl, args: -yl[0], jnp.ones(1), [1.0], 0.0, 1.0)
        >>> round(float(sol.evaluate(0.5)[0]), 6), float(sol.evaluate(-1.0)[0])
        (0.5, 1.0)
    """

    ts: jax.Array
    ys: jax.Array
    num_steps: jax.Array
    num_accepted_steps: jax.Array
    result: diffrax.RESULTS
    t0: jax.Array
    t1: jax.Array
    _past: Any

    @property
    def stats(self) -> dict[str, jax.Array]:
        """The step counts, named as in `diffrax.Solution.stats`."""
        return {
            "num_steps": self.num_steps,
            "num_accepted_steps": self.num_accepted_steps,
            "num_rejected_steps": self.num_steps - self.num_accepted_steps,
        }

    def evaluate(self, t) -> jax.Array:
        """The dense solution at a scalar time `t` (history for t < t0), shape (D,)."""
        return self._past(jnp.asarray(t, self.ts.dtype))


class _Buffer(eqx.Module):
    """One dense-output record per accepted step (only arrays: it rides in the loop's carry).

    Step i covers [t_lo[i], t_hi[i]]; `search[i]` is t_hi[i] for filled slots and +inf for empty
    ones, so a binary search (`jnp.searchsorted`) finds the step containing a time.
    """

    t_lo: jax.Array
    t_hi: jax.Array
    search: jax.Array
    dense: Any
    count: jax.Array


class _Past(eqx.Module):
    """The solution so far: history before t0, then the solver's interpolant of each step."""

    history: Callable
    solver: diffrax.AbstractSolver
    t0: jax.Array
    buffer: _Buffer

    def __call__(self, s):
        b = self.buffer
        idx = jnp.searchsorted(b.search, s, side="left")
        idx = jnp.minimum(idx, jnp.maximum(b.count - 1, 0))
        info = jax.tree_util.tree_map(lambda x: x[idx], b.dense)
        interp = self.solver.interpolation_cls(t0=b.t_lo[idx], t1=b.t_hi[idx], **info)
        inside = interp.evaluate(jnp.maximum(s, self.t0))
        # min(s, t0): the branch not taken must still be finite, or its gradient would be NaN.
        return jnp.where(s < self.t0, self.history(jnp.minimum(s, self.t0)), inside)


class _State(eqx.Module):
    tprev: jax.Array
    tnext: jax.Array
    y: jax.Array
    solver_state: Any
    controller_state: Any
    made_jump: jax.Array
    buffer: _Buffer
    num_steps: jax.Array
    result: diffrax.RESULTS


def solve_dde(
    field: Callable,
    history: Callable | Any,
    lags: Sequence[float] | float,
    t0: float,
    t1: float,
    ts=None,
    *,
    y0=None,
    args: Any = None,
    solver: str | diffrax.AbstractSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = None,
    sensitivity: Any = None,
    config: Any = None,
    throw: bool = True,
) -> DDESolution:
    """Solve the delay differential equation y'(t) = field(t, y(t), y_lagged, args) on [t0, t1].

    `y_lagged[i]` is y(t - lags[i]) (shape (L, D)); y(t) = history(t) for t < t0, and
    y(t0) = y0 (default history(t0)).

    How it works:
        Steps are diffrax solver steps (`solver.step`) whose dense output is stored in a
        fixed-size buffer of `max_steps` records; the lagged states are read back from it by binary
        search and the solver's own interpolant (`solver.interpolation_cls`), or from `history`
        before t0. Step sizes come from `diffrax.PIDController` on the embedded error estimate.

        Discontinuities: the solution's derivatives jump at t0 (where the history meets the
        solution) and these jumps propagate to t0 + k₁τ₁ + ... + k_Lτ_L; the smoothing order grows
        by one each time, so the points with k₁ + ... + k_L ≤ the method's order are stepped onto
        exactly with diffrax's `ClipStepSizeController`: t0 + τᵢ as `jump_ts` (y' itself jumps
        there when y0 != history(t0): the step ends just before it and the next starts just after
        it, so each stage reads the correct one-sided past), the others as `step_ts`. Later
        points are smooth enough for the method's order. With constant steps (dt0 alone), choose
        dt0 dividing the lags so that the steps land on them.

        Steps longer than the smallest lag: prevented, by limiting the step. Every step is at most
        min(lags) long (`PIDController(dtmax=min(lags))`), so each stage time t + c·h (c ≤ 1)
        lagged by τ ≥ min(lags) lies at or before the start of the current step, i.e. in the
        already-computed past, and no fixed-point iteration is needed. (For lags much smaller
        than the solution's time scale this costs extra steps.)

        Gradients: the loop is `equinox.internal.while_loop(kind="checkpointed")` (what diffrax's
        `RecursiveCheckpointAdjoint` uses), so `jax.grad` works w.r.t. anything `field`, `history`
        and `y0` depend on. Forward-mode (`jax.jvp`) is not supported.

        Compilation: after the checks, the solve is one `equinox.filter_jit` program, as
        `diffrax.diffeqsolve` is: called again with the same `field`, settings and shapes, it
        runs without compiling (pass the same function, not a new lambda each time).

    Arguments:
        field: `field(t, y, y_lagged, args) -> dy/dt`, y of shape (D,), y_lagged of shape (L, D).
        history: `history(t) -> (D,)` for t < t0, or a constant array of shape (D,).
        lags: the constant delays, positive numbers (concrete, not traced).
        t0, t1: the interval.
        ts: output times in [t0, t1] (default `[t0, t1]`).
        y0: the state at t0, default `history(t0)`.
        solver, rtol, atol, dt0, max_steps, sensitivity, config: the solve settings, or one
            `config=nde.SolveConfig(...)`, with the step-size rule of `neuraldiffeq.solve.config`
            (rtol/atol: adaptive steps, dt0 the first one; dt0 alone: constant steps of dt0,
            at most the smallest lag, ideally dividing the lags). The solver must be an
            explicit diffrax Runge–Kutta solver (`"tsit5"`, `"dopri5"`, `"dopri8"`, `"bosh3"`,
            `"ralston"`, `"heun"`, `"midpoint"`, `"euler"`). Defaults: `"tsit5"`,
            rtol = atol = 1e-6, max_steps 4096 (the size of the dense-output buffer and the
            bound of the loop), `nde.Direct()`, the only sensitivity a DDE accepts
            (`nde.Direct(checkpoints=n)`: checkpoints of the reverse pass, default
            O(sqrt(max_steps)) as equinox).
        throw: raise if the solve fails (too many steps): `nde.SolveError` with the cause and
            the fix where the result is concrete, a run-time error inside compiled code; else
            `result` says so and `ys` is inf.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> sol = nde.solve_dde(lambda t, y, yl, args: -yl[0], jnp.ones(1), [1.0], 0.0, 2.0,
        ...                     ts=jnp.array([0.0, 1.0, 2.0]), rtol=1e-8, atol=1e-8)
        >>> [round(float(v), 6) for v in sol.ys[:, 0]]  # exact: 1, 0, -1/2
        [1.0, 0.0, -0.5]
    """
    if not callable(field):
        raise ValueError(
            f"field must be callable as field(t, y, y_lagged, args), got {type(field).__name__}."
        )
    lags_np = _check_lags(lags)
    config = _dde_config("solve_dde", config, shortcuts(locals()), DDE_SOLVE_DEFAULTS)
    if not config.adaptive and config.dt0 > lags_np.min() * (1 + 1e-12):
        raise ValueError(
            f"dt0={config.dt0} is longer than the smallest lag {lags_np.min()}: constant steps "
            "must be at most the smallest lag (steps are limited, not iterated; see the docstring)."
        )
    history_fn, y0, dtype = _check_history(history, y0, t0)
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    if is_concrete(t0) and is_concrete(t1) and not float(t1) > float(t0):
        raise ValueError(f"t1 must be greater than t0, got t0={float(t0)}, t1={float(t1)}.")
    ts = jnp.stack([t0, t1]) if ts is None else as_array(ts, dtype)
    if is_concrete(ts) and is_concrete(t0) and is_concrete(t1):
        arr = np.asarray(ts)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"ts must be a 1-D array of output times, got shape {arr.shape}.")
        if np.any(arr < float(t0)) or np.any(arr > float(t1)):
            raise ValueError(f"ts must lie in [t0, t1] = [{float(t0)}, {float(t1)}].")
    _check_field_shape(field, t0, y0, lags_np.size, args)
    lags = tuple(float(lag) for lag in lags_np)
    max_steps = config.steps_for(t0, t1)  # from the span while t0 and t1 are concrete
    sol = _solve(field, history_fn, lags, t0, t1, ts, y0, args, config, max_steps)
    if throw and is_concrete(diffrax.is_okay(sol.result)):  # the code is an enumeration item
        stats = {**sol.stats, "max_steps": max_steps}
        on_failure(sol, None, config=config, model="solve_dde", stats=stats)
    elif throw:  # compiled: no Python error to raise, a run-time check instead
        ys = eqx.error_if(
            sol.ys,
            jnp.invert(diffrax.is_okay(sol.result)),
            "solve_dde failed: too many steps (raise max_steps) or a non-finite state "
            "(check the field and history, or tighten/loosen rtol and atol).",
        )
        sol = eqx.tree_at(lambda s: s.ys, sol, ys)
    return sol


@eqx.filter_jit
def _solve(field, history_fn, lags, t0, t1, ts, y0, args, config, max_steps) -> DDESolution:
    """The solve itself, as one compiled program (like `diffrax.diffeqsolve`): called eagerly,
    its set-up is not run operation by operation, each compiled on its own."""
    lags_np = np.asarray(lags)
    dtype = y0.dtype
    solver, adaptive, dt0 = config.solver, config.adaptive, config.dt0
    lags_arr = jnp.asarray(lags_np, dtype)

    def vf(t, y, full_args):
        user_args, past = full_args
        y_lagged = jax.vmap(past)(t - lags_arr)
        return field(t, y, y_lagged, user_args)

    terms = diffrax.ODETerm(vf)
    order = solver.order(terms)
    offsets = _discontinuity_offsets(lags_np, order)
    first = np.isin(offsets, np.round(lags_np, 12))
    if adaptive:
        # t0 + τᵢ: y(t - τᵢ) itself jumps there when y0 != history(t0), so y' jumps: these are
        # `jump_ts` (the step ends just before, the next starts just after and FSAL solvers
        # re-evaluate), so every stage reads the correct one-sided history. The later points only
        # carry jumps in higher derivatives: `step_ts`, stepped onto exactly.
        controller = diffrax.ClipStepSizeController(
            config.stepsize_controller(dtmax=float(lags_np.min())),
            step_ts=t0 + jnp.asarray(offsets[~first], dtype) if np.any(~first) else None,
            jump_ts=t0 + jnp.asarray(offsets[first], dtype),
        )
    else:
        controller = config.stepsize_controller()
    dt0_arr = None if dt0 is None else jnp.asarray(min(dt0, float(lags_np.min())), dtype)

    # The buffer: a dummy non-degenerate interval in empty slots keeps every lookup finite.
    dense_struct = _dense_struct(solver, field, history_fn, lags_arr, t0, y0, args)
    buffer = _Buffer(
        t_lo=jnp.zeros(max_steps, dtype),
        t_hi=jnp.ones(max_steps, dtype),
        search=jnp.full(max_steps, jnp.inf, dtype),
        dense=jax.tree_util.tree_map(
            lambda s: jnp.zeros((max_steps, *s.shape), s.dtype), dense_struct
        ),
        count=jnp.array(0),
    )
    past = _Past(history_fn, solver, t0, buffer)
    error_order = solver.error_order(terms)
    tnext, controller_state = controller.init(
        terms, t0, t1, y0, dt0_arr, (args, past), solver.func, error_order
    )
    tnext = jnp.minimum(tnext, t1)
    solver_state = solver.init(terms, t0, tnext, y0, (args, past))
    init = _State(
        tprev=t0,
        tnext=tnext,
        y=y0,
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=jnp.array(False),
        buffer=buffer,
        num_steps=jnp.array(0),
        result=diffrax.RESULTS.successful,
    )
    # Like diffrax: a step ending within ~100 ULP of t1 is stretched to t1 (no sliver steps).
    t1_floor = t1 - 100 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(t1), 1.0)

    def cond_fun(state):
        return (state.tprev < t1) & (state.result == diffrax.RESULTS.successful)

    def body_fun(state):
        full_args = (args, _Past(history_fn, solver, t0, state.buffer))
        y1, y_error, dense_info, solver_state, solver_result = solver.step(
            terms,
            state.tprev,
            state.tnext,
            state.y,
            full_args,
            state.solver_state,
            state.made_jump,
        )
        y_error = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isnan(x), jnp.inf, x), y_error)
        keep, tprev, tnext, made_jump, controller_state, controller_result = (
            controller.adapt_step_size(
                state.tprev,
                state.tnext,
                state.y,
                y1,
                full_args,
                y_error,
                error_order,
                state.controller_state,
            )
        )
        tprev = jnp.minimum(tprev, t1)
        tnext = jnp.where(tnext > t1_floor, jnp.where(keep, t1, tprev + 0.5 * (t1 - tprev)), tnext)
        # Record the accepted step's dense output in the next slot.
        b = state.buffer
        i = b.count
        put = lambda buf, v: buf.at[i].set(jnp.where(keep, v, buf[i]))  # noqa: E731
        new_buffer = _Buffer(
            t_lo=put(b.t_lo, state.tprev),
            t_hi=put(b.t_hi, state.tnext),
            search=put(b.search, state.tnext),
            dense=jax.tree_util.tree_map(put, b.dense, dense_info),
            count=jnp.where(keep, i + 1, i),
        )
        result = diffrax.RESULTS.where(keep, solver_result, diffrax.RESULTS.successful)
        result = diffrax.RESULTS.where(
            result == diffrax.RESULTS.successful, controller_result, result
        )
        # The buffer is full: no room for another step, so the solve stops as failed.
        full = (new_buffer.count >= max_steps) & (tprev < t1)
        result = diffrax.RESULTS.where(
            full & (result == diffrax.RESULTS.successful),
            diffrax.RESULTS.max_steps_reached,
            result,
        )
        return _State(
            tprev=tprev,
            tnext=tnext,
            y=jnp.where(keep, y1, state.y),
            solver_state=jax.tree_util.tree_map(
                lambda a, b: jnp.where(keep, a, b), solver_state, state.solver_state
            ),
            controller_state=controller_state,
            made_jump=jnp.where(keep, made_jump, state.made_jump),
            buffer=new_buffer,
            num_steps=state.num_steps + 1,
            result=result,
        )

    final = eqxi.while_loop(
        cond_fun,
        body_fun,
        init,
        max_steps=max_steps,
        kind="checkpointed",
        checkpoints=config.sensitivity.checkpoints,
    )
    result = diffrax.RESULTS.where(
        (final.tprev < t1) & (final.result == diffrax.RESULTS.successful),
        diffrax.RESULTS.max_steps_reached,
        final.result,
    )
    final_past = _Past(history_fn, solver, t0, final.buffer)
    ys = jax.vmap(final_past)(ts)
    ys = on_failure(result, ys)  # traced here: inf where the solve failed
    return DDESolution(
        ts=ts,
        ys=ys,
        num_steps=final.num_steps,
        num_accepted_steps=final.buffer.count,
        result=result,
        t0=t0,
        t1=t1,
        _past=final_past,
    )


#: solve_dde's solve defaults.
DDE_SOLVE_DEFAULTS = dict(
    solver="tsit5", rtol=1e-6, atol=1e-6, max_steps=4096, sensitivity="direct"
)


def _dde_config(name, config, given, defaults):
    """The solve configuration of a DDE (`solve_dde`, `NeuralDDE`): explicit Runge–Kutta solvers
    and the discrete adjoint through the checkpointed loop only."""
    config = build_config(name, config, given, defaults)
    solver = config.solver
    if not isinstance(solver, diffrax.AbstractRungeKutta) or solver.tableau.implicit:
        raise ValueError(
            f"solver={type(solver).__name__} is not supported by {name}: use an explicit "
            "Runge–Kutta solver such as 'tsit5', 'dopri5', 'dopri8' or 'bosh3'."
        )
    hint = (
        "The DDE loop is differentiated as it runs (checkpointed); continuous adjoints and "
        "forward mode are not available for delay equations"
    )
    return config.for_model(name, [Direct], Direct, hint)


def _check_lags(lags) -> np.ndarray:
    if isinstance(lags, jax.core.Tracer):
        raise ValueError("lags must be concrete numbers (not traced), e.g. a tuple of floats.")
    try:
        arr = np.atleast_1d(np.asarray(lags, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(
            f"lags must be a positive number or a list of them, got {lags!r}."
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lags must be a non-empty 1-D list of delays, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(
            f"lags must be positive finite delays, got {arr.tolist()}. A zero lag is just y(t): "
            "use the current state instead."
        )
    return arr


def _check_history(history, y0, t0):
    """A callable history(t) -> (D,), the state y0 and the dtype; ValueErrors on shape mismatch."""
    if callable(history):
        try:
            out = jax.eval_shape(history, jnp.asarray(t0, jnp.result_type(float)))
        except Exception as e:  # noqa: BLE001 - reported as a clear input error
            raise ValueError(f"history(t) failed on t={t0!r}: {e}") from e
        if not (hasattr(out, "shape") and len(out.shape) == 1):
            raise ValueError(
                f"history(t) must return a 1-D state of shape (D,), got "
                f"{getattr(out, 'shape', type(out).__name__)}."
            )
        hist_shape, hist_dtype = out.shape, out.dtype
        history_fn = history
    else:
        const = jnp.asarray(history)
        if const.ndim != 1:
            raise ValueError(
                f"history must be a callable history(t) -> (D,) or a constant state of shape "
                f"(D,), got an array of shape {const.shape}."
            )
        if not jnp.issubdtype(const.dtype, jnp.inexact):
            const = const.astype(jnp.result_type(float))
        hist_shape, hist_dtype = const.shape, const.dtype
        history_fn = _Constant(const)
    if y0 is None:
        y0 = history_fn(jnp.asarray(t0, hist_dtype))
    y0 = jnp.asarray(y0)
    if y0.shape != hist_shape:
        raise ValueError(
            f"history has shape {hist_shape} but the initial state y0 has shape {y0.shape}; "
            "they must match (one entry per state variable)."
        )
    dtype = jnp.result_type(y0.dtype, hist_dtype, float)
    return history_fn, y0.astype(dtype), dtype


class _Constant(eqx.Module):
    value: jax.Array

    def __call__(self, t):
        return self.value


def _check_field_shape(field, t0, y0, n_lags, args):
    try:
        out = jax.eval_shape(field, t0, y0, jnp.zeros((n_lags, *y0.shape), y0.dtype), args)
    except Exception as e:  # noqa: BLE001 - reported as a clear input error
        raise ValueError(
            f"field(t, y, y_lagged, args) failed with y of shape {y0.shape} and y_lagged of shape "
            f"{(n_lags, *y0.shape)}: {e}"
        ) from e
    if getattr(out, "shape", None) != y0.shape:
        raise ValueError(
            f"field must return dy/dt of the state's shape {y0.shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def _discontinuity_offsets(lags: np.ndarray, order: int) -> np.ndarray:
    """Sorted distinct k·τ (k ≥ 0 integers, 1 ≤ Σk ≤ order): where derivative jumps propagate."""
    offsets = set()
    for counts in itertools.product(range(order + 1), repeat=len(lags)):
        if 1 <= sum(counts) <= order:
            offsets.add(round(float(np.dot(counts, lags)), 12))
    return np.array(sorted(offsets)[:MAX_DISCONTINUITIES])


def _dense_struct(solver, field, history_fn, lags_arr, t0, y0, args):
    """Shapes of one step's dense_info (they do not depend on the past, so read it from history)."""

    def vf(t, y, _):
        return field(t, y, jax.vmap(history_fn)(t - lags_arr), args)

    def one_step():
        terms = diffrax.ODETerm(vf)
        state = solver.init(terms, t0, t0 + 1, y0, None)
        return solver.step(terms, t0, t0 + 1, y0, None, state, False)[2]

    return jax.eval_shape(one_step)
