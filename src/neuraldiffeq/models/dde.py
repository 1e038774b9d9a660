"""Neural delay differential equations: y'(t) = f(y(t), y(t - τ₁), ..., y(t - τ_L)), f a network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import solve_inputs
from ..solve.config import HasSolveConfig, SolveConfig, on_failure, shortcuts
from ..solve.dde import _check_lags, _dde_config, solve_dde
from ..solve.sensitivity import AbstractSensitivity

#: NeuralDDE's solve defaults.
NEURAL_DDE_DEFAULTS = dict(
    solver="tsit5", rtol=1e-3, atol=1e-6, max_steps=1024, sensitivity="direct"
)


class DelayedInput(eqx.Module):
    """A DDE field from a network of the concatenated states: f = net([y(t), y(t-τ₁), ...]).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from neuraldiffeq.models.dde import DelayedInput
        >>> field = DelayedInput(eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(0)))
        >>> field(0.0, jnp.ones(1), jnp.ones((1, 1)), None).shape
        (1,)
    """

    net: Callable

    def __call__(self, t, y, y_lagged, args=None):
        return self.net(jnp.concatenate([y, y_lagged.reshape(-1)]))


class NeuralDDE(HasSolveConfig):
    """A delay differential equation whose right-hand side is a network, solved by `solve_dde`.

    With `autonomous=True` (default) `field` is a network of one vector, and it sees
    `[y(t), y(t - τ₁), ..., y(t - τ_L)]` concatenated (input size D·(L+1)); with
    `autonomous=False` it is called as `field(t, y, y_lagged, args)` (y_lagged of shape (L, D)),
    e.g. a mechanistic model with a network inside.

    `history`: the state before the first time: None (constant, equal to y0: the system was at
    rest), a callable `history(t) -> (D,)` (may hold trainable arrays), or a constant array (D,).
    `model(ts, y0) -> (T, D)` solves from `ts[0]`, so `nde.Trajectory()` and
    `nde.MultipleShooting()` fit it through `nde.fit` (multiple shooting gives each segment the
    data's past as its history). A failed solve returns `inf` (the training
    step is then skipped).

    Solve settings: `solver`, `rtol`, `atol`, `dt0`, `max_steps`, `sensitivity`, or one
    `config=nde.SolveConfig(...)`, as in `nde.solve_dde` (defaults `"tsit5"`, rtol 1e-3,
    atol 1e-6, max_steps 1024). Gradients: the discrete adjoint through `solve_dde`'s
    checkpointed loop (`nde.Direct(checkpoints=...)`, also what `"auto"` gives); other
    sensitivities are refused.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralDDE(mlp, lags=[1.0])
        >>> model(jnp.linspace(0, 5, 20), jnp.array([0.5])).shape
        (20, 1)
    """

    field: Callable
    history: Callable | jax.Array | None
    lags: tuple[float, ...] = eqx.field(static=True)
    config: SolveConfig

    def __init__(
        self,
        field: Callable,
        lags: Sequence[float] | float,
        history: Callable | Any | None = None,
        *,
        autonomous: bool = True,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        if not callable(field):
            raise ValueError(
                "field must be callable: a network of [y(t), y(t-τ₁), ...] (autonomous=True) or "
                f"field(t, y, y_lagged, args) (autonomous=False); got {type(field).__name__}."
            )
        self.lags = tuple(float(x) for x in _check_lags(lags))
        self.field = DelayedInput(field) if autonomous else field
        if history is not None and not callable(history):
            history = jnp.asarray(history)
            if history.ndim != 1:
                raise ValueError(
                    f"history must be None, a callable history(t) -> (D,), or a constant of shape "
                    f"(D,); got an array of shape {history.shape}."
                )
        self.history = history
        given = shortcuts(locals())
        self.config = _dde_config("NeuralDDE", config, given, NEURAL_DDE_DEFAULTS)

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        sol = self.solve(ts, y0, args)
        return on_failure(sol, sol.ys, config=self.config, model="NeuralDDE")

    def solve(self, ts, y0, args: Any = None, *, throw: bool = False):
        """The `DDESolution` (values, step counts, result, dense `evaluate(t)`).

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`:
        `sol.result` says why it failed and its `ys` are `inf`.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralDDE(lambda t, y, yl, a: -yl[0], [1.0], autonomous=False)
            >>> sol = model.solve(jnp.linspace(0, 2, 3), jnp.ones(1))
            >>> round(float(sol.ys[-1, 0]), 3)
            -0.5
        """
        ts, y0, _ = solve_inputs(ts, y0, vector=True)  # args go to the field as given
        history = y0 if self.history is None else self.history
        return solve_dde(
            self.field,
            history,
            self.lags,
            ts[0],
            ts[-1],
            ts,
            y0=y0,
            args=args,
            config=self.config,
            throw=throw,
        )

    def hybrid_part(self):
        """Refused: `nde.HybridODE(NeuralDDE(...), events)` raises a `ValueError`. A jump would
        restart a delay equation whose history `solve_dde` does not carry across the jump (its
        past is one continuous solution, and the delayed states after a jump must see the
        states before it), so events on a DDE are not offered.

        Example:
            >>> import neuraldiffeq as nde
            >>> dde = nde.NeuralDDE(lambda t, y, yl, a: -yl[0], [1.0], autonomous=False)
            >>> nde.HybridODE(dde, nde.Event(lambda t, y, args: y[0]))
            Traceback (most recent call last):
            ...
            ValueError: HybridODE cannot take events on a NeuralDDE: after a jump the delayed states must still see the solution before it, which nde.solve_dde does not carry across a restart. Events are accepted on nde.NeuralODE, nde.HamiltonianNN, nde.SecondOrderNeuralODE and nde.NeuralODEMM (nde.HybridODE(model, events)).
        """  # noqa: E501
        raise ValueError(
            "HybridODE cannot take events on a NeuralDDE: after a jump the delayed states must "
            "still see the solution before it, which nde.solve_dde does not carry across a "
            "restart. Events are accepted on nde.NeuralODE, nde.HamiltonianNN, "
            "nde.SecondOrderNeuralODE and nde.NeuralODEMM (nde.HybridODE(model, events))."
        )

    def with_past(self, ts, ys) -> NeuralDDE:
        """The same model whose history is the observations `(ts, ys)`, linearly interpolated.

        Before `ts[0]` the history stays the model's own. `nde.MultipleShooting` uses this to
        restart each segment with its trajectory's observed past rather than a constant one.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralDDE(lambda t, y, yl, a: -yl[0], [1.0], autonomous=False)
            >>> past = model.with_past(jnp.array([0.0, 1.0]), jnp.array([[0.0], [2.0]]))
            >>> past.history(0.25).tolist()
            [0.5]
        """
        history = ObservedPast(jnp.asarray(ts), jnp.asarray(ys), self.history)
        return eqx.tree_at(lambda m: m.history, self, history, is_leaf=lambda x: x is None)


class ObservedPast(eqx.Module):
    """Observations, linearly interpolated: a delay model's history taken from data.

    Before the first observation it is `before` (a history: callable, constant array, or None
    for the first observation itself, which is what `jnp.interp` holds there).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.models.dde import ObservedPast
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
