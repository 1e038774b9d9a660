"""How gradients flow through a differential equation solve.

- `Direct()`: discrete adjoint, backpropagating through the solver's own steps with recursive
  checkpointing (diffrax `RecursiveCheckpointAdjoint`). Memory O(log steps); a gradient costs
  about 2-3 forward solves; exact gradient of the computed solution. The default.
- `Backsolve()`: continuous adjoint, the adjoint ODE solved backwards alongside the state (diffrax
  `BacksolveAdjoint`). Memory O(1) in the number of steps; about 2 forward solves. For very long
  solves or deep ODE-Nets where memory is the limit; the gradient is only as accurate as the
  tolerances, and re-solving the state backwards can drift on unstable systems.
- `Forward()`: forward sensitivities, one Jacobian-vector product per input (diffrax
  `ForwardMode`), contracted with the cotangent. Memory O(parameters x outputs); cost about
  (parameters + states) forward solves. For few parameters: mechanistic models, small UDEs.
- `Interpolating()`: continuous adjoint that reads the forward state from the forward solve's
  dense output instead of re-solving it backwards (SciML's `InterpolatingAdjoint`). Memory
  O(steps) for the dense output; stable where `Backsolve` drifts; accuracy follows the tolerances.
- `Quadrature(subintervals, order)`: the adjoint ODE alone (D equations instead of D + P) solved
  backwards with dense output, then the parameter gradient as a composite Gauss–Legendre integral
  evaluated at all nodes at once (SciML's `QuadratureAdjoint`). Cheapest continuous adjoint for
  many parameters when the observation intervals are short enough for the fixed quadrature.
- `"auto"`: `Forward()` when states + parameters <= 100 (SciML's rule), otherwise `Direct()`.

All of them work under `jax.grad`, so `fit` and user code never need to know which one is in use.

Example:
    >>> import neuraldiffeq as nde
    >>> nde.resolve_sensitivity("auto", n_states=2, n_params=10)
    Forward()
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._continuous_adjoint import interpolating_solve, quadrature_solve

#: SciML's threshold (states + parameters) below which forward sensitivities are cheapest.
FORWARD_MODE_THRESHOLD = 100


class AbstractSensitivity(eqx.Module):
    """A way of differentiating through a solve. Subclasses give the diffrax adjoint."""

    @abc.abstractmethod
    def adjoint(self) -> diffrax.AbstractAdjoint:
        """The diffrax adjoint passed to `diffeqsolve`."""

    def differentiate(self, solve: Callable, diff: Any, nondiff: Any) -> jax.Array:
        """Run `solve(diff, nondiff, adjoint) -> array` so that `jax.grad` works w.r.t. `diff`."""
        return solve(diff, nondiff, self.adjoint())


class Direct(AbstractSensitivity):
    """Discrete adjoint through the solver's steps with recursive checkpointing.

    `checkpoints=None` lets diffrax choose O(log max_steps) checkpoints.

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.Direct().adjoint()
        RecursiveCheckpointAdjoint()
    """

    checkpoints: int | None = None

    def adjoint(self) -> diffrax.AbstractAdjoint:
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)


class Backsolve(AbstractSensitivity):
    """Continuous adjoint solved backwards in time: O(1) memory in the number of steps.

    Example:
        >>> import neuraldiffeq as nde
        >>> type(nde.Backsolve().adjoint()).__name__
        'BacksolveAdjoint'
    """

    def adjoint(self) -> diffrax.AbstractAdjoint:
        return diffrax.BacksolveAdjoint()


class Forward(AbstractSensitivity):
    """Forward sensitivities, usable under reverse-mode `jax.grad`.

    The forward pass computes the full Jacobian of the solution w.r.t. every differentiable input
    by forward-mode AD through the solver (diffrax `ForwardMode`); the backward pass contracts it
    with the incoming cotangent. Cheapest when parameters are few.

    Example:
        >>> import neuraldiffeq as nde
        >>> type(nde.Forward().adjoint()).__name__
        'ForwardMode'
    """

    def adjoint(self) -> diffrax.AbstractAdjoint:
        return diffrax.ForwardMode()

    def differentiate(self, solve: Callable, diff: Any, nondiff: Any) -> jax.Array:
        return _forward_sensitivity(diff, solve, nondiff, self.adjoint())


class Interpolating(AbstractSensitivity):
    """Continuous adjoint reading y(t) from the forward solve's dense output.

    `model.solve(...)` (which returns a diffrax `Solution`) differentiates with `Direct`;
    `model(ts, y0)` uses the interpolating adjoint.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, sensitivity=nde.Interpolating())
        >>> # d/da of y(1) = e^a at a = -1
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    def adjoint(self) -> diffrax.AbstractAdjoint:
        return diffrax.RecursiveCheckpointAdjoint()

    def differentiate(self, solve: Callable, diff: Any, nondiff: Any) -> jax.Array:
        return interpolating_solve(diff, nondiff)


class Quadrature(AbstractSensitivity):
    """Adjoint ODE backwards, then the parameter gradient by Gauss–Legendre quadrature.

    Each interval between observation times is split into `subintervals` pieces with `order`
    Gauss–Legendre nodes each (exact for polynomials of degree 2·order − 1 on each piece).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, sensitivity=nde.Quadrature())
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    subintervals: int = 8
    order: int = 5

    def adjoint(self) -> diffrax.AbstractAdjoint:
        return diffrax.RecursiveCheckpointAdjoint()

    def differentiate(self, solve: Callable, diff: Any, nondiff: Any) -> jax.Array:
        return quadrature_solve(diff, nondiff, (self.subintervals, self.order))


@eqx.filter_custom_vjp
def _forward_sensitivity(diff, solve, nondiff, adjoint):
    return solve(diff, nondiff, adjoint)


@_forward_sensitivity.def_fwd
def _forward_sensitivity_fwd(perturbed, diff, solve, nondiff, adjoint):
    out = solve(diff, nondiff, adjoint)
    jacobian = eqx.filter_jacfwd(lambda d: solve(d, nondiff, adjoint))(diff)
    return out, jacobian


@_forward_sensitivity.def_bwd
def _forward_sensitivity_bwd(jacobian, cotangent, perturbed, diff, solve, nondiff, adjoint):
    def contract(jac):
        return None if jac is None else jnp.tensordot(cotangent, jac, axes=cotangent.ndim)

    return jax.tree_util.tree_map(contract, jacobian, is_leaf=lambda x: x is None)


def resolve_sensitivity(
    sensitivity: AbstractSensitivity | str, n_states: int, n_params: int
) -> AbstractSensitivity:
    """Turn `"auto"` into a concrete choice (SciML's rule), validate anything else."""
    if isinstance(sensitivity, AbstractSensitivity):
        return sensitivity
    if sensitivity == "auto":
        if n_states + n_params <= FORWARD_MODE_THRESHOLD:
            return Forward()
        return Direct()
    names = {
        "direct": Direct,
        "backsolve": Backsolve,
        "forward": Forward,
        "interpolating": Interpolating,
        "quadrature": Quadrature,
    }
    if isinstance(sensitivity, str) and sensitivity.lower() in names:
        return names[sensitivity.lower()]()
    raise ValueError(
        f"unknown sensitivity {sensitivity!r}: use nde.Direct(), nde.Backsolve(), nde.Forward(), "
        "nde.Interpolating(), nde.Quadrature() or 'auto' (also accepted as lower-case strings)."
    )
