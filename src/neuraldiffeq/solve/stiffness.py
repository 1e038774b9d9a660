"""`solver="auto"`: an explicit or an implicit solver, chosen from a stiffness estimate.

An explicit Runge–Kutta method (`"tsit5"`) is stable only while h·|λ| stays inside its
stability region, about `STABILITY_BOUND` = 3.5 along the negative real axis, for every
eigenvalue λ of the Jacobian ∂f/∂y. Over a span T the stability limit alone forces at least

    stability_steps = ρ · T / 3.5          (ρ: spectral radius of ∂f/∂y)

steps, whatever the tolerance. What the tolerance needs is set by how fast the solution itself
moves: with its relative rate r = ‖f(y)‖ / ‖y‖ (floored at 1/T), an order-5 method needs about

    accuracy_steps = max(r · T, 1) · rtol^(-1/5)

steps. A problem is stiff when the first exceeds the second by a large factor: `"auto"` picks
an implicit solver (`implicit_for`: `"bdf"` above `LARGE_SYSTEM` states, else `"radau5"` at
rtol <= `TIGHT_RTOL` and `"kvaerno5"`, an L-stable ESDIRK, at looser ones) when
`stability_steps > STIFF_FACTOR (= 10) · accuracy_steps`, else `EXPLICIT` (`"tsit5"`). The rate
is blind to a decayed fast mode (for dy/dt = -k·y the solution always moves at rate k relative
to itself), so a second sign counts too, the one an explicit solver shows itself (Hairer &
Wanner's stiffness detection): its accepted steps are held at the stability limit (h·ρ >=
`PINNED` · 3.5) rather than by the tolerance, while that limit would force more than
`STIFF_FACTOR` · `PROBE_STEPS` steps.

Stiffness often appears only after a transient (Robertson's kinetics: ∂f/∂y at y0 = (1, 0, 0)
has spectral radius 0.04, a few milliseconds later ~2000), so the estimate is taken at y0 and
at the states of a short explicit probe solve (`PROBE_STEPS` steps of `"tsit5"` from t0 at the
configured tolerances), and the largest ratio decides. ρ is exact (eigenvalues of the Jacobian)
for states up to `EXACT_JACOBIAN_MAX` entries, otherwise a power iteration on `jax.jvp`.

The choice needs concrete values of y0, the field's parameters and `args`, so it is made
outside `jax.jit`: `model.resolve_solver(ts, y0, args)` returns the model with the chosen
solver (then `model.solver` shows it), and `nde.fit` does this before compiling. A model
whose solver is still `"auto"` chooses at each eager call; called under `jax.jit`/`grad`/`vmap`
it raises a `ValueError` asking to resolve first (there is no silent default).

Example:
    >>> import jax.numpy as jnp
    >>> from neuraldiffeq.solve.stiffness import estimate_stiffness
    >>> est = estimate_stiffness(lambda t, y, a: -1e4 * y, 0.0, 10.0, jnp.ones(2))
    >>> est.solver, round(est.spectral_radius)
    ('kvaerno5', 10000)
    >>> estimate_stiffness(lambda t, y, a: -y, 0.0, 10.0, jnp.ones(2)).solver
    'tsit5'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_array

#: The explicit method `"auto"` picks, and its implicit choice for small stiff systems at loose
#: tolerances.
EXPLICIT, IMPLICIT = "tsit5", "kvaerno5"
#: Every implicit choice of `"auto"` (see `implicit_for`).
STIFF_SOLVERS = ("kvaerno5", "radau5", "bdf")
#: Above this many states a stiff system gets `"bdf"` (its Jacobian sparse or matrix-free; the
#: one-step methods factorise a dense (s·n)×(s·n) matrix every step).
LARGE_SYSTEM = 200
#: At or below this rtol a small stiff system gets `"radau5"` (order 5, stiffly accurate, 3
#: stages solved together), above it `"kvaerno5"`.
TIGHT_RTOL = 1e-5
#: Tsit5's stability bound along the negative real axis (h·|λ| per step).
STABILITY_BOUND = 3.5
#: Implicit when the stability limit forces this many times the steps the tolerance needs.
STIFF_FACTOR = 10.0
#: A probe step with h·ρ >= PINNED · STABILITY_BOUND is held by stability, not by the tolerance.
PINNED = 0.8
#: Steps of the explicit probe solve whose states are also examined.
PROBE_STEPS = 32
#: States up to this size get the exact Jacobian; larger ones a power iteration.
EXACT_JACOBIAN_MAX = 64
#: Power iterations (jax.jvp) for the spectral radius of larger states.
POWER_ITERATIONS = 30


def implicit_for(n: int, rtol: float) -> str:
    """The implicit solver `"auto"` picks for a stiff system of n states at tolerance rtol.

    Large systems (n > `LARGE_SYSTEM`): `"bdf"`, whose Newton matrix is n×n and may be sparse
    or matrix-free, and which takes one implicit stage per step. Small ones: `"radau5"` at
    rtol <= `TIGHT_RTOL` (on Robertson's kinetics it needs fewer steps and Newton iterations
    than Kvaerno5 there; benchmarks/results), else `"kvaerno5"`.

    Example:
        >>> from neuraldiffeq.solve.stiffness import implicit_for
        >>> implicit_for(3, 1e-3), implicit_for(3, 1e-8), implicit_for(3000, 1e-8)
        ('kvaerno5', 'radau5', 'bdf')
    """
    if n > LARGE_SYSTEM:
        return "bdf"
    return "radau5" if rtol <= TIGHT_RTOL else IMPLICIT


class StiffnessEstimate(NamedTuple):
    """What `estimate_stiffness` measured, at the probe state that decided (stiff first, then
    the largest ratio)."""

    solver: str  # the choice: EXPLICIT or one of STIFF_SOLVERS (`implicit_for`)
    spectral_radius: float  # ρ of ∂f/∂y
    rate: float  # ‖f(y)‖ / ‖y‖, the solution's own relative rate
    stability_steps: float  # ρ·T / STABILITY_BOUND
    accuracy_steps: float  # max(rate·T, 1) · rtol^(-1/5)
    probe_step: float  # h·ρ of the explicit probe's step that reached this state (0 at y0)
    t: float  # where it was measured

    @property
    def ratio(self) -> float:
        """stability_steps / accuracy_steps (stiff when above STIFF_FACTOR)."""
        return self.stability_steps / self.accuracy_steps


def spectral_radius(field: Callable, t, y, args: Any = None) -> float:
    """The spectral radius of ∂field/∂y at (t, y): exact for small states, else power iteration.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.stiffness import spectral_radius
        >>> A = jnp.array([[-1.0, 0.0], [0.0, -300.0]])
        >>> round(spectral_radius(lambda t, y, a: A @ y, 0.0, jnp.ones(2)))
        300
    """
    y, t = as_array(y), jnp.asarray(t)  # t an array: one compiled program for every t
    if y.size <= EXACT_JACOBIAN_MAX:
        jac = np.asarray(_jacobian(field, t, y, args), dtype=np.float64)
        if not np.all(np.isfinite(jac)):
            return math.inf
        return float(np.max(np.abs(np.linalg.eigvals(jac)))) if jac.size else 0.0
    # power iteration: ‖J^k v‖ grows like ρ^k (complex pairs make single ratios oscillate, so
    # the geometric mean of the later ratios is taken)
    v = jax.random.normal(jax.random.key(0), (y.size,), y.dtype)
    v = v / jnp.linalg.norm(v)
    logs = []
    for _ in range(POWER_ITERATIONS):
        w = _jacobian_times(field, t, y, args, v)
        norm = float(jnp.linalg.norm(w))
        if not math.isfinite(norm):
            return math.inf
        if norm == 0.0:
            return 0.0
        logs.append(math.log(norm))
        v = w / norm
    return math.exp(float(np.mean(logs[len(logs) // 2 :])))


def _flat_field(field, t, y, args):
    return lambda v: jnp.ravel(field(t, v.reshape(y.shape), args))


# Compiled once per field and state shape, not once per probe state: `estimate_stiffness` asks
# for the spectral radius at up to PROBE_STEPS + 1 states of the same problem.
@eqx.filter_jit
def _evaluate(field, t, y, args) -> jax.Array:
    return field(t, y, args)


@eqx.filter_jit
def _jacobian(field, t, y, args) -> jax.Array:
    return jax.jacfwd(_flat_field(field, t, y, args))(jnp.ravel(y))


@eqx.filter_jit
def _jacobian_times(field, t, y, args, v) -> jax.Array:
    return jax.jvp(_flat_field(field, t, y, args), (jnp.ravel(y),), (v,))[1]


def _probe_states(field, t0, t1, y0, args, rtol, atol):
    """(t, y) at y0 and along a short explicit solve from t0 (PROBE_STEPS steps at most)."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0,
        t1,
        None,
        y0,
        args=args,
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=PROBE_STEPS,
        throw=False,  # a probe that stops early is still a probe: its states so far are used
    )
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    flat = ys.reshape(ys.shape[0], -1)
    keep = np.isfinite(ts) & np.all(np.isfinite(flat), axis=1)
    ts, ys = ts[keep], ys[keep]
    steps = np.abs(np.diff(np.concatenate([[float(t0)], ts])))  # the step that reached each
    picks = sorted({len(ts) // 4, len(ts) // 2, len(ts) - 1}) if len(ts) else []
    return [(t0, y0, 0.0)] + [(ts[i], jnp.asarray(ys[i], y0.dtype), steps[i]) for i in picks]


def estimate_stiffness(
    field: Callable,
    t0,
    t1,
    y0,
    args: Any = None,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-6,
) -> StiffnessEstimate:
    """Estimate how stiff dy/dt = field(t, y, args) is on [t0, t1], and choose a solver.

    See the module docstring for the rule. All inputs must be concrete (not traced).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.stiffness import estimate_stiffness
        >>> vdp = lambda t, y, mu: jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])
        >>> est = estimate_stiffness(vdp, 0.0, 3000.0, jnp.array([2.0, 0.0]), 1000.0)
        >>> est.solver, est.ratio > 100
        ('kvaerno5', True)
    """
    check_concrete(y0=y0, args=args, t0=t0, t1=t1, field=field)
    y0 = jnp.asarray(y0)
    span = abs(float(t1) - float(t0))
    if span == 0.0:
        raise ValueError("solver='auto' needs a time span with t1 != t0 to estimate stiffness.")
    best = None
    for t, y, h in _probe_states(field, t0, t1, y0, args, rtol, atol):
        rho = spectral_radius(field, t, y, args)
        f = np.asarray(_evaluate(field, t, y, args), dtype=np.float64)
        size = float(np.linalg.norm(np.asarray(y, dtype=np.float64))) + atol * math.sqrt(y.size)
        rate = max(float(np.linalg.norm(f)) / size, 1.0 / span)
        stability = rho * span / STABILITY_BOUND
        accuracy = max(rate * span, 1.0) * rtol ** (-1 / 5)
        pinned = h * rho >= PINNED * STABILITY_BOUND and stability > STIFF_FACTOR * PROBE_STEPS
        stiff = pinned or not stability <= STIFF_FACTOR * accuracy  # nan/inf counts as stiff
        est = StiffnessEstimate(
            implicit_for(int(y0.size), rtol) if stiff else EXPLICIT,
            rho,
            rate,
            stability,
            accuracy,
            float(h * rho),
            float(t),
        )
        if best is None or (stiff, est.ratio) > (best.solver != EXPLICIT, best.ratio):
            best = est
    return best


_TRACED = (
    "solver='auto' chooses the solver from the stiffness of the equation at its initial state, "
    "which needs concrete values, but {name} is traced (inside jax.jit, grad or vmap). Resolve "
    "it first, outside the transformation: model = model.resolve_solver(ts, y0, args) (nde.fit "
    "does this for you), or pass a solver by name, e.g. solver='tsit5' or 'kvaerno5'."
)


def check_concrete(**values: Any) -> None:
    """Raise the `"auto"` ValueError if any of `values` holds a tracer."""
    for name, value in values.items():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value)):
            raise ValueError(_TRACED.format(name=name))
