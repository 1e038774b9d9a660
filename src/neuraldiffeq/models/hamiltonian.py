"""Hamiltonian neural networks (Greydanus et al. 2019): the field is the symplectic gradient of a
learned energy H(q, p), so the flow conserves H exactly (and a symplectic solver nearly so).

The state is `y = (q, p)`, one vector of even size `2n` (positions first, then momenta), and

    dq/dt = ∂H/∂p,    dp/dt = −∂H/∂q,

with ∇H from `jax.grad` of the network. `HamiltonianNN` is a `NeuralODE` of that field (it
solves through the same `SolveConfig`), plus, for a separable H = T(p) + V(q)
(`SeparableHamiltonian`), the split symplectic solvers: diffrax's `SemiImplicitEuler`
(`"semi_implicit_euler"`, order 1) and `Leapfrog` (`"leapfrog"`, velocity Verlet, order 2).
Both take constant steps (`dt0` alone); their energy error stays bounded over arbitrarily long
solves instead of drifting, which an adaptive Runge–Kutta solve of the same field does not
promise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from equinox.internal import ω

from .._checks import count_params, solve_inputs
from ..solve.config import SolveConfig, build_config, on_failure, shortcuts
from ..solve.events import SmoothPart
from ..solve.names import ODE_SOLVERS
from ..solve.sensitivity import AbstractSensitivity, Direct, Forward, resolve_sensitivity
from .ode import ODE_DEFAULTS, NeuralODE, WrapsNeuralODE

__all__ = ["HamiltonianNN", "HamiltonianField", "Leapfrog", "SeparableHamiltonian"]


def _scalar(value: jax.Array, what: str) -> jax.Array:
    value = jnp.asarray(value)
    if value.size != 1:
        raise ValueError(
            f"{what} must return a scalar (or shape (1,)), got shape {value.shape}; build the "
            "network with one output, e.g. eqx.nn.MLP(in_size, 'scalar', ...)."
        )
    return value.reshape(())


def _split(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    if y.ndim != 1 or y.shape[0] % 2:
        raise ValueError(
            f"a Hamiltonian state is one vector (q, p) of even size 2n, got shape {y.shape}; "
            "vmap over a batch of states."
        )
    n = y.shape[0] // 2
    return y[:n], y[n:]


class SeparableHamiltonian(eqx.Module):
    """A separable energy H(q, p) = T(p) + V(q), from a kinetic and a potential network.

    Separability is what the split symplectic solvers (`"semi_implicit_euler"`, `"leapfrog"`)
    need: each half-step moves q with ∂T/∂p and p with −∂V/∂q. Both networks map a vector of
    size n to a scalar.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> H = nde.SeparableHamiltonian(lambda p: 0.5 * p @ p, lambda q: 0.5 * q @ q)
        >>> float(H(jnp.array([1.0, 2.0])))  # (q, p) = (1, 2): 0.5 + 2
        2.5
    """

    kinetic: Callable
    potential: Callable

    def __init__(self, kinetic: Callable, potential: Callable):
        for name, value in (("kinetic", kinetic), ("potential", potential)):
            if not callable(value):
                raise ValueError(
                    f"{name} must be callable (a network of a vector of size n to a scalar), "
                    f"got {type(value).__name__}."
                )
        self.kinetic, self.potential = kinetic, potential

    def __call__(self, y: jax.Array) -> jax.Array:
        q, p = _split(y)
        return _scalar(self.kinetic(p), "kinetic") + _scalar(self.potential(q), "potential")

    def dq_dt(self, t, p, args=None) -> jax.Array:
        """∂T/∂p: the first of the split terms."""
        return jax.grad(lambda p: _scalar(self.kinetic(p), "kinetic"))(p)

    def dp_dt(self, t, q, args=None) -> jax.Array:
        """−∂V/∂q: the second of the split terms."""
        return -jax.grad(lambda q: _scalar(self.potential(q), "potential"))(q)


class HamiltonianField(eqx.Module):
    """The vector field J∇H of an energy H(y), y = (q, p): f(t, y, args) = (∂H/∂p, −∂H/∂q).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.models.hamiltonian import HamiltonianField
        >>> field = HamiltonianField(lambda y: 0.5 * y @ y)  # harmonic oscillator
        >>> field(0.0, jnp.array([1.0, 0.0]), None).tolist()  # dq/dt = p, dp/dt = -q
        [0.0, -1.0]
    """

    hamiltonian: Callable

    def energy(self, y: jax.Array) -> jax.Array:
        _split(y)
        return _scalar(self.hamiltonian(y), "the Hamiltonian network")

    def __call__(self, t, y, args=None) -> jax.Array:
        dH_dq, dH_dp = _split(jax.grad(self.energy)(y))
        return jnp.concatenate([dH_dp, -dH_dq])


class Leapfrog(diffrax.AbstractSolver):
    """Leapfrog (velocity Verlet, kick–drift–kick): symplectic, time-reversible, order 2.

    For the split terms `(dq/dt = f(p), dp/dt = g(q))` with `y = (q, p)`, the convention of
    diffrax's `SemiImplicitEuler`: p ← p + h/2 g(q); q ← q + h f(p); p ← p + h/2 g(q). Constant
    steps only (no error estimate); linear interpolation between steps. diffrax has the
    first-order `SemiImplicitEuler` but no second-order splitting, hence this one.

    Example:
        >>> import diffrax, jax.numpy as jnp
        >>> from neuraldiffeq.models.hamiltonian import Leapfrog
        >>> terms = (diffrax.ODETerm(lambda t, p, a: p), diffrax.ODETerm(lambda t, q, a: -q))
        >>> sol = diffrax.diffeqsolve(terms, Leapfrog(), 0.0, 6.283185, 0.01,
        ...                           (jnp.ones(1), jnp.zeros(1)))
        >>> q, p = sol.ys
        >>> round(float(q[-1, 0]), 3)  # one period of q'' = -q
        1.0
    """

    term_structure: ClassVar = (diffrax.AbstractTerm, diffrax.AbstractTerm)
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        drift, kick = terms
        q0, p0 = y0
        tm = t0 + 0.5 * (t1 - t0)
        p_half = (p0**ω + kick.vf_prod(t0, q0, args, kick.contr(t0, tm)) ** ω).ω
        q1 = (q0**ω + drift.vf_prod(tm, p_half, args, drift.contr(t0, t1)) ** ω).ω
        p1 = (p_half**ω + kick.vf_prod(t1, q1, args, kick.contr(tm, t1)) ** ω).ω
        y1 = (q1, p1)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        drift, kick = terms
        q0, p0 = y0
        return drift.vf(t0, p0, args), kick.vf(t0, q0, args)


#: The split symplectic solvers, by name (they need a `SeparableHamiltonian`).
SYMPLECTIC_SOLVERS = {"semi_implicit_euler": diffrax.SemiImplicitEuler, "leapfrog": Leapfrog}
_SOLVERS = {**ODE_SOLVERS, **SYMPLECTIC_SOLVERS}
#: What a split (tuple-state) solve can be differentiated with: the continuous adjoints here
#: solve one ODETerm on one state vector backwards, not a pair of split terms.
_SPLIT_SENSITIVITIES = [Direct, Forward]


class HamiltonianNN(WrapsNeuralODE):
    """A Hamiltonian neural network: dq/dt = ∂H/∂p, dp/dt = −∂H/∂q with H(q, p) a network.

    The state `y = (q, p)` is one vector of size `2n`; `model(ts, y0)` returns `(T, 2n)` as
    `nde.NeuralODE` does (vmap over `y0` for batches; a failed solve gives `inf`), so every
    strategy (`nde.Trajectory`, `nde.MultipleShooting`, `nde.Collocation` through
    `vector_field`, the presets of `nde.fit`) fits it unchanged. Since dH/dt = ∇H·J∇H = 0, the
    exact flow conserves the learned H; `model.energy(ys)` evaluates it.

    Arguments:
        net: H, a network of the state `(q, p)` (size 2n) to a scalar (e.g.
            `eqx.nn.MLP(2 * n, "scalar", ...)`), or an `nde.SeparableHamiltonian(kinetic,
            potential)` for H = T(p) + V(q).
        solver, rtol, atol, dt0, max_steps, sensitivity: the solve settings, or all of them as
            `config=nde.SolveConfig(...)`, with `nde.NeuralODE`'s defaults and rules. Besides
            the ODE solvers, a separable H takes the split symplectic solvers
            `"semi_implicit_euler"` (diffrax's `SemiImplicitEuler`) and `"leapfrog"`
            (`neuraldiffeq.models.hamiltonian.Leapfrog`), with constant steps (`dt0` alone); a
            split solve is differentiated by `nde.Direct()` or `nde.Forward()` (other
            sensitivities are refused). A symplectic solver with a non-separable H is refused.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, "scalar", 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> hnn = nde.HamiltonianNN(mlp, rtol=1e-8, atol=1e-8)
        >>> ys = hnn(jnp.linspace(0, 5, 20), jnp.array([1.0, 0.0]))
        >>> ys.shape
        (20, 2)
        >>> drift = hnn.energy(ys) - hnn.energy(ys[0])
        >>> bool(jnp.max(jnp.abs(drift)) < 1e-5)
        True
        >>> H = nde.SeparableHamiltonian(lambda p: 0.5 * p @ p, lambda q: 0.5 * q @ q)
        >>> nde.HamiltonianNN(H, solver="leapfrog", dt0=0.05).solver
        Leapfrog()
    """

    node: NeuralODE
    symplectic: bool = eqx.field(static=True)

    def __init__(
        self,
        net: Callable,
        solver: str | diffrax.AbstractSolver | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
    ):
        if not callable(net):
            raise ValueError(
                "net must be a network H(y) of the state y = (q, p) to a scalar, or an "
                f"nde.SeparableHamiltonian(kinetic, potential); got {type(net).__name__}."
            )
        config = build_config("HamiltonianNN", config, shortcuts(locals()), ODE_DEFAULTS, _SOLVERS)
        self.symplectic = isinstance(config.solver, tuple(SYMPLECTIC_SOLVERS.values()))
        if self.symplectic:
            name = type(config.solver).__name__
            if not isinstance(net, SeparableHamiltonian):
                raise ValueError(
                    f"solver {name} is a split symplectic solver: it needs a separable energy "
                    "H = T(p) + V(q), net=nde.SeparableHamiltonian(kinetic, potential). For a "
                    "general H(q, p) choose an ODE solver such as 'tsit5' (tight tolerances keep "
                    "the energy error small)."
                )
            config = config.for_model(
                f"HamiltonianNN with solver {name}",
                _SPLIT_SENSITIVITIES,
                lambda: resolve_sensitivity("auto", 0, count_params(net)),  # as NeuralODE
                "the continuous adjoints solve one ODE term backwards, not a pair of split terms",
            )
        self.node = NeuralODE(HamiltonianField(net), config=config)

    @property
    def hamiltonian(self) -> Callable:
        """The network H(y)."""
        return self.node.field.hamiltonian

    def __call__(self, ts, y0, args: Any = None) -> jax.Array:
        if not self.symplectic:
            return self.node(ts, y0, args)
        sol = self.solve(ts, y0, args)
        return on_failure(sol, sol.ys, config=self.config, model="HamiltonianNN")

    def solve(self, ts, y0, args: Any = None, *, throw: bool = False) -> diffrax.Solution:
        """The diffrax `Solution` (`ys` of shape `(T, 2n)`, `stats`, `result`).

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`: where
        the model itself would raise `nde.SolveError` or return `inf`, `sol.result` says why
        (e.g. `diffrax.RESULTS.max_steps_reached`) and `sol.stats` counts the steps. `throw=True`
        raises `nde.SolveError` instead (diffrax's run-time error inside compiled code).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> hnn = nde.HamiltonianNN(lambda y: 0.5 * y @ y)
            >>> hnn.solve(jnp.linspace(0, 1, 3), jnp.array([1.0, 0.0])).ys.shape
            (3, 2)
        """
        if not self.symplectic:
            return self.node.solve(ts, y0, args, throw=throw)
        ts, y0, args = solve_inputs(ts, y0, args)
        H = self.hamiltonian
        sol = self.config.diffeqsolve(
            (diffrax.ODETerm(H.dq_dt), diffrax.ODETerm(H.dp_dt)),
            ts[0],
            ts[-1],
            _split(y0),
            args=args,
            saveat=diffrax.SaveAt(ts=ts),
            throw=throw,
            model="HamiltonianNN",
        )
        return eqx.tree_at(lambda s: s.ys, sol, jnp.concatenate(sol.ys, axis=-1))

    def hybrid_part(self) -> SmoothPart:
        """Its field and solve settings, for events: `nde.HybridODE(hnn, events)` (an ODE
        solver only: events are located on one state vector's dense output, which the split
        symplectic solvers, on a (q, p) pair, do not give).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> hnn = nde.HamiltonianNN(lambda y: 0.5 * y @ y, rtol=1e-8, atol=1e-8)
            >>> turn = nde.Event(lambda t, y, args: y[1], direction="down")  # p = 0: stop
            >>> nde.HybridODE(hnn, turn).base is hnn
            True
        """
        if self.symplectic:
            raise ValueError(
                f"HybridODE: a HamiltonianNN with solver {type(self.solver).__name__} cannot "
                "take events: they are located on one state vector's dense output, which the "
                "split symplectic solvers ('leapfrog', 'semi_implicit_euler') do not give. Build "
                "it with an ODE solver, e.g. nde.HamiltonianNN(net, solver='tsit5', rtol=1e-8)."
            )
        return self.node.hybrid_part()

    def vector_field(self, t, y, args: Any = None) -> jax.Array:
        """dy/dt = (∂H/∂p, −∂H/∂q) at `y = (q, p)`: what `nde.Collocation` fits.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.HamiltonianNN(lambda y: 0.5 * y @ y).vector_field(0.0, jnp.array([1.0, 2.0]))
            Array([ 2., -1.], dtype=float32)
        """
        return self.node.vector_field(t, y, args)

    def energy(self, ys: jax.Array) -> jax.Array:
        """H at each state: `ys` of shape `(..., 2n)` -> `(...)`.

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> nde.HamiltonianNN(lambda y: 0.5 * y @ y).energy(jnp.ones((3, 2))).tolist()
            [1.0, 1.0, 1.0]
        """
        ys = jnp.asarray(ys)
        energy = self.node.field.energy
        for _ in range(ys.ndim - 1):
            energy = jax.vmap(energy)
        return energy(ys)
