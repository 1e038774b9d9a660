"""How gradients flow through a differential equation solve.

- `Direct()`: discrete adjoint, backpropagating through the solver's own steps with recursive
  checkpointing (diffrax `RecursiveCheckpointAdjoint`). Memory O(log steps); a gradient costs
  about 2-3 forward solves; exact gradient of the computed solution. The default.
- `Backsolve()`: continuous adjoint, the adjoint ODE solved backwards alongside the state (diffrax
  `BacksolveAdjoint`). Memory O(1) in the number of steps; about 2 forward solves. For very long
  solves or deep ODE-Nets where memory is the limit; the gradient is only as accurate as the
  tolerances, and re-solving the state backwards can drift on unstable systems.
- `Forward()`: forward sensitivities, one Jacobian-vector product per differentiated input
  (through diffrax's `ForwardMode` loop), contracted with the cotangent. Memory
  O(parameters x outputs); cost about (parameters + states) forward solves. For few
  parameters: mechanistic models, small UDEs.
- `Interpolating()`: continuous adjoint that reads the forward state from the forward solve's
  dense output instead of re-solving it backwards (SciML's `InterpolatingAdjoint`). Memory
  O(steps) for the dense output; stable where `Backsolve` drifts; accuracy follows the tolerances.
- `Quadrature(subintervals, order)`: the adjoint ODE alone (D equations instead of D + P) solved
  backwards with dense output, then the parameter gradient as a composite Gauss–Legendre integral
  evaluated at all nodes at once (SciML's `QuadratureAdjoint`). Cheapest continuous adjoint for
  many parameters when the observation intervals are short enough for the fixed quadrature.
- `"auto"`: `Forward()` when states + parameters <= 100 (SciML's rule), otherwise `Direct()`;
  each model resolves it when it is built, from its parameter count (the state size is not known
  yet), and records the choice as `model.sensitivity`; see each model for its rule.

Each of them is a `diffrax.AbstractAdjoint`: pass it as `adjoint=` to any `diffrax.diffeqsolve`,
which is exactly what every model does, so any sensitivity a model accepts reaches the solve the
same way (FFJORD's augmented state included). A model refuses, with a `ValueError` when it is
built, the sensitivities it cannot honour (e.g. `Interpolating` for an SDE); nothing is swapped.
All of them work under `jax.grad`, so `fit` and user code never need to know which one is in use.

Example:
    >>> import diffrax, jax, jax.numpy as jnp, neuraldiffeq as nde
    >>> nde.resolve_sensitivity("auto", n_states=2, n_params=10)
    Forward()
    >>> def y1(a):  # any diffeqsolve accepts them: d/da of y(1) = e^a at a = -1
    ...     sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: a * y), diffrax.Tsit5(),
    ...                               0.0, 1.0, None, jnp.ones(1), args=a,
    ...                               stepsize_controller=diffrax.PIDController(1e-6, 1e-6),
    ...                               adjoint=nde.Quadrature())
    ...     return sol.ys[-1, 0]
    >>> round(float(jax.grad(y1)(-1.0)), 4)
    0.3679
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx

from . import continuous_adjoint as _ca

#: SciML's threshold (states + parameters) below which forward sensitivities are cheapest.
FORWARD_MODE_THRESHOLD = 100


class AbstractSensitivity(diffrax.AbstractAdjoint):
    """A way of differentiating through a solve: a diffrax adjoint (pass it as `adjoint=`)."""


class Direct(AbstractSensitivity):
    """Discrete adjoint through the solver's steps with recursive checkpointing.

    `checkpoints=None` lets diffrax choose O(log max_steps) checkpoints.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> direct = nde.Direct(checkpoints=4)
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, sensitivity=direct)
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    checkpoints: int | None = None

    def loop(self, **kwargs: Any) -> Any:
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints).loop(**kwargs)


class Backsolve(AbstractSensitivity):
    """Continuous adjoint solved backwards in time: O(1) memory in the number of steps.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, sensitivity=nde.Backsolve())
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    def loop(self, **kwargs: Any) -> Any:
        return diffrax.BacksolveAdjoint().loop(**kwargs)


class Forward(AbstractSensitivity):
    """Forward sensitivities, usable under reverse-mode `jax.grad`.

    The forward pass computes the full Jacobian of the saved values w.r.t. every differentiable
    input (y0, args, the field's arrays) by forward-mode AD through the solver (as diffrax's
    `ForwardMode`); the backward pass contracts it with the incoming cotangent. Cheapest when
    parameters are few.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, sensitivity=nde.Forward())
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    def loop(self, **kwargs: Any) -> Any:
        return _ca.forward_loop(**kwargs)


