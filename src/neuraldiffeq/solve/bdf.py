"""A variable-order BDF/NDF solver (orders 1–5) for large stiff ODEs, as a diffrax solver.

The method of CVODE, scipy's `BDF` and Julia's `FBDF`: the numerical differentiation formulas
(NDF) of Shampine & Reichelt ("The MATLAB ODE Suite", 1997), a backward differentiation formula
with a small modification of the leading coefficient (κ) that enlarges the step for the same
accuracy. The solution's history is kept as the modified divided differences D (D[0] = y_n,
D[j] ≈ h^j·y^(j)/j! scaled for the current step h); a step of order k

- predicts y_pred = Σ_{j≤k} D[j] and solves (1/α_k)·h·f(t_{n+1}, y_pred + d) - ψ - d = 0 for the
  correction d by a chord Newton iteration on A = I - h·J/α_k (J = ∂f/∂y at the prediction;
  ψ = Σ γ_j D[j] / α_k), at most `NEWTON_MAXITER` iterations, stopped by the contraction test of
  Shampine & Reichelt;
- estimates its local error as C_k·d (C_k the error constant), accepts it when that error's
  norm (diffrax's: RMS of error / (atol + rtol·max(|y_n|, |y_{n+1}|))) is below 1;
- after k+1 steps of equal size, compares the error estimates of orders k-1, k, k+1 and moves to
  the order that allows the largest next step (at most `MAX_ORDER`).

Everything else is diffrax's: `diffeqsolve`'s loop, `SaveAt`, the discrete adjoint
(`nde.Direct`), forward mode (`nde.Forward`); the continuous adjoint `nde.Quadrature` solves the
adjoint equation with this solver too (`BDF.for_adjoint`: the Jacobian pattern transposed).
The step size is the solver's own choice passed through diffrax's `PIDController`: the solver
reports as its error the scaled norm that makes
the controller (an integral controller with `error_order` 1) pick exactly the step factor the
method wants (held at 1 for k+1 steps after a change, as BDF needs; 0.5 after a failed Newton
iteration), and accepts exactly the steps whose true error norm is below 1. So use it with the
default `PIDController` coefficients (what `nde.SolveConfig` builds).

Jacobian and linear solve (`jacobian=`, `linear_solve=`): `"dense"` (jax.jacfwd, LU) for small
systems; a `SparsityPattern` (`neuraldiffeq.solve.jacobian`) gives the Jacobian from as many
JVPs as the pattern has colours, solved by SciPy's SuperLU (`"sparse"`) or by preconditioned
GMRES (`"krylov"`, matrix-free; see `neuraldiffeq.solve.linear`).

Gradients: the Newton iteration runs without derivatives, and its result y* is the step's
value (as in CVODE and scipy); its derivatives are those of one more chord step from it
(dy = A⁻¹·dR(y*), R the residual, A the Newton matrix at the step's prediction), which is the
implicit function theorem with the chord matrix: exact to the Newton tolerance times ‖h·ΔJ‖,
so gradients agree with finite differences at tight tolerances (tests/test_bdf.py). That step
is only computed when derivatives are.

Example:
    >>> import diffrax, jax.numpy as jnp, neuraldiffeq as nde
    >>> from neuraldiffeq.solve.bdf import BDF
    >>> config = nde.SolveConfig(BDF(), rtol=1e-6, atol=1e-9, sensitivity=nde.Direct())
    >>> sol = config.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -1e3 * (y - jnp.cos(t))),
    ...                          0.0, 1.0, jnp.zeros(1), saveat=diffrax.SaveAt(t1=True))
    >>> abs(float(sol.ys[0, 0]) - float(jnp.cos(1.0))) < 1e-3
    True
"""

from __future__ import annotations

import dataclasses
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
from .linear import (
    block_apply,
    block_factor,
    block_solver,
    check_linear_solve,
    choose_linear_solve,
    krylov_solve,
    lu_factor,
    lu_solve,
    sparse_solve,
)

