"""Neural ordinary differential equations: dy/dt = f(t, y, args), f a network or any callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax

from .._checks import count_params, solve_inputs
from ..solve.batched import solve_batched
from ..solve.config import HasSolveConfig, SolveConfig, build_config, on_failure, shortcuts
from ..solve.events import SmoothPart
from ..solve.sensitivity import AbstractSensitivity, resolve_sensitivity


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
    many steps, a collapsed step size, a Newton failure) the model raises `nde.SolveError`
    naming the cause and the fix when called directly; under `jax.jit`, `jax.grad` or `jax.vmap`
    (every training step) its values are `inf` instead, so the step can be detected and skipped.
    `model.solve(...)` returns the solution with its result code, without raising.

    Arguments:
        field: `f(t, y, args) -> dy/dt`.
        solver, rtol, atol, dt0, max_steps, sensitivity: the solve settings, or all of them as
            one `config=nde.SolveConfig(...)`; see `neuraldiffeq.solve.config` for the step-size
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
        check_field(field)
        self.field = field
        given = shortcuts(locals())
        config = build_config("NeuralODE", config, given, ODE_DEFAULTS)
        n_params = count_params(field)
        self.config = config.for_model(
            "NeuralODE", None, lambda: resolve_sensitivity("auto", 0, n_params)
        )

    # -- public -----------------------------------------------------------------------------

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        model = self.resolve_solver(ts, y0, args)  # solver="auto": chosen here, named in errors
        sol = model.solve(ts, y0, args)
        return on_failure(sol, sol.ys, config=model.config, model=type(self).__name__)

    def solve(
        self, ts, y0, args: Any = None, *, throw: bool = False, saveat: diffrax.SaveAt | None = None
    ) -> diffrax.Solution:
        """The full diffrax `Solution` (values, `stats` such as `num_steps`, `result`).

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`: where
        the model itself would raise `nde.SolveError` or return `inf`, `sol.result` says why
        (e.g. `diffrax.RESULTS.max_steps_reached`) and `sol.stats` counts the steps. `throw=True`
        raises `nde.SolveError` instead (diffrax's run-time error inside compiled code).

        Example:
            >>> import diffrax, jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODE(lambda t, y, args: -y)
            >>> sol = model.solve(jnp.linspace(0, 1, 5), jnp.ones(1))
            >>> int(sol.stats["num_steps"]) > 0
            True
            >>> stiff = nde.NeuralODE(lambda t, y, args: -1e4 * y, max_steps=16)
            >>> sol = jax.jit(stiff.solve)(jnp.linspace(0, 1, 5), jnp.ones(1))
            >>> sol.result == diffrax.RESULTS.max_steps_reached
            Array(True, dtype=bool)
        """
        ts, y0, args = solve_inputs(ts, y0, args)
        return solve_ode(
            self.config, self.field, ts, y0, args, throw=throw, saveat=saveat, model="NeuralODE"
        )

    def batched(self, ts, y0, args: Any = None, *, args_axis: int | None = 0) -> jax.Array:
        """A batch of solves, shape `(B, T, *state)`: the values of
        `jax.vmap(model, in_axes=(None, 0, args_axis))(ts, y0, args)` (each sample its own
        adaptive steps), in less time, training steps above all.

        `jax.vmap` runs every sample for as many steps as the slowest one needs, and its
        backward pass keeps a per-sample copy of the weights' cotangent; this solves the batch
        in loops that step all the rows at once and move the rows still going to smaller
        batches (`neuraldiffeq.solve.batched`). For explicit Runge-Kutta solvers and
        `sensitivity=nde.Direct()` (others are refused with a `ValueError`; use `jax.vmap`).
        `args`: batched along axis 0 (`args_axis=0`) or shared by every sample (`None`). A
        sample whose solve fails is `inf`, as under `jax.vmap` (`nde.SolveError` when called
        outside `jax.jit`).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODE(lambda t, y, k: -k * y, rtol=1e-6, sensitivity=nde.Direct())
            >>> ys = model.batched(jnp.array([0.0, 1.0]), jnp.ones((2, 1)), jnp.array([1.0, 2.0]))
            >>> ys.shape, [round(float(v), 4) for v in ys[:, -1, 0]]  # exp(-1), exp(-2)
            ((2, 2, 1), [0.3679, 0.1353])
        """
        ts, y0, args = solve_inputs(ts, y0, args)
        first = args if args_axis is None else jax.tree_util.tree_map(lambda a: a[0], args)
        model = self.resolve_solver(ts, y0[0], first)  # solver="auto": chosen from sample 0
        config = model.config
        ys, stats, result = solve_batched(
            model.field,
            config.solver,
            config.stepsize_controller(),
            config.sensitivity,
            ts,
            y0,
            args,
            dt0=config.dt0,
            max_steps=config.steps_for(ts[0], ts[-1]),
            args_axis=args_axis,
        )
        return on_failure(result, ys, config=config, model=type(self).__name__, stats=stats)

    def hybrid_part(self) -> SmoothPart:
        """Its field and solve settings, for events: `nde.HybridODE(model, events)`.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> node = nde.NeuralODE(lambda t, y, a: -y, rtol=1e-8)
            >>> model = nde.HybridODE(node, nde.Event(lambda t, y, args: y[0] - 0.5))
            >>> model.base is node, model.rtol
            (True, 1e-08)
        """
        return SmoothPart(self.field, self.config)

    def vector_field(self, t, y, args: Any = None) -> jax.Array:
        """dy/dt = field(t, y, args): what `nde.Collocation` fits to smoothed slopes.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.NeuralODE(lambda t, y, args: -2 * y).vector_field(0.0, jnp.ones(2)).tolist()
            [-2.0, -2.0]
        """
        return self.field(t, y, args)


def check_field(field: Callable) -> None:
    """A `ValueError` unless `field` is callable (as `field(t, y, args)`)."""
    if not callable(field):
        raise ValueError(
            f"field must be callable as field(t, y, args), got {type(field).__name__}. "
            "Wrap a network of y alone with nde.autonomous(net)."
        )


def solve_ode(
    config: SolveConfig,
    field: Callable,
    ts: jax.Array,
    y0: jax.Array,
    args: Any,
    *,
    throw: bool,
    saveat: diffrax.SaveAt | None = None,
    model: str = "NeuralODE",
) -> diffrax.Solution:
    """dy/dt = field(t, y, args) solved through `config` from `ts[0]` to `ts[-1]`, saved at `ts`
    (or `saveat`): the solve of every ODE model. The inputs as `solve_inputs` returns them;
    `throw` and `model` (the name a `SolveError` gives) as `SolveConfig.diffeqsolve`.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.models.ode import solve_ode
        >>> config = nde.SolveConfig("tsit5", rtol=1e-8, atol=1e-8, sensitivity=nde.Direct())
        >>> sol = solve_ode(config, lambda t, y, a: -y, jnp.array([0.0, 1.0]), jnp.ones(1), None,
        ...                 throw=True)
        >>> round(float(sol.ys[-1, 0]), 5)  # exp(-1)
        0.36788
    """
    saveat = saveat if saveat is not None else diffrax.SaveAt(ts=ts)
    return config.diffeqsolve(
        diffrax.ODETerm(field),
        ts[0],
        ts[-1],
        y0,
        args=args,
        saveat=saveat,
        throw=throw,
        model=model,
    )


class WrapsNeuralODE(HasSolveConfig):
    """A model built around a `NeuralODE` (its `node`) that solves through it.

    Its solve settings are the node's, read through the same attributes as a `NeuralODE`'s
    (`config`, `solver`, `sensitivity`, `rtol`, ...), and `resolve_solver` resolves the node's
    `"auto"` from the state the node starts at (`_node_state(y0)`, `y0` itself by default).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> hnn = nde.HamiltonianNN(lambda y: 0.5 * y @ y, rtol=1e-6)
        >>> hnn.rtol, hnn.config is hnn.node.config
        (1e-06, True)
    """

    node: eqx.AbstractVar[NeuralODE]

    @property
    def config(self) -> SolveConfig:
        """The node's solve configuration."""
        return self.node.config

    def _node_state(self, y0) -> Any:
        return y0

    def resolve_solver(self, ts, y0, args: Any = None) -> WrapsNeuralODE:
        """This model with `solver="auto"` chosen for the problem (see `nde.NeuralODE`)."""
        node = self.node.resolve_solver(ts, self._node_state(y0), args)
        return eqx.tree_at(lambda m: m.node, self, node)


#: NeuralODE's solve defaults (AugmentedNeuralODE's too).
ODE_DEFAULTS = dict(solver="tsit5", rtol=1e-3, atol=1e-6, max_steps=4096, sensitivity="auto")
