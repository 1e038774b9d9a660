"""Mass-matrix DAEs M·du/dt = f(t, u, args) with a constant, possibly singular M (index 1).

diffrax has no mass matrices. Rather than a loop of our own, this module writes one diffrax
*solver*, `Radau5`, whose stage equations carry M, so that everything else is diffrax's:
`diffeqsolve`'s loop, `SaveAt`, the step-size controller built by `nde.SolveConfig`, the
discrete adjoint (`nde.Direct`) and forward mode (`nde.Forward`), and the Newton iteration
(diffrax's `VeryChord` root finder, an optimistix solver, differentiated by the implicit
function theorem).

The method: the 3-stage Radau IIA collocation method (order 5; Hairer & Wanner, "Solving
Ordinary Differential Equations II", section IV.8), stiffly accurate and L-stable, so its
last stage is the step's result and every accepted state satisfies the algebraic equations to
the Newton tolerance. For the increments W_i = Z_i - u_n of the stages at t_n + c_i·h,

    M·W_i = h·Σ_j a_ij·f(t_n + c_j·h, u_n + W_j),      i = 1, 2, 3;   u_{n+1} = u_n + W_3,

solved together (3·D unknowns) by the chord iteration from the previous step's collocation
polynomial, extrapolated (with `jacobian=` a `SparsityPattern`, the Newton matrix is read from
coloured products and factorised sparsely: `neuraldiffeq.solve.pattern_solver`). The error
estimate is Hairer's: an embedded order-3 formula, filtered through (M - h·γ0·J)⁻¹ (J = ∂f/∂u
at u_n, γ0 the real eigenvalue of the Radau matrix), which keeps it bounded on stiff and
algebraic components. Dense output (`SaveAt(ts=...)`) is the
collocation polynomial through u_n, Z_1, Z_2, Z_3.

Consistent initial states: with M singular, the algebraic equations w·f(t0, y0) = 0 (w in the
left null space of M) must hold at t0. `check_consistent` raises a `ValueError` naming `y0`
with the residual; `consistent_initial_state` solves them for the algebraic components.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .jacobian import (
    SparsityPattern,
    check_jacobian_choice,
    check_pattern_at_start,
    sparse_jacobian,
)
from .linear import check_linear_solve
from .pattern_solver import (
    PatternSolver,
    check_dense_solve,
    check_pattern_solve,
    pattern_apply,
    pattern_factor,
    pattern_method,
)

# -- the Radau IIA tableau (order 5) and its embedded error formula --------------------------------

_S6 = math.sqrt(6.0)
#: nodes
C = np.array([(4 - _S6) / 10, (4 + _S6) / 10, 1.0])
#: the Radau IIA matrix (its last row is the weights: stiffly accurate)
A = np.array(
    [
        [(88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225],
        [(296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225],
        [(16 - _S6) / 36, (16 + _S6) / 36, 1 / 9],
    ]
)
#: the real eigenvalue of A: the error formula's implicit weight
GAMMA0 = float(np.real(min(np.linalg.eigvals(A), key=lambda z: abs(z.imag))))


def _error_weights() -> np.ndarray:
    """Weights e with M·(û - u) = h·γ0·f(u_n) + M·Σ e_i W_i, û the embedded order-3 solution.

    û = u_n + h·(γ0·f(u_n) + Σ b̂_i f(Z_i)) with b̂ fixed by the order-3 quadrature conditions
    (γ0 + Σ b̂ = 1, Σ b̂·c = 1/2, Σ b̂·c² = 1/3); h·f(Z) = A⁻¹·(M·W) turns the difference of the
    weights into weights on the increments.
    """
    V = np.vstack([np.ones(3), C, C**2])
    b_hat = np.linalg.solve(V, np.array([1.0 - GAMMA0, 0.5, 1.0 / 3.0]))
    return np.linalg.solve(A.T, b_hat - A[-1])


E = _error_weights()


def _lagrange(s, nodes):
    """Values at s of the Lagrange basis polynomials through `nodes`."""
    out = []
    for i, xi in enumerate(nodes):
        term = jnp.ones_like(s)
        for j, xj in enumerate(nodes):
            if j != i:
                term = term * (s - xj) / (xi - xj)
        out.append(term)
    return jnp.stack(out)


#: the collocation polynomial's nodes: u_n at 0, then the stages
_NODES = (0.0, *C.tolist())


class CollocationInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output of one `Radau5` step: the collocation polynomial (degree 3) through u_n and
    the three stages.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.dae import C, CollocationInterpolation
        >>> ws = jnp.asarray(C)[:, None] * 2.0  # the increments of u(t) = 1 + 2t, h = 1
        >>> interp = CollocationInterpolation(t0=0.0, t1=1.0, y0=jnp.ones(1), ws=ws)
        >>> round(float(interp.evaluate(0.25)[0]), 6)
        1.5
    """

    t0: Any
    t1: Any
    y0: jax.Array
    ws: jax.Array  # (3, *y.shape): the stage increments Z_i - u_n

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        dt = self.t1 - self.t0
        s = jnp.where(dt == 0, 0.0, (t0 - self.t0) / jnp.where(dt == 0, 1.0, dt))
        weights = _lagrange(jnp.asarray(s, self.ws.dtype), _NODES)[1:]  # node 0 carries W = 0
        return self.y0 + jnp.tensordot(weights, self.ws, axes=1)