#: The highest order.
MAX_ORDER = 5
#: Chord iterations per step before the step is retried at half the size.
NEWTON_MAXITER = 4
#: Step factor after a failed Newton iteration.
NEWTON_FAIL_FACTOR = 0.5
#: The step-size controller's safety factor (diffrax's PIDController default).
SAFETY = 0.9
#: Accepted steps a Jacobian is kept before it is evaluated again (with `reuse_jacobian`).
JAC_MAX_AGE = 20
#: The Newton matrix I - c·J is factorised again when c = h/α has moved by more than this
#: fraction since its factorisation (CVODE's DGMAX).
C_CHANGE = 0.3

# -- the NDF coefficients (Shampine & Reichelt 1997, table 1) --------------------------------------
_KAPPA = np.array([0.0, -0.1850, -1 / 9, -0.0823, -0.0415, 0.0])
_GAMMA = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, MAX_ORDER + 1))])
_ALPHA = (1.0 - _KAPPA) * _GAMMA
#: error constants C_k, k = 0..MAX_ORDER+1 (C_0 and C_{MAX+1} unused: infinite)
_ERROR_CONST = np.concatenate(
    [_KAPPA * _GAMMA + 1.0 / np.arange(1, MAX_ORDER + 2), [np.inf]]
)  # fmt: skip
_ROWS = MAX_ORDER + 3  # D holds differences up to order k+2


def _rescale_matrix(order, factor, dtype):
    """The (MAX_ORDER+1)² matrix that rescales D[:k+1] from step h to factor·h (identity beyond
    the order): Rᵀ with R = R(k, factor)·R(k, 1), R(k, f)[i, j] = Π_{m≤i} (m-1-f·j)/m."""
    i = jnp.arange(1, MAX_ORDER + 1, dtype=dtype)[:, None]
    j = jnp.arange(1, MAX_ORDER + 1, dtype=dtype)[None, :]
    inside = (jnp.arange(MAX_ORDER + 1)[:, None] <= order) & (
        jnp.arange(MAX_ORDER + 1)[None, :] <= order
    )
    eye = jnp.eye(MAX_ORDER + 1, dtype=dtype)

    def r(f):
        m = jnp.zeros((MAX_ORDER + 1, MAX_ORDER + 1), dtype).at[0].set(1.0)
        m = m.at[1:, 1:].set((i - 1 - f * j) / i)
        return jnp.where(inside, jnp.cumprod(m, axis=0), eye)

    return (r(factor) @ r(jnp.ones((), dtype))).T


# D is kept as a tuple of _ROWS vectors, not one (_ROWS, n) array: every operation on it is then
# a chain of elementwise operations on whole vectors, which XLA fuses, where row updates of one
# array (scatters, dynamic row slices) each copied the whole array on CPU.


def _rescale(d, order, factor):
    m = _rescale_matrix(order, factor, d[0].dtype)
    head = tuple(sum(m[i, j] * d[j] for j in range(MAX_ORDER + 1)) for i in range(MAX_ORDER + 1))
    return head + tuple(d[MAX_ORDER + 1 :])


def _row(d, i):
    """d[i] for a traced index i (a chain of selects: exact, and fused)."""
    out = d[0]
    for j in range(1, len(d)):
        out = jnp.where(i == j, d[j], out)
    return out


def _masked_sum(d, weights):
    """Σ_j weights[j]·d[j] over the rows with non-zero weight (rows outside are skipped, not
    multiplied, so they never turn a sum into NaN)."""
    out = jnp.zeros_like(d[0])
    for j in range(len(d)):
        out = out + jnp.where(weights[j] != 0, weights[j] * d[j], 0.0)
    return out


class BDFInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output of one `BDF` step: the interpolating polynomial of order k through the step's
    end and the k previous (equally spaced, after rescaling) points, from the differences D.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.bdf import BDFInterpolation
        >>> d = jnp.zeros((8, 1)).at[0].set(3.0).at[1].set(2.0)  # y = 3 at t1, slope 2 per step
        >>> interp = BDFInterpolation(t0=0.0, t1=1.0, d=d, order=jnp.array(1))
        >>> round(float(interp.evaluate(0.5)[0]), 6)
        2.0
    """

    t0: Any
    t1: Any
    d: jax.Array  # (MAX_ORDER + 1, n): the differences after the step (rows beyond: unused)
    order: jax.Array

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        h = self.t1 - self.t0
        h = jnp.where(h == 0, 1.0, h)
        m = jnp.arange(MAX_ORDER, dtype=self.d.dtype)
        # Π_{m<j} (t - (t1 - m·h)) / ((m+1)·h), j = 1..MAX_ORDER, zero beyond the order
        p = jnp.cumprod((t0 - (self.t1 - m * h)) / ((m + 1) * h))
        p = jnp.where(jnp.arange(1, MAX_ORDER + 1) <= self.order, p, 0.0).astype(self.d.dtype)
        return self.d[0] + p @ self.d[1 : MAX_ORDER + 1]


class _State(eqx.Module):
    d: tuple  # MAX_ORDER + 3 vectors (n,): the differences D[0], D[1], ..., scaled for step h
    order: jax.Array  # int
    h: jax.Array  # the step D is scaled for
    n_equal: jax.Array  # accepted steps of size h since the last change
    valid: jax.Array  # False before the first step
    jac: Any = None  # ∂f/∂y kept across steps (dense (n, n) or values at the pattern)
    jac_age: Any = None  # accepted steps since it was evaluated
    factor: Any = None  # the Newton matrix I - c·J in the linear solve's form
    c_factor: Any = None  # the c it was factorised with


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _no_gradient(tree):
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


@eqx.filter_custom_jvp
def _tangent_only(r, exact):
    return jnp.zeros_like(r)


@_tangent_only.def_jvp
def _tangent_only_jvp(primals, tangents):
    r, exact = primals
    dr = tangents[0]
    return jnp.zeros_like(r), (jnp.zeros_like(r) if dr is None else exact(dr))


def _implicit_correction(exact, like):
    """r -> a correction whose value is zero and whose derivative is exact(dr). Added to the
    Newton iteration's result with r the step's residual there, it carries that result's
    derivatives by the implicit function theorem (exact: the solve with the Newton matrix at
    the step's prediction) without moving its value, so the residual is only computed when
    derivatives are. `exact` is closure-converted: its closed-over arrays travel as arguments."""
    exact = eqx.filter_closure_convert(exact, like)
    return lambda r: _tangent_only(r, exact)


class BDF(diffrax.AbstractImplicitSolver, diffrax.AbstractAdaptiveSolver):
    """Variable-order (1–5) BDF/NDF for stiff ODEs dy/dt = f(t, y, args), y of shape (n,).

    See the module docstring (`neuraldiffeq.solve.bdf`) for the method. Adaptive steps only; the
    tolerances are the step-size controller's (diffrax fills them into `root_finder`).

    Arguments:
        jacobian: `"dense"` (every entry, by `jax.jacfwd`) or a `SparsityPattern` (the entries
            that may be non-zero; see `neuraldiffeq.solve.jacobian`). `nde.SolveConfig(...,
            jacobian="sparse")` detects the pattern for you.
        linear_solve: `"dense"`, `"blocks"` (the pattern's independent blocks, batched dense
            LUs), `"sparse"` (SuperLU; both need a pattern), `"krylov"` (GMRES) or `"auto"`
            (`neuraldiffeq.solve.linear.choose_linear_solve`: dense up to 200 states, else
            blocks or sparse with a pattern, Krylov without).
        reuse_jacobian: keep the Jacobian and the factorised Newton matrix across steps, as
            CVODE does (True, the default): the Jacobian is evaluated again after
            `JAC_MAX_AGE` steps or when a Newton iteration with the kept one fails (the step is
            then retried with a fresh one before its size is cut), the matrix is factorised
            again when c = h/α moves by more than `C_CHANGE`. Derivatives (`nde.Direct`,
            `nde.Forward`) always use the Jacobian at the step's prediction, so gradients are
            those of `reuse_jacobian=False`. Not used by the matrix-free Krylov solve (no
            pattern), which forms no Jacobian.

    Example:
        >>> import diffrax, jax.numpy as jnp
        >>> from neuraldiffeq.solve.bdf import BDF
        >>> sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -y), BDF(), 0.0, 1.0,
        ...     None, jnp.ones(1), stepsize_controller=diffrax.PIDController(rtol=1e-6,
        ...     atol=1e-9))
        >>> round(float(sol.ys[-1, 0]), 5)
        0.36788
    """

    root_finder: optx.AbstractRootFinder = diffrax.with_stepsize_controller_tols(
        diffrax.VeryChord
    )()
    root_find_max_steps: int = eqx.field(static=True, default=NEWTON_MAXITER)  # fixed: unused
    jacobian: Any = eqx.field(static=True, default="dense")
    linear_solve: str = eqx.field(static=True, default="auto", converter=check_linear_solve)
    reuse_jacobian: bool = eqx.field(static=True, default=True)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = BDFInterpolation

    def __check_init__(self):
        check_jacobian_choice("BDF", self.jacobian)
        if self.linear_solve in ("sparse", "blocks") and self.jacobian == "dense":
            raise ValueError(
                f"linear_solve={self.linear_solve!r} factorises the sparse Jacobian, so it needs a "
                "sparsity pattern: pass jacobian=<SparsityPattern> (or jacobian='sparse' to "
                "SolveConfig), or choose linear_solve='dense' or 'krylov'."
            )

    def order(self, terms) -> int:
        return 1  # the lowest order it may use (variable order: 1 to MAX_ORDER)

    def error_order(self, terms) -> float:
        return 1.0  # see the module docstring: the reported error sets the factor directly

    def _pattern(self) -> SparsityPattern | None:
        return self.jacobian if isinstance(self.jacobian, SparsityPattern) else None

    def for_adjoint(self) -> BDF:
        """This solver for the adjoint equation da/dt = -Jᵀa of a continuous adjoint
        (`nde.Quadrature`): the same linear solve and settings, with the transposed
        sparsity pattern (and its own colouring) where a pattern is given.

        Example:
            >>> from neuraldiffeq.solve.bdf import BDF
            >>> from neuraldiffeq.solve.jacobian import SparsityPattern
            >>> solver = BDF(jacobian=SparsityPattern([0, 0], [1, 2], 3), linear_solve="sparse")
            >>> solver.jacobian.n_colours, solver.for_adjoint().jacobian.n_colours
            (3, 2)
        """
        pattern = self._pattern()
        if pattern is None:
            return self
        return dataclasses.replace(self, jacobian=pattern.transposed())

    def _linear(self, n: int) -> str:
        if self.linear_solve == "auto":
            return choose_linear_solve(n, self._pattern())
        return self.linear_solve

    def init(self, terms, t0, t1, y0, args) -> _State:
        if not isinstance(y0, jax.Array) or jnp.ndim(y0) != 1:
            raise ValueError(
                "BDF solves states of shape (n,), got "
                + (f"shape {jnp.shape(y0)}" if isinstance(y0, jax.Array) else "a pytree")
                + ". (nde.Backsolve() and nde.Interpolating() solve a pytree of state, adjoint "
                "and parameters backwards: with solver='bdf' use nde.Direct(), nde.Forward() or "
                "nde.Quadrature().)"
            )
        pattern = self._pattern()
        check_pattern_at_start("BDF", self.jacobian, pattern, y0.shape[0])
        state = _State(
            d=tuple(jnp.zeros(y0.shape, y0.dtype) for _ in range(_ROWS)),
            order=jnp.array(1),
            h=jnp.ones((), y0.dtype),
            n_equal=jnp.array(0),
            valid=jnp.array(False),
        )
        if not self._reuses(y0.shape[0]):
            return state
        n, dtype = y0.shape[0], y0.dtype
        jac = jnp.zeros((n, n) if pattern is None else (pattern.nnz,), dtype)
        factor = jax.eval_shape(lambda j: self._factorise(j, jnp.ones((), dtype)), jac)
        factor = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), factor)
        return eqx.tree_at(
            lambda st: (st.jac, st.jac_age, st.factor, st.c_factor),
            state,
            (jac, jnp.array(0), factor, jnp.ones((), dtype)),
            is_leaf=lambda x: x is None,
        )

    def _reuses(self, n: int) -> bool:
        """Whether the Jacobian and Newton matrix are kept across steps (not matrix-free)."""
        matrix_free = self._pattern() is None and self._linear(n) == "krylov"
        return self.reuse_jacobian and not matrix_free

    # -- with reuse: the Jacobian, its factorisation and its application, separately ---------------

    def _jacobian(self, f, y):
        """∂f/∂y at y: (n, n) without a pattern, else the values at the pattern's entries."""
        pattern = self._pattern()
        if pattern is None:
            return jax.jacfwd(f)(y)
        return sparse_jacobian(lambda t, v, a: f(v), None, y, None, pattern)

    def _factorise(self, jac, c):
        """I - c·J in the form `_apply` solves with."""
        n = self._pattern().n if self._pattern() is not None else jac.shape[0]
        linear, pattern = self._linear(n), self._pattern()
        if pattern is None:
            return lu_factor(jnp.eye(n, dtype=jac.dtype) - c * jac)
        is_diag = jnp.asarray(pattern.rows == pattern.cols)
        a_values = jnp.where(is_diag, 1.0, 0.0).astype(jac.dtype) - c * jac
        if linear == "dense":
            dense = jnp.zeros((n, n), jac.dtype).at[pattern.rows, pattern.cols].set(a_values)
            return lu_factor(dense)
        if linear == "blocks":
            return block_factor(pattern, a_values)
        return a_values  # SuperLU (it keeps its factors of recent values) or GMRES

    def _apply(self, factor, r):
        n = r.shape[0]
        linear, pattern = self._linear(n), self._pattern()
        if pattern is None or linear == "dense":
            return lu_solve(factor, r)
        if linear == "blocks":
            return block_apply(pattern, factor, r)
        if linear == "sparse":
            return sparse_solve(pattern, factor, r)
        is_diag = jnp.asarray(pattern.rows == pattern.cols)
        diag = jax.ops.segment_sum(jnp.where(is_diag, factor, 0.0), pattern.rows, n)
        matvec = lambda v: jax.ops.segment_sum(  # noqa: E731
            factor * v[pattern.cols], pattern.rows, n
        )
        rtol, atol = self.root_finder.rtol, self.root_finder.atol
        return krylov_solve(matvec, r, diag, rtol=1e-2 * rtol, atol=1e-2 * atol)

    # -- the Newton matrix A = I - J_h/α and its solves -------------------------------------------

    def _matrix(self, hf, y, alpha):
        """(solve(r) -> A⁻¹r) for A = I - ∂(h·f)/∂y / α at y, built without derivatives."""
        n = y.shape[0]
        linear = self._linear(n)
        pattern = self._pattern()
        if pattern is None:
            if linear == "dense":
                jac = jax.jacfwd(hf)(y)
                lu = lu_factor(jnp.eye(n, dtype=y.dtype) - jac / alpha)
                return lambda r: lu_solve(lu, r)
            # matrix-free: products by JVPs; without a pattern the diagonal is unknown, so GMRES
            # runs unpreconditioned
            _, jvp = jax.linearize(hf, y)
            diag = jnp.ones_like(y)
            matvec = lambda v: v - jvp(v) / alpha  # noqa: E731
        else:
            values = sparse_jacobian(lambda t, v, a: hf(v), None, y, None, pattern)
            is_diag = jnp.asarray(pattern.rows == pattern.cols)
            a_values = jnp.where(is_diag, 1.0, 0.0).astype(y.dtype) - values / alpha
            if linear == "dense":
                dense = jnp.zeros((n, n), y.dtype).at[pattern.rows, pattern.cols].set(a_values)
                lu = lu_factor(dense)
                return lambda r: lu_solve(lu, r)
            if linear == "sparse":
                return lambda r: sparse_solve(pattern, a_values, r)
            if linear == "blocks":
                return block_solver(pattern, a_values)
            diag = jax.ops.segment_sum(jnp.where(is_diag, a_values, 0.0), pattern.rows, n)
            matvec = lambda v: jax.ops.segment_sum(  # noqa: E731
                a_values * v[pattern.cols], pattern.rows, n
            )
        rtol, atol = self.root_finder.rtol, self.root_finder.atol
        # the linear solve only needs to be well below the Newton tolerance
        return lambda r: krylov_solve(matvec, r, diag, rtol=1e-2 * rtol, atol=1e-2 * atol)

    # -- one step ---------------------------------------------------------------------------------

    def step(self, terms, t0, t1, y0, args, solver_state: _State, made_jump):
        rtol, atol = self.root_finder.rtol, self.root_finder.atol
        dtype = y0.dtype
        h = jnp.asarray(terms.contr(t0, t1), dtype)
        state = solver_state
        fresh = jnp.logical_not(state.valid) | made_jump

        # D for this step: from scratch (order 1, D[1] = h·f) or rescaled from the last step
        ratio = h / jnp.where(state.valid, state.h, h)
        changed = jnp.abs(ratio - 1) > 1e-8

        def restart():
            slope = terms.vf_prod(t0, y0, args, h)
            return (y0, slope) + tuple(jnp.zeros_like(y0) for _ in range(_ROWS - 2))

        # (the rescaling is the identity for an unchanged step, which most steps are)
        branch = jnp.where(fresh, 2, jnp.where(changed, 1, 0))
        d = jax.lax.switch(
            branch,
            [lambda: state.d, lambda: _rescale(state.d, state.order, ratio), restart],
        )
        order = jnp.where(fresh, 1, state.order)
        n_equal = jnp.where(fresh | changed, 0, state.n_equal)

        k_mask = (jnp.arange(_ROWS) <= order).astype(dtype)
        gamma = jnp.asarray(np.r_[_GAMMA, 0.0, 0.0], dtype)
        alpha = jnp.asarray(_ALPHA, dtype)[order]
        y_pred = _masked_sum(d, k_mask)
        psi = _masked_sum(d, jnp.where(jnp.arange(_ROWS) >= 1, k_mask * gamma, 0.0)) / alpha
        t_new = t1

        def residual(corr):
            return terms.vf_prod(t_new, y_pred + corr, args, h) / alpha - psi - corr

        # -- the chord Newton iteration, without derivatives ---------------------------------------
        terms_ng, args_ng, y_pred_ng, psi_ng = _no_gradient((terms, args, y_pred, psi))

        def hf_ng(y):
            return terms_ng.vf_prod(t_new, y, args_ng, h)

        inv_scale = 1.0 / (atol + rtol * jnp.abs(y_pred_ng))
        eps = float(jnp.finfo(dtype).eps)
        newton_tol = max(10 * eps / rtol, min(0.03, rtol**0.5))

        def newton(solve):
            def cond(carry):
                it, _, _, converged, failed = carry
                return (it < NEWTON_MAXITER) & jnp.logical_not(converged | failed)

            def body(carry):
                it, corr, dy_norm_old, _, _ = carry
                f = hf_ng(y_pred_ng + corr) / alpha
                # (materialised once: XLA would otherwise recompute the solve in each of the
                # three operations below that read it)
                dy = jax.lax.optimization_barrier(solve(f - psi_ng - corr))
                finite = jnp.all(jnp.isfinite(dy))
                dy_norm = _rms(dy * inv_scale)
                rate = dy_norm / jnp.where((it > 0) & (dy_norm_old > 0), dy_norm_old, 1.0)
                slow = (it > 0) & (
                    (rate >= 1)
                    | (rate ** (NEWTON_MAXITER - it) / (1 - rate) * dy_norm > newton_tol)
                )
                failed = jnp.logical_not(finite) | slow
                corr = jnp.where(failed, corr, corr + dy)
                converged = jnp.logical_not(failed) & (
                    (dy_norm == 0) | ((it > 0) & (rate / (1 - rate) * dy_norm < newton_tol))
                )
                return it + 1, corr, dy_norm, converged, failed

            zero = jnp.zeros((), dtype)
            init = (jnp.array(0), jnp.zeros_like(y0), zero, jnp.array(False), jnp.array(False))
            _, corr, _, converged, _ = jax.lax.while_loop(cond, body, init)
            return jax.lax.stop_gradient(corr), converged

        kept = {}
        if self._reuses(y0.shape[0]):
            h_ng = jax.lax.stop_gradient(h)
            c = h_ng / alpha
            f_ng = lambda y: hf_ng(y) / h_ng  # noqa: E731
            keep = state.valid & jnp.logical_not(fresh) & (state.jac_age < JAC_MAX_AGE)
            jac = jax.lax.cond(keep, lambda: state.jac, lambda: self._jacobian(f_ng, y_pred_ng))
            refactor = jnp.logical_not(keep) | (jnp.abs(c / state.c_factor - 1) > C_CHANGE)
            factor, c_factor = jax.lax.cond(
                refactor,
                lambda: (self._factorise(jac, c), c),
                lambda: (state.factor, state.c_factor),
            )

            def solver(factor, c_factor):
                # CVODE's correction for a matrix factorised at another c: it scales the chord
                # step by 2/(1 + c/c_factor), exact for a linear field with small steps
                ratio = 2.0 / (1.0 + c / c_factor)
                return lambda r: ratio * self._apply(factor, r)

            corr_ng, converged = newton(solver(factor, c_factor))

            def again():  # the kept Jacobian failed: a fresh one before the step is cut
                jac2 = self._jacobian(f_ng, y_pred_ng)
                factor2 = self._factorise(jac2, c)
                return (jac2, factor2, c, *newton(solver(factor2, c)))

            retry = jnp.logical_not(converged) & keep
            jac, factor, c_factor, corr_ng, converged = jax.lax.cond(
                retry, again, lambda: (jac, factor, c_factor, corr_ng, converged)
            )
            kept = dict(
                jac=jac,
                jac_age=jnp.where(keep & jnp.logical_not(retry), state.jac_age, 0) + 1,
                factor=factor,
                c_factor=c_factor,
            )

            def exact(r):  # the Newton matrix at this step's prediction, as without reuse
                return self._apply(self._factorise(self._jacobian(f_ng, y_pred_ng), c), r)

        else:
            exact = self._matrix(hf_ng, y_pred_ng, alpha)
            corr_ng, converged = newton(exact)

        # -- the derivatives: the implicit function theorem at the Newton iteration's result -----
        corr = corr_ng + _implicit_correction(exact, y0)(residual(corr_ng))
        y1 = y_pred + corr

        # -- error estimate, acceptance and the next order (no derivatives) ---------------------
        corr_e, y0_e, y1_e = jax.lax.stop_gradient((corr, y0, y1))
        finite = jnp.all(jnp.isfinite(y1_e))
        y1_e = jnp.where(finite, y1_e, y0_e)  # as diffrax's controller
        ctrl_scale = atol + rtol * jnp.maximum(jnp.abs(y0_e), jnp.abs(y1_e))
        inv_ctrl_scale = 1.0 / ctrl_scale
        err_const = jnp.asarray(_ERROR_CONST, dtype)
        error = _rms(err_const[order] * corr_e * inv_ctrl_scale)
        ok = converged & jnp.isfinite(error) & finite
        accepted = ok & (error < 1)

        # D after an accepted step: D[k+2] = d - D[k+1], D[k+1] = d, D[i] += D[i+1] for i ≤ k
        # (the same additions in the same order, as one suffix sum over the rows)
        below = _row(d, order + 1)
        new = [
            jnp.where(j == order + 1, corr, jnp.where(j == order + 2, corr - below, d[j]))
            for j in range(_ROWS)
        ]
        d_new, suffix = [None] * _ROWS, jnp.zeros_like(corr)
        for j in reversed(range(_ROWS)):
            suffix = jax.lax.optimization_barrier(jnp.where(j <= order + 1, new[j] + suffix, 0.0))
            d_new[j] = jnp.where(j <= order, suffix, new[j])
        d_new = tuple(d_new)
        n_equal_new = n_equal + 1

        # order selection after k+1 equal steps: the order allowing the largest step (the
        # neighbouring orders' error norms only then)
        d_e = jax.lax.stop_gradient(d_new)
        hold = n_equal_new < order + 1

        def neighbours():
            norm_at = lambda k, row: _rms(err_const[k] * row * inv_ctrl_scale)  # noqa: E731
            low = norm_at(jnp.maximum(order - 1, 0), _row(d_e, order))
            high = norm_at(jnp.minimum(order + 1, MAX_ORDER + 1), _row(d_e, order + 2))
            return (
                jnp.where(order > 1, low, jnp.inf),
                jnp.where(order < MAX_ORDER, high, jnp.inf),
            )

        inf = jnp.full((), jnp.inf, dtype)
        err_m, err_p = jax.lax.cond(hold, lambda: (inf, inf), neighbours)
        orders = jnp.stack([order - 1, order, order + 1])
        factors = jnp.stack([err_m, error, err_p]) ** (-1.0 / (orders + 1).astype(dtype))
        factors = jnp.where(jnp.isnan(factors), 0.0, factors)
        best = jnp.argmax(factors)
        new_order = jnp.where(hold, order, orders[best])
        max_factor = jnp.where(hold, 1.0 / SAFETY, factors[best])
        n_equal_new = jnp.where(hold | (new_order == order), n_equal_new, 0)

        # the scaled error the controller should see: accepted -> factor SAFETY·max_factor
        # (≥ SAFETY·error^(-1/(k+1)) > SAFETY, so still below 1); rejected -> error^(1/(k+1))
        # (≥ 1, factor SAFETY·error^(-1/(k+1))); Newton failed -> factor NEWTON_FAIL_FACTOR
        reported = jnp.where(
            accepted,
            1.0 / max_factor,
            jnp.where(ok, error ** (1.0 / (order + 1)), SAFETY / NEWTON_FAIL_FACTOR),
        )
        y_error = jax.lax.stop_gradient(reported * ctrl_scale)
        new_state = _State(
            d=d_new, order=new_order, h=h, n_equal=n_equal_new, valid=jnp.array(True), **kept
        )
        # (only the rows the interpolation reads: the dense output of a long solve is kept by
        # Quadrature; the order as a float: diffrax pads dense-output buffers with inf)
        dense_info = dict(d=jnp.stack(d_new[: MAX_ORDER + 1]), order=order.astype(dtype))
        return y1, y_error, dense_info, new_state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
