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
    SmoothPart,
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

    **Events on any ODE-type model.** In place of a field, pass a model: `nde.NeuralODE`,
    `nde.HamiltonianNN` (with an ODE solver), `nde.SecondOrderNeuralODE` (either `observe`
    mode: conditions and jumps see the whole state (q, v), the model returns what the base
    returns) or `nde.NeuralODEMM` (a DAE: after each jump the algebraic components are solved
    for again, so that the restart is consistent). The model keeps its field, its solve
    settings and the sensitivities it accepts (NeuralODEMM: `Direct` and `Forward`), so pass
    no solve settings here; `inputs` needs a field of u and is not offered with a model.
    `nde.NeuralDDE` is refused (a jump would restart a delay equation whose history
    `nde.solve_dde` does not carry across it). `model.base` is the wrapped model.

    Arguments:
        field: `f(t, y, args)`, or `f(t, y, u, args)` with `inputs`; or an ODE-type model
            (above).
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
        >>> fall = nde.SecondOrderNeuralODE(lambda y: jnp.array([-9.81]), rtol=1e-8, atol=1e-8)
        >>> nde.HybridODE(fall, events=bounce).rtol  # the same ball from a model, its settings
        1e-08
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
        if hasattr(field, "hybrid_part"):  # a model: its field, its settings
            part = field.hybrid_part()  # a model that cannot take events raises here
            _check_model_base(field, given, config, inputs)
            self.config = part.config
            if isinstance(part.config.solver, str):
                raise ValueError(
                    f"HybridODE: the {type(field).__name__} has solver='auto', which estimates "
                    "stiffness from a smooth field that does not see the jumps; build it with a "
                    "solver by name, e.g. 'tsit5' or 'kvaerno5'."
                )
            return
        if isinstance(field, HasSolveConfig) or hasattr(field, "node"):
            raise ValueError(
                f"HybridODE cannot take events on a {type(field).__name__}: pass a field "
                f"f(t, y, args), or one of the models that take events ({_ACCEPTED})."
            )
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

    @property
    def base(self) -> Any:
        """The model whose events these are (None when built from a field)."""
        return self.field if hasattr(self.field, "hybrid_part") else None

    def _part(self) -> SmoothPart:
        if hasattr(self.field, "hybrid_part"):
            return self.field.hybrid_part()
        return SmoothPart(self.field, self.config)

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        ys = self.solve(ts, y0, args, throw=False).ys
        observe = self._part().observe
        return ys if observe is None else observe(ys)

    def solve(self, ts, y0, args: Any = None, *, throw: bool = True) -> HybridSolution:
        """The `HybridSolution`: values `ys`, `event_ts`, `event_index`, `n_events`, `result`.

        `ys` is the state the solve integrates (for a `SecondOrderNeuralODE` base in
        `"position"` mode: (q, v), where the model itself returns q).

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
        part = self._part()
        if inputs is not None and self.base is not None:
            _check_model_base(self.base, {}, None, inputs)  # an input from nde.Exogenous
        if part.initial_state is not None:
            y0 = part.initial_state(y0)
        if part.check is not None:
            part.check(ts, y0, args)
        field = part.field if inputs is None else _WithInput(part.field, inputs)
        check_hybrid_shapes(field, self.events, schedule, ts, y0, args)
        if inputs is not None:
            _check_input_span(inputs, ts)
        return solve_hybrid(
            part.config,
            field,
            ts,
            y0,
            args,
            events=self.events,
            schedule=schedule,
            max_events=self.max_events,
            jump_ts=None if inputs is None else inputs.jump_ts,
            throw=throw,
            mass_matrix=part.mass_matrix,
            model="HybridODE" if self.base is None else f"HybridODE({type(self.base).__name__})",
        )


class _WithInput(eqx.Module):
    """f(t, y, args) = field(t, y, u(t), args): the field reading the exogenous input."""

    field: Callable
    inputs: Interpolation

    def __call__(self, t, y, args):
        return self.field(t, y, self.inputs.evaluate(t), args)


#: The models `HybridODE` takes as its base, for messages.
_ACCEPTED = "nde.NeuralODE, nde.HamiltonianNN, nde.SecondOrderNeuralODE, nde.NeuralODEMM"


def _check_model_base(model, given: dict, config, inputs) -> None:
    """A model base brings its own solve settings and field: none may be given here too."""
    settings = sorted(k for k, v in given.items() if v is not None)
    if settings or config is not None:
        names = ", ".join(settings + (["config"] if config is not None else []))
        raise ValueError(
            f"HybridODE: the {type(model).__name__} carries its own solve settings; set "
            f"{names} on it (e.g. nde.{type(model).__name__}(..., rtol=1e-6)), not on HybridODE."
        )
    if inputs is not None:
        raise ValueError(
            f"HybridODE: inputs reach a field f(t, y, u, args), and a {type(model).__name__} has "
            "a field of its own: pass the field itself (nde.HybridODE(field, events, inputs=...))"
            " or give the input through args."
        )


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