class Interpolating(AbstractSensitivity):
    """Continuous adjoint reading y(t) from the forward solve's dense output.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, sensitivity=nde.Interpolating())
        >>> # d/da of y(1) = e^a at a = -1
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    def loop(self, **kwargs: Any) -> Any:
        return _ca.dense_loop("interpolating", **kwargs)


class Quadrature(AbstractSensitivity):
    """Adjoint ODE backwards, then the parameter gradient by Gauss–Legendre quadrature.

    The gradient ∫ aᵀ ∂f/∂θ dt is integrated with `order` Gauss–Legendre nodes on each piece
    (exact for polynomials of degree 2·order − 1 on each piece) of each interval between saved
    times. The pieces (`subintervals`):

    - an integer: that many equal pieces, all nodes evaluated at once;
    - `"steps"`: the steps of the forward and the backward (adjoint) solves, so the pieces
      follow the solution's time scales (a stiff problem's span many decades, which equal
      pieces miss), one piece after another;
    - `None` (the default): `"steps"` with the BDF solver (`solver="bdf"`), which is for stiff
      problems, else 8.

    With `solver="bdf"` the adjoint equation (stiff as the problem is) is solved by BDF too,
    with the forward solve's Jacobian pattern transposed and its linear solve.

    `rtol`, `atol`: the adjoint solve's tolerances (None: the forward solve's). The adjoint a
    is in units of dL/dy, not of y: an `atol` chosen for small concentrations can be far below
    what the adjoint needs and make its solve take many more steps (or reach `max_steps`).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, sensitivity=nde.Quadrature())
        >>> y1 = lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0]
        >>> round(float(jax.grad(y1)(-1.0)), 3)
        0.368
    """

    subintervals: int | str | None = eqx.field(default=None, static=True)
    order: int = eqx.field(default=5, static=True)
    rtol: float | None = None
    atol: float | None = None

    def __check_init__(self):
        pieces = self.subintervals
        if not (pieces is None or pieces == "steps" or (isinstance(pieces, int) and pieces > 0)):
            raise ValueError(
                "Quadrature(subintervals=...) must be a positive integer, 'steps' or None, got "
                f"{pieces!r}."
            )
        if not (isinstance(self.order, int) and self.order > 0):
            raise ValueError(
                f"Quadrature(order=...) must be a positive integer, got {self.order!r}."
            )
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(
                    f"Quadrature({name}=...) is the adjoint solve's tolerance: a number in (0, 1) "
                    f"or None (the forward solve's), got {value!r}."
                )

    def loop(self, **kwargs: Any) -> Any:
        return _ca.dense_loop((self.subintervals, self.order, self.rtol, self.atol), **kwargs)


SENSITIVITIES = {
    "direct": Direct,
    "backsolve": Backsolve,
    "forward": Forward,
    "interpolating": Interpolating,
    "quadrature": Quadrature,
}


def resolve_sensitivity(
    sensitivity: AbstractSensitivity | str, n_states: int, n_params: int
) -> AbstractSensitivity:
    """Turn `"auto"` into a concrete choice (SciML's rule), validate anything else.

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.resolve_sensitivity("auto", n_states=2, n_params=1000)
        Direct()
    """
    if isinstance(sensitivity, AbstractSensitivity):
        return sensitivity
    if isinstance(sensitivity, str) and sensitivity.lower() == "auto":
        if n_states + n_params <= FORWARD_MODE_THRESHOLD:
            return Forward()
        return Direct()
    if isinstance(sensitivity, str) and sensitivity.lower() in SENSITIVITIES:
        return SENSITIVITIES[sensitivity.lower()]()
    raise ValueError(
        f"unknown sensitivity {sensitivity!r}: use nde.Direct(), nde.Backsolve(), nde.Forward(), "
        "nde.Interpolating(), nde.Quadrature() or 'auto' (also accepted as lower-case strings)."
    )
