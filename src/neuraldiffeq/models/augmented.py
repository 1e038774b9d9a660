"""Augmented neural ODEs (Dupont et al. 2019): solve in a space with extra zero dimensions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..solve.config import SolveConfig, build_config, shortcuts
from ..solve.sensitivity import AbstractSensitivity
from .ode import ODE_DEFAULTS, NeuralODE


class AugmentedNeuralODE(eqx.Module):
    """A neural ODE whose state is the input padded with `augment_dim` zeros.

    Trajectories of an ODE cannot cross, so a plain neural ODE can only deform its input space
    continuously (a homeomorphism): it cannot, for example, pull a disc out of the annulus
    around it. With extra dimensions the flow can lift points past each other. The field must
    act on states of size `D + augment_dim`.

    Arguments:
        node: an `nde.NeuralODE` (it carries its own solve settings), or a field `f(t, y, args)`
            with the solve settings given here as in `nde.NeuralODE` (keyword shortcuts or
            `config=nde.SolveConfig(...)`; NeuralODE's defaults).
        augment_dim: the number of extra zero dimensions.

    `model(ts, y0)` returns the augmented trajectory `(T, D + augment_dim)`; `model.final(y0,
    t1)` the augmented state at `t1` (the features a classifier reads). Like `NeuralODE`,
    one example at a time; vmap over a batch.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(3, 3, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> anode = nde.AugmentedNeuralODE(nde.NeuralODE(nde.autonomous(mlp)), augment_dim=1)
        >>> anode(jnp.linspace(0, 1, 5), jnp.ones(2)).shape
        (5, 3)
        >>> nde.AugmentedNeuralODE(nde.autonomous(mlp), 1, rtol=1e-5).node.rtol
        1e-05
    """

    node: NeuralODE
    augment_dim: int = eqx.field(static=True)

    def __init__(
        self,
        node: NeuralODE | Callable,
        augment_dim: int,
        *,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        given = shortcuts(locals())
        if isinstance(node, NeuralODE):
            if config is not None or any(v is not None for v in given.values()):
                raise ValueError(
                    "node is already an nde.NeuralODE with its own solve settings: set them on "
                    "it, or pass its field instead of the NeuralODE."
                )
        elif callable(node):
            node = NeuralODE(
                node, config=build_config("AugmentedNeuralODE", config, given, ODE_DEFAULTS)
            )
        else:
            raise ValueError(
                f"node must be an nde.NeuralODE or a field f(t, y, args) acting on the augmented "
                f"state, got {type(node).__name__}."
            )
        if not (isinstance(augment_dim, int | np.integer) and augment_dim >= 0):
            raise ValueError(f"augment_dim must be a non-negative integer, got {augment_dim!r}.")
        self.node, self.augment_dim = node, int(augment_dim)

    @property
    def config(self) -> SolveConfig:
        return self.node.config

    def augment(self, y0: jax.Array) -> jax.Array:
        """`y0` (D,) -> `(D + augment_dim,)`, the extra entries zero."""
        y0 = jnp.asarray(y0)
        if y0.ndim != 1:
            raise ValueError(
                f"y0 must be a vector (D,), got shape {y0.shape}; vmap over a batch of inputs."
            )
        if not jnp.issubdtype(y0.dtype, jnp.inexact):
            y0 = y0.astype(jnp.result_type(float))
        return jnp.concatenate([y0, jnp.zeros((self.augment_dim,), y0.dtype)])

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        return self.node(ts, self.augment(y0), args)

    def final(self, y0, t1: float = 1.0, t0: float = 0.0, args: Any = None) -> jax.Array:
        """The augmented state at `t1`, starting from `y0` at `t0`."""
        y = self.augment(y0)
        return self.node(jnp.array([t0, t1], y.dtype), y, args)[-1]
