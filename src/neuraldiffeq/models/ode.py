"""Neural ordinary differential equations: dy/dt = f(t, y, args), f a network or any callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax

from .._checks import as_state, check_times, count_params, strong_floats
from ..sensitivity import AbstractSensitivity, resolve_sensitivity
from ..solve_config import HasSolveConfig, SolveConfig, build_config, on_failure, shortcuts


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


class NeuralODE(HasSolveConfig):
    """An ODE dy/dt = field(t, y, args) solved with diffrax, differentiable end to end.

    The field can be a network, a mechanistic model, or a mix of both (a universal differential
    equation is just a field that adds a network to known terms). `model(ts, y0)` returns the
    solution at `ts`, shape `(T, *y0.shape)`; vmap over `y0` for batches. If the solver fails (too
    many steps, a non-finite state) the returned values are `inf` rather than an exception, so a
    training step can detect and skip it; use `model.solve(..., throw=True)` to raise instead.

    Arguments:
        field: `f(t, y, args) -> dy/dt`.
        solver, rtol, atol, dt0, max_steps, sensitivity: the solve settings, or all of them as
            one `config=nde.SolveConfig(...)`; see `neuraldiffeq.solve_config` for the step-size
            rule. Defaults: `"tsit5"`, rtol 1e-3, atol 1e-6, max_steps 4096, `"auto"`
            (`nde.Forward()` when the field has at most 100 parameters, else `nde.Direct()`;
            the choice is `model.sensitivity`). Every sensitivity is accepted.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3), solver="tsit5")
        >>> model(jnp.linspace(0, 1.5, 30), jnp.array([2.0, 0.0])).shape
        (30, 2)
        >>> model.sensitivity  # "auto" with 252 parameters
        Direct()
    """

    field: Callable
    config: SolveConfig

    def __init__(
        self,
        field: Callable,
        solver: str | diffrax.AbstractSolver | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        if not callable(field):
            raise ValueError(
                f"field must be callable as field(t, y, args), got {type(field).__name__}. "
                "Wrap a network of y alone with nde.autonomous(net)."
            )
        self.field = field
        given = shortcuts(locals())
        config = build_config("NeuralODE", config, given, ODE_DEFAULTS)
        n_params = count_params(field)
        self.config = config.for_model(
            "NeuralODE", None, lambda: resolve_sensitivity("auto", 0, n_params)
        )

    # -- public -----------------------------------------------------------------------------

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        sol = self.solve(ts, y0, args, throw=False)
        return on_failure(sol.result, sol.ys)

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
        ts = check_times(ts, "ts")
        y0 = as_state(y0)
        ts = ts.astype(y0.dtype)
        return self.config.diffeqsolve(
            diffrax.ODETerm(self.field),
            ts[0],
            ts[-1],
            y0,
            # weakly typed floats would be invisible to the adjoints' custom_vjp (zero gradient)
            args=strong_floats(args),
            saveat=saveat if saveat is not None else diffrax.SaveAt(ts=ts),
            throw=throw,
        )

    def vector_field(self, t, y, args: Any = None) -> jax.Array:
        """dy/dt = field(t, y, args): what `nde.Collocation` fits to smoothed slopes.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.NeuralODE(lambda t, y, args: -2 * y).vector_field(0.0, jnp.ones(2)).tolist()
            [-2.0, -2.0]
        """
        return self.field(t, y, args)


#: NeuralODE's solve defaults (AugmentedNeuralODE's too).
ODE_DEFAULTS = dict(solver="tsit5", rtol=1e-3, atol=1e-6, max_steps=4096, sensitivity="auto")
