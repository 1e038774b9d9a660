"""Hybrid solves: events (a condition crossing zero) that end the solve or jump the state, and
scheduled jumps (doses at given times), with gradients through the event times.

A hybrid solve is a sequence of smooth solves ("segments") joined at events. Each segment runs
from the current time `t_a` to the next scheduled time (or the end of the span) and stops early at
the first crossing of any event condition. Each segment is solved twice:

1. a search solve, with no gradient, that locates the event: `diffrax.Event` with a Newton root
   finder on the solver's dense output, so the event time is found to the solver's tolerance;
2. the differentiable solve from `t_a` to that time, through the model's own sensitivity, saving
   the requested times that fall inside the segment.

The event time t* is then differentiated by the implicit-function theorem, applied outside the
solve: g(t*, y(t*; θ), θ) = 0 gives dt*/dθ = -(g_y ∂y/∂θ + g_θ) / (g_t + g_y f). It is written as
`t* = t*₀ - (g(t*₀, y(t*₀), θ) - stop_gradient(g)) / stop_gradient(dg/dt)`, which has the value
t*₀ and exactly that derivative, and the state at the event as `y + f·(t* - t*₀)` (value y,
derivative ∂y/∂θ + f dt*/dθ). A segment that starts at a time that moves with θ starts from
`y_a - f·(t_a - t_a₀)`. So every sensitivity (the discrete `Direct`, `Forward`, and the continuous
adjoints, which differentiate the smooth segment only) gives the gradient of the hybrid solution,
as torchdiffeq's `odeint_event` does, and no gradient flows through a root finder's iterations.

The segments run in a `jax.lax.scan` of fixed length `max_events + (scheduled jumps) + 1`; a
solve that needs more events than `max_events` is reported as failed (values `inf`; raised when
`throw=True`), never looped forever.

Conventions: the state at an event or scheduled time is the state after the jump (saved values
there are post-jump); `y0` is the state at `ts[0]` (a jump scheduled exactly at `ts[0]` is part of
`y0`, not applied again), so `ys[0] == y0`. After a terminating event, saved values are `inf`
(diffrax's convention).

Example:
    >>> import jax.numpy as jnp, neuraldiffeq as nde
    >>> from neuraldiffeq.solve.events import solve_hybrid
    >>> bounce = nde.Event(lambda t, y, args: y[0], direction="down",
    ...                    jump=lambda t, y, args: jnp.array([y[0], -0.8 * y[1]]))
    >>> config = nde.SolveConfig("tsit5", rtol=1e-8, atol=1e-8, sensitivity=nde.Direct())
    >>> field = lambda t, y, args: jnp.array([y[1], -9.81])
    >>> sol = solve_hybrid(config, field, jnp.array([0.0, 3.0]), jnp.array([10.0, 0.0]), None,
    ...                    events=(bounce,), max_events=4)
    >>> round(float(sol.event_ts[0]), 6)  # sqrt(2 * 10 / 9.81)
    1.427843
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .._checks import is_concrete
from .config import SolveConfig, on_failure
from .errors import SolveError

#: Crossing directions an event condition may watch, as diffrax's `Event(direction=...)` wants.
DIRECTIONS = {"up": True, "down": False, "either": None, None: None}


class Event(eqx.Module):
    """A condition `g(t, y, args)` whose zero crossing ends the solve or jumps the state.

    The event happens when `g` crosses zero in `direction` (`"down"`: from positive to
    non-positive, `"up"`: the reverse, `"either"`/None: both). Its time is found by root finding
    on the solver's dense output, to the solver's tolerance. Then `jump(t, y, args) -> y` (same
    shape as `y`) gives the state the solve restarts from, or, with `jump=None`, the solve ends
    there. `condition` and `jump` may be equinox modules with trainable arrays (a learned
    restitution, a learned reset): gradients reach them, and the event time's dependence on the
    parameters is differentiated by the implicit-function theorem.

    After a jump the solve restarts on the event surface, where `g` is zero up to round-off: give
    a `direction` (a ball falls through the floor only downwards) or make the jump move the state
    off the surface, so that round-off does not count as a second crossing.

    Arguments:
        condition: `g(t, y, args) -> scalar`.
        direction: `"down"`, `"up"` or `"either"` (None).
        jump: `h(t, y, args) -> new y`, or None for an event that ends the solve.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> floor = nde.Event(lambda t, y, args: y[0], direction="down",
        ...                   jump=lambda t, y, args: y * jnp.array([1.0, -0.9]))
        >>> floor.terminal
        False
    """

    condition: Callable
    jump: Callable | None = None
    direction: str | None = eqx.field(default="either", static=True)

    def __check_init__(self):
        if not callable(self.condition):
            raise ValueError(
                "condition must be callable as condition(t, y, args) -> scalar, got "
                f"{type(self.condition).__name__}."
            )
        if self.jump is not None and not callable(self.jump):
            raise ValueError(
                "jump must be None (the event ends the solve) or callable as jump(t, y, args) -> "
                f"new state, got {type(self.jump).__name__}."
            )
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'down', 'up' or 'either', got {self.direction!r}.")

    @property
    def terminal(self) -> bool:
        """True when the event ends the solve (no jump)."""
        return self.jump is None

    def apply(self, t, y, args) -> jax.Array:
        """The state after the event (`y` itself for a terminating one)."""
        return y if self.jump is None else self.jump(t, y, args)


class Schedule(eqx.Module):
    """Jumps at given times: `y ← y + amount_k` at `times[k]` (doses, feeds, kicks).

    `amounts` is either `(K, *state shape)` (added to the whole state) or `(K,)` with `into`, the
    index of the state component that receives it (a dose into compartment `into`). The amounts
    may be data or trainable parameters (gradients reach them, and the times too). Times must be
    increasing; a time before the span's start is skipped and one exactly at `ts[0]` is taken to
    be part of `y0` (see the module docstring). One schedule per series: give each series its
    own `Schedule`, or stack them with a leading series axis and pass them through
    `nde.PerSeries` (see `nde.HybridODE`).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> doses = nde.Schedule(times=[0.0, 12.0, 24.0], amounts=[100.0, 100.0, 100.0], into=0)
        >>> doses.increment(1, jnp.zeros(2)).tolist()
        [100.0, 0.0]
    """

    times: jax.Array
    amounts: jax.Array
    into: int | None = eqx.field(default=None, static=True)

    def __init__(self, times, amounts, into: int | None = None):
        times = times if isinstance(times, jax.Array) else jnp.asarray(times)
        amounts = amounts if isinstance(amounts, jax.Array) else jnp.asarray(amounts)
        if not jnp.issubdtype(times.dtype, jnp.floating):
            times = times.astype(jnp.result_type(float))
        if not jnp.issubdtype(amounts.dtype, jnp.floating):
            amounts = amounts.astype(jnp.result_type(float))
        # (K,) for one series; (B, K) for B series (one schedule per series, see nde.PerSeries)
        if times.ndim not in (1, 2) or times.shape[-1] < 1:
            raise ValueError(
                "Schedule times must be a non-empty array of jump times, shape (K,) (or (B, K) "
                f"for one schedule per series), got shape {times.shape}."
            )
        if amounts.shape[: times.ndim] != times.shape:
            raise ValueError(
                f"Schedule amounts must have one entry per time (times have shape {times.shape}),"
                f" got shape {amounts.shape}."
            )
        if into is not None:
            if isinstance(into, bool) or not (isinstance(into, int | np.integer) and into >= 0):
                raise ValueError(f"into must be a state index (an int >= 0), got {into!r}.")
            if amounts.ndim != times.ndim:
                raise ValueError(
                    f"with into={into}, amounts are one number per time (shape {times.shape}), "
                    f"got shape {amounts.shape}."
                )
            into = int(into)
        if is_concrete(times):
            t = np.asarray(times)
            if not np.all(np.isfinite(t)) or np.any(np.diff(t, axis=-1) <= 0):
                raise ValueError(
                    f"Schedule times must be finite and strictly increasing, got {t.tolist()}."
                )
        self.times, self.amounts, self.into = times, amounts, into

    def increment(self, k, y) -> jax.Array:
        """The state after the k-th jump: `y + amounts[k]` (into one component with `into`)."""
        if self.into is None:
            return y + self.amounts[k]
        return y.at[self.into].add(self.amounts[k])

    def check(self, ts, y0_shape, name: str = "schedule") -> None:
        """A `ValueError` if the times leave the span `ts` or the amounts miss the state shape."""
        if self.times.ndim != 1:
            raise ValueError(
                f"{name} holds {self.times.shape[0]} schedules (times of shape "
                f"{self.times.shape}); one solve takes one: pass them to a strategy as "
                "nde.PerSeries(nde.Exogenous(schedule=...)), or index one series."
            )
        if self.into is None and self.amounts.shape[1:] != tuple(y0_shape):
            raise ValueError(
                f"{name}.amounts has shape {self.amounts.shape}: one state-shaped {tuple(y0_shape)}"
                " jump per time is needed, or pass into=<component> with one number per time."
            )
        if self.into is not None and (len(y0_shape) != 1 or self.into >= y0_shape[0]):
            raise ValueError(
                f"{name}.into={self.into} is not a component of a state of shape {tuple(y0_shape)}."
            )
        if is_concrete(self.times) and is_concrete(ts):
            t, span = np.asarray(self.times), np.asarray(ts)
            if t.ndim == 1 and (t[0] < span[0] or t[-1] > span[-1]):
                raise ValueError(
                    f"{name}.times {t.tolist()} reach outside the span [{span[0]}, {span[-1]}] "
                    "of ts; drop those jumps or extend ts."
                )


class HybridSolution(eqx.Module):
    """What `solve_hybrid` returns.

    `ys`: `(T, *y0.shape)` at `ts` (post-jump at jump times; `inf` after a terminating event and
    everywhere when the solve failed); `event_ts`: `(max_events,)` the event times in order
    (differentiable; `inf` in unused slots); `event_index`: which event of `events` happened
    (-1 in unused slots); `n_events`; `result`: a `diffrax.RESULTS`.
    """

    ts: jax.Array
    ys: jax.Array
    event_ts: jax.Array
    event_index: jax.Array
    n_events: jax.Array
    result: diffrax.RESULTS


class SmoothPart(eqx.Module):
    """What a model lends a hybrid solve: the smooth flow between events.

    `nde.HybridODE(model, events)` asks `model.hybrid_part()` for it, so that every ODE-type
    model takes events through the one mechanism of `solve_hybrid` (a model that cannot, such
    as a delay equation, raises a `ValueError` from `hybrid_part` naming what is accepted).

    Arguments:
        field: `f(t, y, args)` of the state the solve integrates.
        config: the model's `nde.SolveConfig` (solver, tolerances, sensitivity).
        mass_matrix: M of M·dy/dt = f (a mass-matrix DAE of index 1), or None for an ODE. With
            M singular, the state's rate at an event is solved from M and the differentiated
            algebraic equations, and after every jump the algebraic components are solved for
            again (Newton) so that the restart is consistent; the jump sets the others.
        initial_state: `y0 -> state` (what the model's `y0` means, e.g. positions alone), or None.
        observe: `ys -> what the model returns` (e.g. the positions of the state), or None.
        check: `check(ts, y0, args)`, the model's own checks of `y0` before anything compiles.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> part = nde.NeuralODE(lambda t, y, a: -y).hybrid_part()
        >>> type(part).__name__, part.mass_matrix is None
        ('SmoothPart', True)
    """

    field: Callable
    config: SolveConfig
    mass_matrix: tuple | None = eqx.field(default=None, static=True)
    initial_state: Callable | None = None
    observe: Callable | None = None
    check: Callable | None = None


def check_events(events: Any, max_events: Any) -> tuple[Event, ...]:
    """The events as a tuple (a `ValueError` for anything but `nde.Event`s, or a bad bound)."""
    if events is None:
        events = ()
    if isinstance(events, Event):
        events = (events,)
    if not isinstance(events, Sequence) or not all(isinstance(e, Event) for e in events):
        raise ValueError(
            "events must be an nde.Event or a list of them, e.g. [nde.Event(lambda t, y, args: "
            "y[0], direction='down', jump=...)]."
        )
    if isinstance(max_events, bool) or not (
        isinstance(max_events, int | np.integer) and max_events >= 1
    ):
        raise ValueError(
            f"max_events must be a positive integer (the most events one solve may have before "
            f"it is reported as failed), got {max_events!r}."
        )
    return tuple(events)


def check_hybrid_shapes(field, events, schedule, ts, y0, args) -> None:
    """Shape checks before anything compiles (`jax.eval_shape`): each condition returns a scalar,
    each jump keeps the state's shape, the schedule fits the state and lies in the span."""
    y = jax.ShapeDtypeStruct(jnp.shape(y0), jnp.result_type(y0))
    t = jax.ShapeDtypeStruct((), jnp.result_type(y0))
    for i, event in enumerate(events):
        out = jax.eval_shape(lambda t, y, e=event: e.condition(t, y, args), t, y)
        if getattr(out, "shape", None) != ():
            raise ValueError(
                f"events[{i}].condition returns shape {getattr(out, 'shape', type(out).__name__)}"
                f"; it must return one number g(t, y, args) whose zero crossing is the event "
                "(for several conditions, pass several nde.Event)."
            )
        if event.jump is not None:
            out = jax.eval_shape(lambda t, y, e=event: e.jump(t, y, args), t, y)
            if getattr(out, "shape", None) != y.shape:
                raise ValueError(
                    f"events[{i}].jump returns shape {getattr(out, 'shape', type(out).__name__)} "
                    f"for a state of shape {y.shape}; a jump must return the new state, with the "
                    "same shape."
                )
    if schedule is not None:
        schedule.check(ts, y.shape)
    out = jax.eval_shape(lambda t, y: field(t, y, args), t, y)
    if getattr(out, "shape", None) != y.shape:
        raise ValueError(
            f"the vector field returns shape {getattr(out, 'shape', type(out).__name__)} for a "
            f"state of shape {y.shape}; it must return dy/dt with the state's shape."
        )


def _stop(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree
    )


def solve_hybrid(
    config: SolveConfig,
    field: Callable,
    ts: jax.Array,
    y0: jax.Array,
    args: Any,
    *,
    events: Sequence[Event] = (),
    schedule: Schedule | None = None,
    max_events: int = 16,
    jump_ts: jax.Array | None = None,
    throw: bool = False,
    mass_matrix: Any = None,
    model: str = "HybridODE",
) -> HybridSolution:
    """dy/dt = field(t, y, args) over `ts` with `events` and a `schedule` (module docstring).

    `config` is the model's solve configuration (its sensitivity differentiates each smooth
    segment); `jump_ts`: times where the field itself jumps (a piecewise-linear input), passed to
    the step-size controller. With `throw=True` (eager calls) a failed solve raises (the
    message names `model`). `mass_matrix`: M of a mass-matrix DAE M·dy/dt = field (see
    `SmoothPart`), with `config`'s solver a `Radau5` carrying it.

    Example: see the module docstring.
    """
    events = tuple(events)
    # where the steps stop is not differentiated (the field's own dependence on those times is)
    jump_ts = None if jump_ts is None else jax.lax.stop_gradient(jump_ts)
    # the state's dtype is what the field makes of it (float32 data, float64 parameters)
    rate = jax.eval_shape(field, ts[0], y0, args)
    dtypes = [y0.dtype, rate.dtype]
    for event in events:  # and what the events make of it (a float64 restitution, say)
        dtypes.append(jax.eval_shape(event.condition, ts[0], y0, args).dtype)
        if event.jump is not None:
            dtypes.append(jax.eval_shape(event.jump, ts[0], y0, args).dtype)
    dtype = jnp.result_type(*dtypes)
    y0, ts = y0.astype(dtype), ts.astype(dtype)
    n_times = ts.shape[0]
    t_start, t_end = ts[0], ts[-1]
    if schedule is not None:
        sched_times = schedule.times.astype(ts.dtype)
        n_sched = sched_times.shape[0]
        k0 = jnp.sum(jax.lax.stop_gradient(sched_times) <= t_start).astype(jnp.int32)
    else:
        sched_times, n_sched, k0 = jnp.zeros((0,), ts.dtype), 0, jnp.int32(0)
    n_segments = (max_events if events else 0) + n_sched + 1
    term = diffrax.ODETerm(field)
    adaptive = config.adaptive
    # Newton on the dense output, stopped when its step in t is below the solve's tolerance
    # (floored at the dtype's resolution: float32 cannot resolve 1e-8 relative)
    eps = 10 * float(jnp.finfo(ts.dtype).eps)
    root_finder = optx.Newton(
        rtol=max(config.rtol if adaptive else 1e-6, eps),
        atol=max(config.atol if adaptive else 1e-6, eps),
    )
    directions = tuple(DIRECTIONS[e.direction] for e in events)
    terminal = jnp.array([e.terminal for e in events], bool)
    solver = config.solver
    if isinstance(solver, str):
        raise ValueError(
            "solve_hybrid needs a concrete solver; resolve solver='auto' first "
            "(model.resolve_solver(ts, y0, args))."
        )
    search_adjoint = diffrax.RecursiveCheckpointAdjoint()
    max_steps = config.steps_for(t_start, t_end)

    # dy/dt: the field, or for a DAE the rate solved from M and the algebraic equations
    velocity = field if mass_matrix is None else _DAERate(field, mass_matrix)
    project = None if mass_matrix is None else _Consistent(field, mass_matrix, config)

    def f(t, y):
        return jax.lax.stop_gradient(velocity(t, y, args))

    def segment(carry, _):
        t_a, y_a, k, n_ev, done, failed, out, event_ts, event_index, last, last_sign = carry
        t_sched = sched_times[jnp.minimum(k, max(n_sched - 1, 0))] if n_sched else t_end
        has_sched = k < n_sched
        t_b = jnp.where(has_sched, jnp.minimum(t_sched, t_end), t_end)
        t_b = jnp.where(done, t_a, t_b)
        ta0, tb0 = jax.lax.stop_gradient(t_a), jax.lax.stop_gradient(t_b)
        # start a segment whose start time moves with the parameters from the moved state
        y_start = y_a + (ta0 - t_a) * f(ta0, y_a)
        if events:
            # The condition that just fired is zero at the restart up to round-off: its value
            # at the restart time is taken to be the sign it moves to, so round-off is not
            # counted as a second crossing.
            conditions = tuple(_condition(e, i, last, last_sign, ta0) for i, e in enumerate(events))
            search_event = diffrax.Event(conditions, root_finder=root_finder, direction=directions)
            search = diffrax.diffeqsolve(
                _stop(term),
                solver,
                ta0,
                tb0,
                None if adaptive else config.dt0,
                _stop(y_start),
                args=_stop(args),
                saveat=diffrax.SaveAt(t1=True),
                stepsize_controller=config.stepsize_controller(jump_ts=jump_ts),
                adjoint=search_adjoint,
                max_steps=max_steps,
                event=search_event,
                throw=False,
            )
            mask = jnp.stack([jnp.asarray(m) for m in search.event_mask])
            hit = jnp.any(mask) & ~done
            which = jnp.argmax(mask).astype(jnp.int32)
            te0 = jax.lax.stop_gradient(jnp.where(hit, search.ts[-1], tb0))
            # Newton stalling at the dtype's resolution still leaves the best root it found
            located = diffrax.is_okay(search.result) | (
                search.result == diffrax.RESULTS.nonlinear_max_steps_reached
            )
            failed = failed | (~located & ~done)
        else:
            hit, which, te0 = jnp.bool_(False), jnp.int32(0), tb0
        save = jnp.concatenate([jnp.clip(ts, ta0, te0), te0[None]])
        sol = config.diffeqsolve(
            term,
            ta0,
            te0,
            y_start,
            args=args,
            saveat=diffrax.SaveAt(ts=save),
            jump_ts=jump_ts,
        )
        failed = failed | (~diffrax.is_okay(sol.result) & ~done)
        y_end = sol.ys[-1]
        inside = (ts >= ta0) & (ts <= te0) & ~done
        out = jnp.where(inside.reshape((-1,) + (1,) * y0.ndim), sol.ys[:-1], out)
        f_end = f(te0, y_end)
        if events:
            t_event = _event_time(events, which, te0, y_end, args, velocity)
            t_e = jnp.where(hit, t_event, t_b)
        else:
            t_e = t_b
        y_e = y_end + f_end * (t_e - te0)  # value y_end; derivative includes f dt_e/dθ
        reached = ~hit & has_sched & ~done & (te0 >= jax.lax.stop_gradient(t_sched))
        y_next = y_e
        if events:
            jumped = [e.apply(t_e, y_e, args) for e in events]
            y_jump = jnp.stack(jumped)[which] if len(jumped) > 1 else jumped[0]
            y_next = jnp.where(hit, y_jump, y_next)
        if n_sched:
            dosed = schedule.increment(jnp.minimum(k, n_sched - 1), y_e).astype(y_e.dtype)
            y_next = jnp.where(reached, dosed, y_next)
        if project is not None and (events or n_sched):
            # a DAE restarts consistent: the algebraic components solved again after a jump
            y_cons, solved = project(t_e, y_next, args)
            jumped_now = (hit | reached) & ~done
            y_next = jnp.where(jumped_now, y_cons, y_next)
            failed = failed | (jumped_now & ~solved)
        if events:
            sign_after = _sign_after(events, which, t_e, y_next, args, velocity)
            last = jnp.where(hit, which, -1)  # only the segment right after an event
            last_sign = jnp.where(hit, sign_after, last_sign)
        slot = jnp.minimum(n_ev, max_events - 1)
        record = hit & (n_ev < max_events)
        event_ts = event_ts.at[slot].set(jnp.where(record, t_e, event_ts[slot]))
        event_index = event_index.at[slot].set(jnp.where(record, which, event_index[slot]))
        n_ev = n_ev + hit
        stop = hit & terminal[which] if events else jnp.bool_(False)
        finished = ~hit & ~reached & (te0 >= jax.lax.stop_gradient(t_end))
        done_next = done | stop | finished
        t_next = jnp.where(done, t_a, t_e).astype(dtype)
        y_next = jnp.where(done, y_a, y_next).astype(dtype)
        k = k + reached
        new = (t_next, y_next, k, n_ev, done_next, failed, out, event_ts, event_index, last)
        return (*new, last_sign), None

    out0 = jnp.full((n_times, *y0.shape), jnp.inf, y0.dtype)
    carry = (
        t_start,
        y0,
        k0,
        jnp.int32(0),
        jnp.bool_(False),
        jnp.bool_(False),
        out0,
        jnp.full((max_events,), jnp.inf, ts.dtype),
        jnp.full((max_events,), -1, jnp.int32),
        jnp.int32(-1),
        jnp.ones((), dtype),
    )
    carry, _ = jax.lax.scan(segment, carry, None, length=n_segments)
    _, _, _, n_ev, done, failed, out, event_ts, event_index, _, _ = carry
    out = out.at[0].set(y0)  # the state at ts[0] is y0 by definition (no interpolation round-off)
    too_many = ~done | (n_ev > max_events)
    result = diffrax.RESULTS.where(
        failed,
        diffrax.RESULTS.max_steps_reached,
        diffrax.RESULTS.where(
            too_many, diffrax.RESULTS.max_steps_reached, diffrax.RESULTS.successful
        ),
    )
    if throw and is_concrete(failed) and is_concrete(too_many):
        stats = {"max_steps": config.max_steps}
        if bool(too_many) and not bool(failed):
            raise SolveError(
                f"{model}: the solve failed: it needed more than max_events={max_events} events "
                f"before t={float(t_end)} (a Zeno-like cascade, or a bound set too low). Raise "
                "max_events.",
                model=model,
                reason="max_events_reached",
                stats=stats,
            )
        if bool(failed):
            raise SolveError(
                f"{model}: the solve failed: a segment between events failed (max_steps="
                f"{config.max_steps} reached or a non-finite state). Raise max_steps or loosen "
                "rtol/atol.",
                model=model,
                reason="max_steps_reached",
                stats=stats,
            )
    ok = result == diffrax.RESULTS.successful
    # with throw=False the failure value is returned as under jit (the result code says why)
    failed_value = jax.tree_util.tree_map(lambda x: jnp.where(ok, x, jnp.inf), out)
    return HybridSolution(
        ts=ts,
        ys=on_failure(result, out, model=model) if throw else failed_value,
        event_ts=event_ts,
        event_index=jnp.where(ok, event_index, -1),
        n_events=n_ev,
        result=result,
    )


def _condition(event: Event, i: int, last, last_sign, t_restart) -> Callable:
    """The search's condition: `event.condition` without gradients, and, for the event that
    fired last, `last_sign` at the restart time itself (see `solve_hybrid`)."""
    condition = _stop(event.condition)  # the search locates the event; it is not differentiated

    def cond_fn(t, y, args, **kwargs):
        del kwargs
        value = condition(t, y, args)
        at_restart = (last == i) & (t == t_restart)
        return jnp.where(at_restart, last_sign.astype(value.dtype), value)

    return cond_fn


def _sign_after(events, which, t, y, args, field) -> jax.Array:
    """+1 or -1: the sign the fired condition takes just after the restart from `y` (the sign
    of its rate of change there; +1 if it does not move)."""
    t, y = jax.lax.stop_gradient(t), jax.lax.stop_gradient(y)
    f0 = jax.lax.stop_gradient(field(t, y, args))
    rates = []
    for event in events:
        _, rate = jax.jvp(
            lambda t, y, e=event: e.condition(t, y, args), (t, y), (jnp.ones_like(t), f0)
        )
        rates.append(rate)
    rate = jax.lax.stop_gradient(jnp.stack(rates)[which])
    return jnp.where(rate < 0, -1.0, 1.0).astype(y.dtype)


def _event_time(events, which, te0, y_end, args, field) -> jax.Array:
    """The event time te0 carrying the implicit-function derivative of the triggered condition
    (see the module docstring): value te0, derivative -(g_y dy + g_θ) / (g_t + g_y f)."""

    def g_of(i):
        def g(t, y):
            return events[i].condition(t, y, args)

        return g

    values, rates = [], []
    f0 = jax.lax.stop_gradient(field(te0, y_end, args))
    for i in range(len(events)):
        g = g_of(i)
        values.append(g(te0, y_end))
        _, rate = jax.jvp(
            lambda t, y, g=g: g(t, y),
            (te0, jax.lax.stop_gradient(y_end)),
            (jnp.ones_like(te0), f0),
        )
        rates.append(jax.lax.stop_gradient(rate))
    value = jnp.stack(values)[which]
    rate = jnp.stack(rates)[which]
    rate = jnp.where(rate == 0, 1.0, rate)  # a tangential crossing: no derivative to give
    return te0 - (value - jax.lax.stop_gradient(value)) / rate


class _DAERate(eqx.Module):
    """dy/dt of an index-1 DAE M·dy/dt = f(t, y): the rows of M's range give M·ẏ = f there, the
    algebraic equations Wᵀf(t, y(t)) = 0 differentiated give Wᵀ(∂f/∂t + ∂f/∂y·ẏ) = 0 (W the
    left null space of M); together D equations for the D unknowns."""

    field: Callable
    mass_matrix: tuple = eqx.field(static=True)

    def __call__(self, t, y, args):
        m = np.asarray(self.mass_matrix, float)
        u, sv, _ = np.linalg.svd(m)
        rank = int(np.sum(sv > sv.max(initial=0.0) * m.shape[0] * np.finfo(float).eps))
        left, null = jnp.asarray(u[:, :rank], y.dtype), jnp.asarray(u[:, rank:], y.dtype)
        fy = self.field(t, y, args)
        jac = jax.jacfwd(lambda y: self.field(t, y, args))(y)
        _, ft = jax.jvp(lambda t: self.field(t, y, args), (t,), (jnp.ones_like(t),))
        lhs = jnp.concatenate([left.T @ jnp.asarray(m, y.dtype), null.T @ jac])
        rhs = jnp.concatenate([left.T @ fy, -(null.T @ ft)])
        return jnp.linalg.solve(lhs, rhs)


class _Consistent(eqx.Module):
    """(y with its algebraic components solved for so that Wᵀf(t, y) = 0, whether Newton
    converged): the restart of a DAE after a jump. Differentiable (optimistix's implicit
    function theorem)."""

    field: Callable
    mass_matrix: tuple = eqx.field(static=True)
    config: SolveConfig

    def __call__(self, t, y, args):
        m = np.asarray(self.mass_matrix, float)
        u, sv, vt = np.linalg.svd(m)
        rank = int(np.sum(sv > sv.max(initial=0.0) * m.shape[0] * np.finfo(float).eps))
        if rank == m.shape[0]:
            return y, jnp.bool_(True)
        w, v = jnp.asarray(u[:, rank:], y.dtype), jnp.asarray(vt[rank:].T, y.dtype)
        tol = max(100 * float(jnp.finfo(y.dtype).eps), 1e-3 * min(self.config.atol, 1.0))

        def equations(z, _):
            return w.T @ self.field(t, y + v @ z, args)

        sol = optx.root_find(
            equations, optx.Newton(rtol=tol, atol=tol), jnp.zeros(v.shape[1], y.dtype), throw=False
        )
        return y + v @ sol.value, sol.result == optx.RESULTS.successful
