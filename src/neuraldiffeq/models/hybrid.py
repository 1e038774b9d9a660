"""Hybrid ODEs: a smooth field plus events, jumps, scheduled doses and exogenous inputs.

`HybridODE` is a `NeuralODE` whose solution may jump: at the zero crossings of event conditions
(a ball hitting the floor, a neuron's spike), at scheduled times (doses), and whose field may read
a measured input signal u(t). See `neuraldiffeq.solve.events` for how the solve is split into
segments and how gradients pass through the event times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import numpy as np

from .._checks import count_params, is_concrete, solve_inputs
from ..solve.config import HasSolveConfig, SolveConfig, build_config, shortcuts
from ..solve.events import (
    Event,
    HybridSolution,
    Schedule,
    check_events,
    check_hybrid_shapes,
    solve_hybrid,
)
from ..solve.interpolation import Interpolation
from ..solve.sensitivity import AbstractSensitivity, resolve_sensitivity
from .ode import ODE_DEFAULTS, check_field


class Exogenous(eqx.Module):
    """What one series brings from outside the model: its doses, its measured input, its args.

    Pass it as the `args` of a `HybridODE` call (`model(ts, y0, nde.Exogenous(...))`); its
    `schedule` and `inputs` replace the model's own for that solve, and its `args` reach the
    field. To give each series of a data set its own, stack them along a leading series axis and
    wrap them in `nde.PerSeries` for a strategy (`nde.Trajectory(args=nde.PerSeries(...))`).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.HybridODE(lambda t, y, args: -0.5 * y)
        >>> doses = nde.Exogenous(schedule=nde.Schedule([1.0], [[2.0]]))
        >>> round(float(model(jnp.array([0.0, 1.0, 2.0]), jnp.ones(1), doses)[-1, 0]), 4)
        1.5809
    """

    schedule: Schedule | None = None
    inputs: Interpolation | None = None
    args: Any = None


class HybridODE(HasSolveConfig):
    """An ODE with events, jumps, scheduled jumps and an exogenous input, differentiable.

    dy/dt = field(t, y, args), or field(t, y, u(t), args) when `inputs` (a measured signal u,
    an `nde.Interpolation` from `nde.interpolation_coeffs(ts, us, kind=..., time_channel=False)`)
    is given; the state jumps at `events` (`nde.Event`: a condition's zero crossing, then a jump
    or the end of the solve) and at the times of `schedule` (`nde.Schedule`: doses). `model(ts,
    y0, args)` returns `(T, *y0.shape)` (post-jump values at jump times; `inf` if the solve
    failed or had more than `max_events` events, so a training step skips it); `model.solve`
    returns the event times too. Per series, pass an `nde.Exogenous` as `args`.

    Gradients reach the field's, the conditions' and the jumps' parameters, the doses and `y0`,
    through the event times by the implicit-function theorem, with every sensitivity (each one
    differentiates the smooth segments between events; see `neuraldiffeq.solve.events`).
    `nde.Trajectory` and `nde.MultipleShooting` fit it; `nde.Collocation` cannot (it fits a smooth
    field to smoothed slopes, which a jumping solution does not have), so the model has no
    `vector_field`.

    A `NeuralODE` gains events with the same field and settings: `nde.HybridODE(node.field,
    events, config=node.config)`.

    Arguments:
        field: `f(t, y, args)`, or `f(t, y, u, args)` with `inputs`.
        events: an `nde.Event` or a list of them.
        schedule: an `nde.Schedule` of jumps at given times (trainable amounts allowed).
        inputs: an `nde.Interpolation` u(t) covering the span of every solve.
        max_events: the most events one solve may have (more: the solve is reported failed).
        solver, rtol, atol, dt0, max_steps, sensitivity, config: as `nde.NeuralODE` (solver
            "auto" is not offered: the stiffness estimate does not see the jumps). `max_steps`
            bounds each segment between events.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> bounce = nde.Event(lambda t, y, args: y[0], direction="down",
        ...                    jump=lambda t, y, args: y * jnp.array([1.0, -0.8]))
        >>> ball = nde.HybridODE(lambda t, y, args: jnp.array([y[1], -9.81]), events=bounce,
        ...                      rtol=1e-8, atol=1e-8)
        >>> sol = ball.solve(jnp.linspace(0.0, 4.0, 5), jnp.array([10.0, 0.0]))
        >>> int(sol.n_events), round(float(sol.event_ts[1]), 3)  # first bounces
        (2, 3.712)
    """

    field: Callable
    events: tuple[Event, ...]
    schedule: Schedule | None
    inputs: Interpolation | None
    max_events: int = eqx.field(static=True)
    config: SolveConfig

    def __init__(
        self,
        field: Callable,
        events: Event | Sequence[Event] | None = None,
        *,
        schedule: Schedule | None = None,
        inputs: Interpolation | None = None,
        max_events: int = 16,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        check_field(field)
        self.field = field
        self.events = check_events(events, max_events)
        self.max_events = int(max_events)
        self.schedule = _check_schedule(schedule)
        self.inputs = _check_inputs(inputs)
        given = shortcuts(locals())
        config = build_config("HybridODE", config, given, ODE_DEFAULTS)
        if isinstance(config.solver, str):
            raise ValueError(
                "HybridODE: solver='auto' estimates stiffness from a smooth field, which does "
                "not see the jumps; pass a solver by name, e.g. 'tsit5' or 'kvaerno5'."
            )
        n_params = count_params((field, self.events, self.schedule))
        self.config = config.for_model(
            "HybridODE", None, lambda: resolve_sensitivity("auto", 0, n_params)
        )

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        return self.solve(ts, y0, args, throw=False).ys

    def solve(self, ts, y0, args: Any = None, *, throw: bool = True) -> HybridSolution:
        """The `HybridSolution`: values `ys`, `event_ts`, `event_index`, `n_events`, `result`.

        With `throw=True` (default) an eager call raises when the solve fails or needs more
        than `max_events` events; under `jax.jit` it never raises (values `inf`).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> stop = nde.Event(lambda t, y, args: y[0] - 0.5)  # no jump: the solve ends
            >>> model = nde.HybridODE(lambda t, y, args: -y, events=stop, rtol=1e-8, atol=1e-8)
            >>> sol = model.solve(jnp.linspace(0.0, 1.0, 3), jnp.ones(1))
            >>> round(float(sol.event_ts[0]), 6)  # log 2
            0.693147
            >>> [round(float(v), 5) for v in sol.ys[:, 0]]  # after the terminating event: inf
            [1.0, 0.60653, inf]
        """
        schedule, inputs = self.schedule, self.inputs
        if isinstance(args, Exogenous):
            schedule = _check_schedule(args.schedule) if args.schedule is not None else schedule
            inputs = _check_inputs(args.inputs) if args.inputs is not None else inputs
            args = args.args
        ts, y0, args = solve_inputs(ts, y0, args)
        field = self.field if inputs is None else _WithInput(self.field, inputs)
        check_hybrid_shapes(field, self.events, schedule, ts, y0, args)
        if inputs is not None:
            _check_input_span(inputs, ts)
        return solve_hybrid(
            self.config,
            field,
            ts,
            y0,
            args,
            events=self.events,
            schedule=schedule,
            max_events=self.max_events,
            jump_ts=None if inputs is None else inputs.jump_ts,
            throw=throw,
        )


class _WithInput(eqx.Module):
    """f(t, y, args) = field(t, y, u(t), args): the field reading the exogenous input."""

    field: Callable
    inputs: Interpolation

    def __call__(self, t, y, args):
        return self.field(t, y, self.inputs.evaluate(t), args)


def _check_schedule(schedule) -> Schedule | None:
    if schedule is not None and not isinstance(schedule, Schedule):
        raise ValueError(
            "schedule must be an nde.Schedule(times, amounts, into=...), got "
            f"{type(schedule).__name__}."
        )
    return schedule


def _check_inputs(inputs) -> Interpolation | None:
    if inputs is not None and not isinstance(inputs, Interpolation):
        raise ValueError(
            "inputs must be an nde.Interpolation of the measured signal, e.g. "
            "nde.interpolation_coeffs(ts, us, kind='linear', time_channel=False); got "
            f"{type(inputs).__name__}."
        )
    if inputs is not None and inputs.batch_shape:
        raise ValueError(
            f"inputs holds {inputs.batch_shape[0]} series; one solve takes one: pass them to a "
            "strategy as nde.PerSeries(nde.Exogenous(inputs=...)), or index one series (X[i])."
        )
    return inputs


def _check_input_span(inputs: Interpolation, ts) -> None:
    """The input must cover the solve's span (checked when the times are concrete)."""
    if not (is_concrete(inputs.ts) and is_concrete(ts)):
        return
    knots, span = np.asarray(inputs.ts), np.asarray(ts)
    if knots[0] > span[0] + 1e-12 * abs(span[0]) or knots[-1] < span[-1] - 1e-12 * abs(span[-1]):
        raise ValueError(
            f"inputs cover [{knots[0]}, {knots[-1]}] but the solve spans [{span[0]}, {span[-1]}]:"
            " the input signal must be sampled over the whole span (extend its samples)."
        )
