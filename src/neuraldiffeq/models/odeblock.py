"""`ODEBlock`: an ODE solve as a layer, y -> y(t1) where dy/dt = field(t, y), y(t0) = input."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import count_nfe, evals_per_step  # noqa: F401 (evals_per_step: re-exported)
from ..solve.config import SolveConfig, build_config, shortcuts
from ..solve.sensitivity import AbstractSensitivity
from .ode import ODE_DEFAULTS, NeuralODE

#: ODEBlock's solve defaults: NeuralODE's, with atol 1e-4 and the discrete adjoint.
ODEBLOCK_DEFAULTS = dict(ODE_DEFAULTS, atol=1e-4, sensitivity="direct")


class ODEBlock(eqx.Module):
    """A continuous-depth layer (ODE-Net): the input is the initial state, the output y(t1).

    Drop it into any equinox model in place of a stack of residual blocks. The field sees arrays
    of the input's shape (e.g. `(C, H, W)` feature maps); call the block per example and `vmap`
    over a batch, as everywhere in equinox. Gradients use any sensitivity of
    `nde.solvers` (`nde.Backsolve()` gives memory constant in the number of steps);
    `nfe(y)` reports the function evaluations the adaptive solver needs.

    Arguments:
        field: `f(t, y, args)`, e.g. a conv net with a time channel.
        t1, t0: integration interval (default [0, 1]).
        solver, rtol, atol, dt0, max_steps, sensitivity, config: as in `nde.NeuralODE` (one
            `nde.SolveConfig`); the defaults here are atol 1e-4 and sensitivity `nde.Direct()`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(3, 3, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> block = nde.ODEBlock(nde.autonomous(mlp), t1=1.0, sensitivity=nde.Backsolve())
        >>> block(jnp.ones(3)).shape
        (3,)
        >>> int(block.nfe(jnp.ones(3))) > 0
        True
    """

    node: NeuralODE
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)

    def __init__(
        self,
        field: Callable,
        t1: float = 1.0,
        *,
        t0: float = 0.0,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        try:
            t0, t1 = float(t0), float(t1)
        except (TypeError, ValueError):
            raise ValueError(f"t0 and t1 must be numbers, got t0={t0!r}, t1={t1!r}.") from None
        if not t1 > t0:
            raise ValueError(f"t1 must be greater than t0, got t0={t0}, t1={t1}.")
        given = shortcuts(locals())
        config = build_config("ODEBlock", config, given, ODEBLOCK_DEFAULTS)
        self.node = NeuralODE(field, config=config)
        self.t0, self.t1 = t0, t1

    @property
    def field(self) -> Callable:
        return self.node.field

    @property
    def config(self) -> SolveConfig:
        return self.node.config

    def __call__(self, y: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """y(t1) from y(t0) = `y` (same shape). `key` is accepted and ignored (equinox layers)."""
        return self.node(self._ts(y), y)[-1]

    def nfe(self, y: jax.Array) -> jax.Array:
        """Vector-field evaluations of the forward solve from `y`: steps (accepted and rejected)
        times the solver's evaluations per step, plus the initial evaluation of adaptive solvers.

        Works under `vmap` (one count per example) and `jit`.
        """
        sol = self.node.solve(self._ts(y), y, throw=False, saveat=diffrax.SaveAt(t1=True))
        return count_nfe(self.node.solver, sol.stats["num_steps"])

    def _ts(self, y):
        dtype = y.dtype if jnp.issubdtype(jnp.asarray(y).dtype, jnp.inexact) else float
        return jnp.array([self.t0, self.t1], dtype=dtype)
