"""Neural ODEs with a mass matrix: M·dy/dt = f(t, y, args), M constant and possibly singular."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_state, solve_inputs
from ..solve.config import HasSolveConfig, SolveConfig, build_config, on_failure, shortcuts
from ..solve.dae import Radau5, _as_mass_matrix, check_consistent, consistent_initial_state
from ..solve.events import SmoothPart
from ..solve.sensitivity import AbstractSensitivity, Direct, Forward
from .ode import check_field, solve_ode

#: NeuralODEMM's solve defaults.
ODEMM_DEFAULTS = dict(solver="radau5", rtol=1e-5, atol=1e-8, max_steps=4096, sensitivity="direct")

#: The solvers a mass-matrix model accepts, by name.
DAE_SOLVERS = {"radau5": Radau5}


class _Stacked(eqx.Module):
    """f = [field(t, y, args), constraints(t, y, args)]: DiffEqFlux's NeuralODEMM form."""

    field: Callable
    constraints: Callable

    def __call__(self, t, y, args=None):
        return jnp.concatenate(
            [jnp.atleast_1d(self.field(t, y, args)), self.constraints(t, y, args)]
        )


class NeuralODEMM(HasSolveConfig):
    """A mass-matrix ODE/DAE M·dy/dt = f(t, y, args) with a network (or any callable) inside.

    DiffEqFlux's `NeuralODEMM`: with `constraints` given, f = [field(t, y, args),
    constraints(t, y, args)] (the network gives the differential equations, `constraints` the
    algebraic ones, so M is typically diag(1, ..., 1, 0, ..., 0)); without it, `field` is all of
    f. M is a constant square matrix or its diagonal; where it is singular the system must be a
    DAE of index 1 (the algebraic equations determine the algebraic components).

    Solved by `neuraldiffeq.solve.dae.Radau5` (Radau IIA, order 5, stiffly accurate: every
    saved state satisfies the algebraic equations to the Newton tolerance) inside
    `diffrax.diffeqsolve`. `model(ts, y0)` returns the solution at `ts`, shape (T, D), `inf` if
    the solve failed. `y0` must be consistent (the algebraic equations hold at `ts[0]`): a call
    outside `jax.jit` checks it and raises a `ValueError` naming `y0` with the residual;
    `model.consistent(y0)` computes the algebraic components.

    Solve settings: `solver` (`"radau5"` or a `Radau5` instance; its mass matrix is the model's),
    `rtol`, `atol` (adaptive steps, required: the Newton iteration uses them too), `dt0` (first
    step), `max_steps`, `sensitivity`, or one `config=nde.SolveConfig(...)`. Defaults:
    `"radau5"`, rtol 1e-5, atol 1e-8, max_steps 4096. Sensitivities: `nde.Direct()` (the
    default, also what `"auto"` gives: the discrete adjoint through diffrax's checkpointed loop)
    and `nde.Forward()`; the continuous adjoints would solve an adjoint equation without the mass
    matrix, so they are refused.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> # y1' = -y1 (a network in practice), 0 = y1 + y2 - 1
        >>> model = nde.NeuralODEMM(lambda t, y, a: -y[:1], [1.0, 0.0],
        ...                         constraints=lambda t, y, a: y[:1] + y[1:] - 1.0, rtol=1e-8)
        >>> ys = model(jnp.linspace(0, 1, 3), jnp.array([1.0, 0.0]))
        >>> tuple(round(float(v), 5) for v in ys[-1])
        (0.36788, 0.63212)
        >>> model(jnp.linspace(0, 1, 3), jnp.array([1.0, 0.5]))
        Traceback (most recent call last):
        ...
        ValueError: y0 is not consistent: the algebraic equations (the rows of f where M is singular) have residual 0.5 at t0 (tolerance 1e-06). Start from a y0 that satisfies them, or compute one with model.consistent(y0) (neuraldiffeq.solve.dae.consistent_initial_state).
    """  # noqa: E501

    field: Callable
    config: SolveConfig

    def __init__(
        self,
        field: Callable,
        mass_matrix: Any,
        constraints: Callable | None = None,
        *,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        check_field(field)
        if constraints is not None and not callable(constraints):
            raise ValueError(
                "constraints must be None or callable as constraints(t, y, args) -> the "
                f"algebraic equations' residuals, got {type(constraints).__name__}."
            )
        mass = _as_mass_matrix(mass_matrix)
        self.field = field if constraints is None else _Stacked(field, constraints)
        config = build_config(
            "NeuralODEMM", config, shortcuts(locals()), ODEMM_DEFAULTS, DAE_SOLVERS
        )
        if not isinstance(config.solver, Radau5):
            raise ValueError(
                f"NeuralODEMM solves with 'radau5' (a mass-matrix Radau IIA method); got "
                f"solver={config.solver!r}: pass solver='radau5' or leave it out."
            )
        if not config.adaptive:
            raise ValueError(
                "NeuralODEMM needs adaptive steps (rtol/atol; they are also the Newton "
                "iteration's tolerances): pass rtol/atol, with dt0 only as the first step."
            )
        config = config.replace(solver=dataclasses.replace(config.solver, mass_matrix=mass))
        hint = (
            "The continuous adjoints solve an adjoint equation without the mass matrix; "
            "differentiate through the solver instead"
        )
        self.config = config.for_model("NeuralODEMM", [Direct, Forward], Direct, hint)

    @property
    def mass_matrix(self) -> jax.Array:
        """M, shape (D, D)."""
        return jnp.asarray(self.config.solver.mass_matrix)

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        sol = self.solve(ts, y0, args)
        return on_failure(sol, sol.ys, config=self.config, model="NeuralODEMM")

    def solve(self, ts, y0, args: Any = None, *, throw: bool = False) -> diffrax.Solution:
        """The diffrax `Solution` (values at `ts`, `stats`, `result`); checks `y0` outside jit.

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`: where
        the model itself would raise `nde.SolveError` or return `inf`, `sol.result` says why
        (e.g. `diffrax.RESULTS.max_steps_reached`) and `sol.stats` counts the steps. `throw=True`
        raises `nde.SolveError` instead (diffrax's run-time error inside compiled code).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODEMM(lambda t, y, a: -y, [1.0])  # M = I: an ODE
            >>> int(model.solve(jnp.linspace(0, 1, 3), jnp.ones(1)).stats["num_steps"]) > 0
            True
        """
        ts, y0, args = solve_inputs(ts, y0, args, vector=True)
        self._check_shape(y0)
        check_consistent(self.field, self.config.solver.mass_matrix, ts[0], y0, args)
        return solve_ode(self.config, self.field, ts, y0, args, throw=throw, model="NeuralODEMM")

    def hybrid_part(self) -> SmoothPart:
        """Its field, mass matrix and solve settings, for events: `nde.HybridODE(model,
        events)`. `y0` is checked as this model checks it; after each jump (or scheduled dose)
        the algebraic components are solved for again, so a jump sets the differential ones.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> dae = nde.NeuralODEMM(lambda t, y, a: -y[:1], [1.0, 0.0],
            ...                       constraints=lambda t, y, a: y[:1] + y[1:] - 1.0, rtol=1e-8)
            >>> dae.hybrid_part().mass_matrix
            ((1.0, 0.0), (0.0, 0.0))
        """

        def check(ts, y0, args):
            self._check_shape(y0)
            check_consistent(self.field, self.config.solver.mass_matrix, ts[0], y0, args)

        return SmoothPart(
            self.field, self.config, mass_matrix=self.config.solver.mass_matrix, check=check
        )

    def consistent(self, y0, t0=0.0, args: Any = None) -> jax.Array:
        """`y0` with its algebraic components solved for (the differential ones kept), so that
        the algebraic equations hold at `t0`.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODEMM(lambda t, y, a: -y[:1], [1.0, 0.0],
            ...                         constraints=lambda t, y, a: y[:1] + y[1:] - 1.0)
            >>> model.consistent(jnp.array([0.25, 0.0])).tolist()
            [0.25, 0.75]
        """
        y0 = as_state(y0, vector=True)
        self._check_shape(y0)
        return consistent_initial_state(self.field, self.config.solver.mass_matrix, t0, y0, args)

    def _check_shape(self, y0) -> None:
        d = len(self.config.solver.mass_matrix)
        if y0.shape != (d,):
            raise ValueError(
                f"y0 has shape {y0.shape} but mass_matrix is {d}x{d}: y0 must have shape ({d},)."
            )
