"""Neural ordinary differential equations: dy/dt = f(t, y, args), f a network or any callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_state, check_positive, check_times, count_params, strong_floats
from ..sensitivity import AbstractSensitivity, resolve_sensitivity
from ..solvers import resolve_solver


class Autonomous(eqx.Module):
    """A vector field of the state alone: f(t, y, args) = net(input_fn(y)). See `autonomous`."""

    net: Callable
    input_fn: Callable | None = None

    def __call__(self, t, y, args=None):
        return self.net(y if self.input_fn is None else self.input_fn(y))


def autonomous(net: Callable, input_fn: Callable | None = None) -> Autonomous:
    """Adapt a network of the state alone to the diffrax signature `f(t, y, args)`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> field = nde.autonomous(mlp, input_fn=lambda y: y**3)
        >>> field(0.0, jnp.ones(2), None).shape
        (2,)
    """
    if not callable(net):
        raise ValueError(f"net must be callable (e.g. an eqx.nn.MLP), got {type(net).__name__}.")
    if input_fn is not None and not callable(input_fn):
        raise ValueError(f"input_fn must be callable or None, got {type(input_fn).__name__}.")
    return Autonomous(net, input_fn)


class NeuralODE(eqx.Module):
    """An ODE dy/dt = field(t, y, args) solved with diffrax, differentiable end to end.

    The field can be a network, a mechanistic model, or a mix of both (a universal differential
    equation is just a field that adds a network to known terms). `model(ts, y0)` returns the
    solution at `ts`, shape `(T, *y0.shape)`; vmap over `y0` for batches. If the solver fails (too
    many steps, a non-finite state) the returned values are `inf` rather than an exception, so a
    training step can detect and skip it; use `model.solve(..., throw=True)` to raise instead.

    Arguments:
        field: `f(t, y, args) -> dy/dt`.
        solver: a name (`"tsit5"`, `"dopri5"`, `"dopri8"`, `"bosh3"`, `"euler"`, `"heun"`,
            `"midpoint"`, `"kvaerno3"`, `"kvaerno5"`, `"kencarp4"`, ...) or a diffrax solver.
        rtol, atol: tolerances of the adaptive step-size controller.
        dt0: initial step; required for solvers without an error estimate (e.g. `"euler"`), which
            then take constant steps of `dt0`.
        max_steps: the most steps one solve may take before it counts as failed.
        sensitivity: `nde.Direct()`, `nde.Backsolve()`, `nde.Forward()` or `"auto"`; see
            `neuraldiffeq.sensitivity` for the trade-offs.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3), solver="tsit5")
        >>> model(jnp.linspace(0, 1.5, 30), jnp.array([2.0, 0.0])).shape
        (30, 2)
    """

    field: Callable
    solver: diffrax.AbstractSolver
    sensitivity: AbstractSensitivity | str
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        field: Callable,
        solver: str | diffrax.AbstractSolver = "tsit5",
        *,
        rtol: float = 1e-3,
        atol: float = 1e-6,
        dt0: float | None = None,
        max_steps: int = 4096,
        sensitivity: AbstractSensitivity | str = "auto",
    ):
        if not callable(field):
            raise ValueError(
                f"field must be callable as field(t, y, args), got {type(field).__name__}. "
                "Wrap a network of y alone with nde.autonomous(net)."
            )
        self.field = field
        self.solver = resolve_solver(solver)
        check_positive(rtol, "rtol")
        check_positive(atol, "atol")
        if dt0 is not None:
            check_positive(dt0, "dt0")
        if not isinstance(self.solver, diffrax.AbstractAdaptiveSolver) and dt0 is None:
            raise ValueError(
                f"solver {type(self.solver).__name__} has no error estimate, so it takes constant "
                "steps: pass dt0=<step size>, or choose an adaptive solver such as 'tsit5'."
            )
        if not (isinstance(max_steps, int | np.integer) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}.")
        resolve_sensitivity(sensitivity, 0, 0)  # validates the choice now, resolves it later
        self.sensitivity = sensitivity
        self.rtol, self.atol, self.dt0, self.max_steps = (
            float(rtol),
            float(atol),
            dt0,
            int(max_steps),
        )

    # -- public -----------------------------------------------------------------------------

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        ts, y0 = self._prepare(ts, y0)
        sensitivity = resolve_sensitivity(self.sensitivity, y0.size, count_params(self.field))
        return sensitivity.differentiate(_solve_values, (self, y0, strong_floats(args)), ts)

    def solve(
        self, ts, y0, args: Any = None, *, throw: bool = True, saveat: diffrax.SaveAt | None = None
    ) -> diffrax.Solution:
        """The full diffrax `Solution` (values, `stats` such as `num_steps`, `result`).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODE(lambda t, y, args: -y)
            >>> sol = model.solve(jnp.linspace(0, 1, 5), jnp.ones(1))
            >>> int(sol.stats["num_steps"]) > 0
            True
        """
        ts, y0 = self._prepare(ts, y0)
        sensitivity = resolve_sensitivity(self.sensitivity, y0.size, count_params(self.field))
        return self._diffeqsolve(ts, y0, args, sensitivity.adjoint(), throw=throw, saveat=saveat)

    def vector_field(self, t, y, args: Any = None) -> jax.Array:
        """dy/dt = field(t, y, args): what `nde.Collocation` fits to smoothed slopes.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.NeuralODE(lambda t, y, args: -2 * y).vector_field(0.0, jnp.ones(2)).tolist()
            [-2.0, -2.0]
        """
        return self.field(t, y, args)

    # -- internals --------------------------------------------------------------------------

    def _prepare(self, ts, y0):
        ts = check_times(ts, "ts")
        y0 = as_state(y0)
        return ts.astype(y0.dtype), y0

    def _diffeqsolve(self, ts, y0, args, adjoint, *, throw: bool, saveat=None):
        if isinstance(self.solver, diffrax.AbstractAdaptiveSolver):
            controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
        else:
            controller = diffrax.ConstantStepSize()
        return diffrax.diffeqsolve(
            diffrax.ODETerm(self.field),
            self.solver,
            ts[0],
            ts[-1],
            self.dt0,
            y0,
            args=args,
            saveat=saveat if saveat is not None else diffrax.SaveAt(ts=ts),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=self.max_steps,
            throw=throw,
        )


def _solve_values(diff, ts, adjoint):
    """Solution values at ts, `inf` where the solver failed (so training can skip the step)."""
    model, y0, args = diff
    sol = model._diffeqsolve(ts, y0, args, adjoint, throw=False)
    return jnp.where(sol.result == diffrax.RESULTS.successful, sol.ys, jnp.inf)