class _State(eqx.Module):
    """The last accepted step (its length and increments), for the next Newton guess."""

    h: jax.Array
    ws: jax.Array
    valid: jax.Array


def _as_mass_matrix(mass_matrix) -> tuple[tuple[float, ...], ...]:
    """A square constant mass matrix (a vector is its diagonal), as nested tuples (static)."""
    try:
        m = np.asarray(mass_matrix, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"mass_matrix must be a square matrix (D, D) or its diagonal (D,) of numbers, got "
            f"{type(mass_matrix).__name__}."
        ) from None
    if m.ndim == 1:
        m = np.diag(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0:
        raise ValueError(
            f"mass_matrix must be a square matrix (D, D) or its diagonal (D,), got shape "
            f"{np.shape(mass_matrix)}."
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("mass_matrix must be finite.")
    return tuple(tuple(float(v) for v in row) for row in m)


class Radau5(diffrax.AbstractImplicitSolver, diffrax.AbstractAdaptiveSolver):
    """The 3-stage Radau IIA method (order 5) for M·du/dt = f(t, u, args), a diffrax solver.

    Use it through `nde.NeuralODEMM` or `nde.SolveConfig(Radau5(M), ...).diffeqsolve(...)`
    (adaptive steps: the Newton iteration takes the step-size rule's rtol/atol). `mass_matrix`
    is a constant square matrix, or its diagonal; None is the identity (an ODE). Singular M:
    index-1 DAEs only (the algebraic equations solvable for the algebraic components), from a
    consistent initial state (see `check_consistent`). See the module docstring for the method.

    Arguments:
        mass_matrix: M, shape (D, D), or its diagonal (D,); None for the identity.
        root_finder: the Newton iteration (default diffrax's `VeryChord`, with the step-size
            controller's tolerances).
        root_find_max_steps: Newton iterations per step before the step is rejected (and retried
            smaller).
        jacobian: `"dense"` (the default: the Newton matrix of the three stages, 3D×3D, formed
            by `jax.jacfwd` and LU-factorised by lineax) or a `SparsityPattern` of ∂f/∂u
            (`nde.SolveConfig(..., jacobian="sparse")` detects one). With a pattern, the Newton
            matrix of the stages has the pattern of every stage coupled to every other (with
            M's entries), is read from `3·n_colours` products and factorised by `linear_solve`;
            the error estimate's matrix M - h·γ0·J likewise, from `n_colours` JVPs.
        linear_solve: with a pattern: `"dense"`, `"blocks"`, `"sparse"` (SuperLU) or `"auto"`
            (by size, `neuraldiffeq.solve.linear.choose_linear_solve`); see
            `neuraldiffeq.solve.pattern_solver`.

    Example:
        >>> import diffrax, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.solve.dae import Radau5
        >>> # y1' = -y1, 0 = y2 - 2·y1 (so y2 = 2·exp(-t))
        >>> field = lambda t, y, args: jnp.stack([-y[0], y[1] - 2 * y[0]])
        >>> config = nde.SolveConfig(Radau5([1.0, 0.0]), rtol=1e-6, atol=1e-6,
        ...                          sensitivity=nde.Direct())
        >>> sol = config.diffeqsolve(diffrax.ODETerm(field), 0.0, 1.0, jnp.array([1.0, 2.0]),
        ...                          saveat=diffrax.SaveAt(t1=True))
        >>> tuple(round(float(v), 6) for v in sol.ys[-1])
        (0.367879, 0.735759)
    """

    mass_matrix: tuple[tuple[float, ...], ...] | None = eqx.field(
        static=True, default=None, converter=lambda m: None if m is None else _as_mass_matrix(m)
    )
    root_finder: optx.AbstractRootFinder = diffrax.with_stepsize_controller_tols(
        diffrax.VeryChord
    )()
    root_find_max_steps: int = eqx.field(static=True, default=10)
    jacobian: Any = eqx.field(static=True, default="dense")
    linear_solve: str = eqx.field(static=True, default="auto", converter=check_linear_solve)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = CollocationInterpolation

    def __check_init__(self):
        check_jacobian_choice("Radau5", self.jacobian)
        if self.jacobian == "dense":
            check_dense_solve(self.linear_solve, "Radau5")
        else:
            check_pattern_solve(self.linear_solve, "Radau5")

    def _pattern(self) -> SparsityPattern | None:
        return self.jacobian if isinstance(self.jacobian, SparsityPattern) else None

    def order(self, terms) -> int:
        return 5

    def error_order(self, terms) -> int:
        return 4  # the embedded formula has order 3: its local error is O(h^4)

    def _mass(self, y):
        if self.mass_matrix is None:
            return jnp.eye(y.shape[0], dtype=y.dtype)
        m = jnp.asarray(self.mass_matrix, y.dtype)
        if m.shape[0] != y.shape[0]:
            raise ValueError(
                f"mass_matrix is {m.shape[0]}x{m.shape[0]} but the state has {y.shape[0]} "
                "components; they must match."
            )
        return m

    def init(self, terms, t0, t1, y0, args) -> _State:
        if jnp.ndim(y0) != 1:
            raise ValueError(
                f"Radau5 solves states of shape (D,), got y0 of shape {jnp.shape(y0)}."
            )
        pattern = self._pattern()
        check_pattern_at_start("Radau5", self.jacobian, pattern, y0.shape[0])
        return _State(
            h=jnp.ones((), y0.dtype), ws=jnp.zeros((3, *y0.shape), y0.dtype), valid=jnp.array(False)
        )

    def step(self, terms, t0, t1, y0, args, solver_state: _State, made_jump):
        m = None if self.mass_matrix is None else self._mass(y0)

        def mass(w):  # M·w for each row of w (no n×n identity for an ODE: it costs n²)
            return w if m is None else w @ m.T

        h = terms.contr(t0, t1)
        cs = jnp.asarray(C, y0.dtype)
        a = jnp.asarray(A, y0.dtype)
        times = t0 + cs * (t1 - t0)

        def fh(t, y):  # h·f(t, y), through the term (which knows the direction of time)
            return terms.vf_prod(t, y, args, h)

        def residual(ws, _):
            fs = jax.vmap(fh)(times, y0 + ws)
            return mass(ws) - a @ fs

        # Newton's first guess: the last step's collocation polynomial, extrapolated.
        prev = solver_state
        s = 1.0 + cs * h / jnp.where(prev.valid, prev.h, 1.0)
        guess = jnp.tensordot(_lagrange(s, _NODES)[1:].T, prev.ws, axes=1) - prev.ws[-1]
        guess = jnp.where(prev.valid & jnp.logical_not(made_jump), guess, jnp.zeros_like(guess))
        guess = jnp.where(jnp.all(jnp.isfinite(guess)), guess, jnp.zeros_like(guess))
        pattern = self._pattern()
        root_finder, adjoint = self.root_finder, optx.ImplicitAdjoint()
        if pattern is not None:
            # the stages' Newton matrix from the sparse Jacobian, for the Newton iteration and
            # for the implicit-function-theorem solves of its derivatives
            stages = _stage_pattern(pattern, self.mass_matrix)
            linear = PatternSolver(stages, self.linear_solve)
            root_finder = eqx.tree_at(lambda r: r.linear_solver, root_finder, linear)
            adjoint = optx.ImplicitAdjoint(linear_solver=linear)
        sol = optx.root_find(
            residual,
            root_finder,
            guess,
            None,
            throw=False,
            max_steps=self.root_find_max_steps,
            adjoint=adjoint,
        )
        ws = sol.value
        y1 = y0 + ws[-1]

        # The error estimate, filtered through (M - h·γ0·J)⁻¹ (Hairer & Wanner IV.8). It only
        # steers the step size, so no gradient flows through it.
        ws_e, y0_e = jax.lax.stop_gradient((ws, y0))
        rhs = GAMMA0 * jax.lax.stop_gradient(fh(t0, y0_e)) + mass(jnp.asarray(E, y0.dtype) @ ws_e)
        if pattern is None:
            jac = jax.lax.stop_gradient(jax.jacfwd(lambda y: fh(t0, y))(y0_e))  # h·J
            y_error = jnp.linalg.solve(self._mass(y0) - GAMMA0 * jac, rhs)
        else:
            full = _with_mass(pattern, self.mass_matrix)
            hjac = sparse_jacobian(lambda t, y, a: fh(t0, y), None, y0_e, None, full)
            if self.mass_matrix is None:
                mass = (full.rows == full.cols).astype(np.float64)
            else:
                mass = np.asarray(self.mass_matrix)[full.rows, full.cols]
            values = jnp.asarray(mass, y0.dtype) - GAMMA0 * jax.lax.stop_gradient(hjac)
            method = pattern_method(full, self.linear_solve)
            y_error = pattern_apply(full, method, pattern_factor(full, values, method), rhs)
        result = diffrax.RESULTS.promote(sol.result)
        # a Newton iteration that did not converge rejects the step (retried smaller), as in
        # diffrax's own implicit solvers
        ok = jnp.all(jnp.isfinite(y_error)) & (result == diffrax.RESULTS.successful)
        y_error = jnp.where(ok, y_error, jnp.inf)
        dense_info = dict(y0=y0, ws=ws)
        state = _State(h=jnp.asarray(h, y0.dtype), ws=ws, valid=jnp.array(True))
        return y1, y_error, dense_info, state, result

    def func(self, terms, t0, y0, args):
        """M⁺·f(t0, y0): the differential components' slopes (0 for algebraic ones); diffrax
        uses it only to choose the first step."""
        f = terms.vf(t0, y0, args)
        return f if self.mass_matrix is None else jnp.linalg.lstsq(self._mass(y0), f)[0]


def _with_mass(pattern: SparsityPattern, mass_matrix) -> SparsityPattern:
    """The pattern of M - c·J: `pattern` with M's non-zeros added."""
    if mass_matrix is None:
        return pattern
    rows, cols = np.nonzero(np.asarray(mass_matrix))
    if np.all(rows == cols):
        return pattern  # the diagonal is always in a pattern
    return SparsityPattern(np.r_[pattern.rows, rows], np.r_[pattern.cols, cols], pattern.n)


_STAGES: dict = {}


def _stage_pattern(pattern: SparsityPattern, mass_matrix) -> SparsityPattern:
    """The pattern of the three stages' Newton matrix I₃⊗M - A⊗(h·J) (stage s of state i at
    s·n + i): every stage coupled to every other through J's pattern, M's on the diagonal
    blocks. Built once per pattern and mass matrix (it is static)."""
    key = (pattern, mass_matrix)
    if key not in _STAGES:
        full, n = _with_mass(pattern, mass_matrix), pattern.n
        shift = (np.arange(3) * n)[:, None, None]
        rows = (shift + full.rows[None, None, :] + 0 * shift.transpose(1, 0, 2)).ravel()
        cols = (shift.transpose(1, 0, 2) + full.cols[None, None, :] + 0 * shift).ravel()
        if len(_STAGES) > 4:
            _STAGES.clear()
        _STAGES[key] = SparsityPattern(rows, cols, 3 * n)
    return _STAGES[key]


# -- consistent initial states ---------------------------------------------------------------------


def _null_spaces(mass_matrix, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(left null space W, right null space V) of M: W.T @ M = 0 and M @ V = 0, orthonormal."""
    m = np.eye(d) if mass_matrix is None else np.asarray(mass_matrix, float)
    u, sv, vt = np.linalg.svd(m)
    rank = int(np.sum(sv > sv.max(initial=0.0) * d * np.finfo(float).eps))
    return u[:, rank:], vt[rank:].T


def algebraic_residual(field: Callable, mass_matrix, t0, y0, args: Any = None) -> jax.Array:
    """The residual of the algebraic equations at (t0, y0): Wᵀ·f(t0, y0), W spanning the left
    null space of M (for a diagonal M: the components of f where M is 0).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.dae import algebraic_residual
        >>> f = lambda t, y, args: jnp.stack([-y[0], y[0] + y[1] - 1.0])
        >>> r = algebraic_residual(f, [1.0, 0.0], 0.0, jnp.array([0.2, 0.5]))
        >>> round(abs(float(r[0])), 6)
        0.3
    """
    y0 = jnp.asarray(y0)
    mm = None if mass_matrix is None else _as_mass_matrix(mass_matrix)
    w, _ = _null_spaces(mm, y0.shape[0])
    return jnp.asarray(w.T, y0.dtype) @ field(t0, y0, args)


def check_consistent(
    field: Callable, mass_matrix, t0, y0, args: Any = None, *, tol: float = 1e-6
) -> None:
    """Raise a `ValueError` naming `y0` if the algebraic equations do not hold at t0 (largest
    residual above `tol`). Skipped under `jax.jit` (traced values cannot be checked).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.dae import check_consistent
        >>> f = lambda t, y, args: jnp.stack([-y[0], y[0] + y[1] - 1.0])
        >>> check_consistent(f, [1.0, 0.0], 0.0, jnp.array([0.2, 0.5]))
        Traceback (most recent call last):
        ...
        ValueError: y0 is not consistent: the algebraic equations (the rows of f where M is singular) have residual 0.3 at t0 (tolerance 1e-06). Start from a y0 that satisfies them, or compute one with model.consistent(y0) (neuraldiffeq.solve.dae.consistent_initial_state).
    """  # noqa: E501
    if isinstance(y0, jax.core.Tracer) or isinstance(t0, jax.core.Tracer):
        return
    try:
        residual = algebraic_residual(field, mass_matrix, t0, y0, args)
    except jax.errors.ConcretizationTypeError:  # traced parameters or args: cannot check now
        return
    if isinstance(residual, jax.core.Tracer) or residual.size == 0:
        return
    worst = float(jnp.max(jnp.abs(residual)))
    if not worst <= tol:
        raise ValueError(
            f"y0 is not consistent: the algebraic equations (the rows of f where M is singular) "
            f"have residual {worst:.3g} at t0 (tolerance {tol:.3g}). Start from a y0 that "
            "satisfies them, or compute one with model.consistent(y0) "
            "(neuraldiffeq.solve.dae.consistent_initial_state)."
        )


def consistent_initial_state(
    field: Callable, mass_matrix, t0, y0, args: Any = None, *, tol: float | None = None
) -> jax.Array:
    """`y0` with its algebraic components (the null space of M) changed so that the algebraic
    equations hold at t0; the differential components are kept. Newton's method (optimistix),
    to `tol` (default 100 machine epsilons, relative and absolute).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.dae import consistent_initial_state
        >>> f = lambda t, y, args: jnp.stack([-y[0], y[0] + y[1] - 1.0])
        >>> y0 = consistent_initial_state(f, [1, 0], 0.0, jnp.array([0.2, 0.5]))
        >>> tuple(round(float(v), 6) for v in y0)
        (0.2, 0.8)
    """
    y0 = jnp.asarray(y0)
    if not jnp.issubdtype(y0.dtype, jnp.inexact):
        y0 = y0.astype(jnp.result_type(float))
    mm = None if mass_matrix is None else _as_mass_matrix(mass_matrix)
    w, v = _null_spaces(mm, y0.shape[0])
    if v.shape[1] == 0:
        return y0
    w, v = jnp.asarray(w, y0.dtype), jnp.asarray(v, y0.dtype)
    tol = 100 * float(jnp.finfo(y0.dtype).eps) if tol is None else tol

    def equations(z, _):
        return w.T @ field(t0, y0 + v @ z, args)

    sol = optx.root_find(
        equations, optx.Newton(rtol=tol, atol=tol), jnp.zeros(v.shape[1], y0.dtype), throw=False
    )
    y = y0 + v @ sol.value
    if sol.result != optx.RESULTS.successful:
        raise ValueError(
            "consistent_initial_state: Newton's method did not solve the algebraic equations "
            f"from y0 ({sol.result}); start nearer a consistent state."
        )
    return y
