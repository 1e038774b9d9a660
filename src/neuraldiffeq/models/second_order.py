"""Second-order neural ODEs: d²q/dt² = f(q, dq/dt) (or f(t, q, dq/dt, args)), f a network.

Solved as the first-order system in the state `y = (q, v)`, v = dq/dt:

    dq/dt = v,    dv/dt = f(q, v),

one vector of size `2n` (positions first, then velocities). Building in the second-order
structure (Norcliffe et al. 2020) halves what the network has to learn: the position half of
the field is exact, and the network gives only the n accelerations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import as_state
from ..solve.config import SolveConfig, build_config, shortcuts
from ..solve.events import SmoothPart
from ..solve.sensitivity import AbstractSensitivity
from .ode import ODE_DEFAULTS, NeuralODE, WrapsNeuralODE

__all__ = ["SecondOrderField", "SecondOrderNeuralODE"]

_OBSERVE = ("state", "position")


class SecondOrderField(eqx.Module):
    """The first-order field of d²q/dt² = net(...): f(t, (q, v), args) = (v, net(...)).

    `net(y)` with `y = (q, v)` when `autonomous`, else `net(t, y, args)`; either returns the
    acceleration, shape `(n,)`.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.models.second_order import SecondOrderField
        >>> field = SecondOrderField(lambda y: -y[:1])  # q'' = -q
        >>> field(0.0, jnp.array([1.0, 0.5]), None).tolist()
        [0.5, -1.0]
    """

    net: Callable
    autonomous: bool = eqx.field(default=True, static=True)

    def acceleration(self, t, y, args=None) -> jax.Array:
        if y.ndim != 1 or y.shape[0] % 2:
            raise ValueError(
                f"a second-order state is one vector (q, v) of even size 2n, got shape {y.shape}; "
                "vmap over a batch of states."
            )
        n = y.shape[0] // 2
        a = self.net(y) if self.autonomous else self.net(t, y, args)
        a = jnp.asarray(a)
        if a.shape != (n,):
            raise ValueError(
                f"the acceleration network must return shape ({n},) for a state (q, v) of size "
                f"{2 * n}, got {a.shape}; e.g. eqx.nn.MLP({2 * n}, {n}, ...)."
            )
        return a

    def __call__(self, t, y, args=None) -> jax.Array:
        a = self.acceleration(t, y, args)
        return jnp.concatenate([y[y.shape[0] // 2 :], a.astype(y.dtype)])


class SecondOrderNeuralODE(WrapsNeuralODE):
    """A neural ODE of second order: d²q/dt² = net(q, dq/dt), solved as a system in (q, v).

    Arguments:
        net: the acceleration, a network of `y = (q, v)` (size 2n) to `(n,)` (e.g.
            `eqx.nn.MLP(2 * n, n, ...)`); with `autonomous=False`, a field `net(t, y, args)`.
        observe: what the data and `model(ts, y0)` hold.
            * `"state"` (default): the whole state. `y0 = (q0, v0)` of size 2n, and
              `model(ts, y0)` is `(T, 2n)`. Every strategy fits it: `nde.Trajectory`,
              `nde.MultipleShooting`, `nde.Collocation` (through `vector_field`) and the
              presets of `nde.fit`.
            * `"position"`: the positions alone. `y0 = q0` of size n, the solve starts at the
              velocity `v0`, and `model(ts, q0)` is `(T, n)`. With `v0=None` every solve starts
              at rest; an array `v0` is a trainable parameter (`nde.fit` trains it with the
              network), one velocity shared by every trajectory. So this mode suits
              `nde.Trajectory` on series that start alike; `nde.MultipleShooting` would restart
              each segment at `v0` too, and `nde.Collocation` is refused (there is no first-order
              field of q alone: `vector_field` is None). Observe velocities, or estimate them
              (finite differences, `nde.collocate`), to use the state mode.
        v0: the initial velocity in `"position"` mode (`(n,)`), see above.
        solver, rtol, atol, dt0, max_steps, sensitivity: the solve settings, or
            `config=nde.SolveConfig(...)`, as in `nde.NeuralODE` (every sensitivity accepted).

    `model.first_order()` is the `nde.NeuralODE` of the expanded system, the same solve.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.SecondOrderNeuralODE(mlp, rtol=1e-6)
        >>> model(jnp.linspace(0, 1, 5), jnp.array([1.0, 0.0])).shape  # (q, v)
        (5, 2)
        >>> spring = nde.SecondOrderNeuralODE(lambda y: -y[:1], observe="position", rtol=1e-8)
        >>> round(float(spring(jnp.array([0.0, jnp.pi]), jnp.ones(1))[-1, 0]), 4)  # cos(pi)
        -1.0
    """

    node: NeuralODE
    v0: jax.Array | None
    observe: str = eqx.field(static=True)

    def __init__(
        self,
        net: Callable,
        solver: str | diffrax.AbstractSolver | None = None,
        *,
        observe: str = "state",
        v0: jax.Array | None = None,
        autonomous: bool = True,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        if not callable(net):
            raise ValueError(
                "net must be the acceleration network of y = (q, v), e.g. eqx.nn.MLP(2 * n, n, "
                f"...), got {type(net).__name__}."
            )
        if observe not in _OBSERVE:
            raise ValueError(
                f"observe must be 'state' (data hold q and dq/dt) or 'position' (q alone), "
                f"got {observe!r}."
            )
        if v0 is not None:
            if observe != "position":
                raise ValueError(
                    "v0 is the initial velocity of observe='position'; with observe='state' the "
                    "velocity is part of y0 = (q0, v0)."
                )
            v0 = as_state(v0, "v0", vector=True)
        given = shortcuts(locals())
        config = build_config("SecondOrderNeuralODE", config, given, ODE_DEFAULTS)
        self.node = NeuralODE(SecondOrderField(net, bool(autonomous)), config=config)
        self.v0, self.observe = v0, observe

    def first_order(self) -> NeuralODE:
        """The `nde.NeuralODE` of the expanded system in y = (q, v), same solve settings.

        Example:
            >>> import neuraldiffeq as nde
            >>> type(nde.SecondOrderNeuralODE(lambda y: -y[:1]).first_order()).__name__
            'NeuralODE'
        """
        return self.node

    def initial_state(self, y0) -> jax.Array:
        """The full state (q0, v0) the solve starts from (`y0` itself in `"state"` mode)."""
        y0 = as_state(y0, "y0", vector=True)
        if self.observe == "state":
            return y0
        v0 = jnp.zeros_like(y0) if self.v0 is None else self.v0.astype(y0.dtype)
        if v0.shape != y0.shape:
            raise ValueError(
                f"v0 has shape {v0.shape} but the positions q0 have shape {y0.shape}; give one "
                "velocity per position."
            )
        return jnp.concatenate([y0, v0])

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        ys = self.node(ts, self.initial_state(y0), args)
        if self.observe == "position":
            return ys[:, : ys.shape[-1] // 2]
        return ys

    def solve(self, ts, y0, args: Any = None, *, throw: bool = False) -> diffrax.Solution:
        """The diffrax `Solution` of the full state `(q, v)`, shape `(T, 2n)`, in both modes;
        its `result` says whether the solve failed (see `nde.NeuralODE.solve`)."""
        return self.node.solve(ts, self.initial_state(y0), args, throw=throw)

    def hybrid_part(self) -> SmoothPart:
        """Its field and solve settings, for events: `nde.HybridODE(model, events)`. Conditions
        and jumps see the whole state (q, v); in `"position"` mode `y0` is q0 (the solve starts
        at `v0`) and the hybrid model returns positions, as this model does.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> fall = nde.SecondOrderNeuralODE(lambda y: jnp.array([-9.81]), observe="position",
            ...                                 rtol=1e-8, atol=1e-8)
            >>> fall.hybrid_part().initial_state(jnp.array([10.0])).tolist()  # (q0, v0)
            [10.0, 0.0]
        """
        part = self.node.hybrid_part()
        if self.observe == "state":
            return part
        return SmoothPart(
            part.field,
            part.config,
            initial_state=self.initial_state,
            observe=lambda ys: ys[..., : ys.shape[-1] // 2],
        )

    @property
    def vector_field(self) -> Callable | None:
        """`vector_field(t, y, args)` = (v, net(q, v)) at `y = (q, v)` in `"state"` mode (what
        `nde.Collocation` fits); None in `"position"` mode, which has no field of q alone.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.SecondOrderNeuralODE(lambda y: -y[:1]).vector_field(0.0, jnp.ones(2)).tolist()
            [1.0, -1.0]
        """
        if self.observe == "position":
            return None
        return self.node.vector_field

    def _node_state(self, y0) -> jax.Array:
        return self.initial_state(y0)
