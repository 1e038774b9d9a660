"""`PatternSolver`: a lineax linear solver for Newton matrices with a known sparsity pattern.

The Newton iterations of diffrax's implicit Runge–Kutta solvers (Kvaerno3/4/5, ImplicitEuler)
and of our Radau IIA (`neuraldiffeq.solve.dae.Radau5`) are optimistix root finders (diffrax's
`VeryChord`) that hand a `lineax` linear solver the Jacobian of their stage equations as an
operator, I - c·∂f/∂y for an ESDIRK stage. lineax's default materialises it densely (one JVP
per column) and LU-factorises it: O(n²) memory and O(n³) work per factorisation.

Given the operator's sparsity pattern (a `SparsityPattern`, the diagonal included), this
solver instead reads the operator's values at the pattern's entries from as many operator
products as the pattern has colours (`neuraldiffeq.solve.jacobian`: columns that share no row
are probed together) and factorises them with one of the linear solves of
`neuraldiffeq.solve.linear`: `"dense"` (LU of the matrix assembled from the values),
`"blocks"` (the pattern's independent blocks, batched), `"sparse"` (SciPy's SuperLU from
compiled code) or `"auto"` (`choose_linear_solve`, by size). Transposed solves (reverse-mode
derivatives through optimistix's implicit adjoint) use the same factorisation.

A factorisation that fails (a singular matrix) gives non-finite values, reported as lineax's
`singular` result: the Newton iteration fails and the step is retried smaller.

Example:
    >>> import jax.numpy as jnp, lineax as lx
    >>> from neuraldiffeq.solve.jacobian import SparsityPattern
    >>> from neuraldiffeq.solve.pattern_solver import PatternSolver
    >>> a = jnp.array([[2.0, 1.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 8.0]])
    >>> solver = PatternSolver(SparsityPattern.from_dense(a != 0), "sparse")
    >>> x = lx.linear_solve(lx.MatrixLinearOperator(a), jnp.array([3.0, 4.0, 8.0]), solver)
    >>> x.value.tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .jacobian import SparsityPattern
from .linear import (
    block_apply,
    block_factor,
    check_linear_solve,
    choose_linear_solve,
    lu_factor,
    lu_solve,
    sparse_solve,
)

#: The linear solves a `PatternSolver` takes (Krylov is `BDF`'s only: it forms no matrix).
PATTERN_SOLVES = ("dense", "blocks", "sparse", "auto")


def check_pattern_solve(name: str, solver: str = "this solver") -> str:
    """`name` lower-cased if a `PatternSolver` takes it, else a `ValueError` naming the options.

    Example:
        >>> from neuraldiffeq.solve.pattern_solver import check_pattern_solve
        >>> check_pattern_solve("Sparse")
        'sparse'
    """
    key = check_linear_solve(name)
    if key not in PATTERN_SOLVES:
        raise ValueError(
            f"linear_solve={name!r} is not available with {solver}: it takes "
            f"{', '.join(repr(s) for s in PATTERN_SOLVES)}. The matrix-free Krylov solve is "
            "solver='bdf''s."
        )
    return key


def check_dense_solve(linear_solve: str | None, solver: str) -> None:
    """A solver keeping its dense Jacobian factorises it densely: `linear_solve` must be None,
    `"dense"` or `"auto"`, else a `ValueError` asking for a pattern.

    Example:
        >>> from neuraldiffeq.solve.pattern_solver import check_dense_solve
        >>> check_dense_solve("auto", "Radau5")  # accepted
        >>> check_dense_solve("sparse", "Radau5")
        Traceback (most recent call last):
        ...
        ValueError: linear_solve='sparse' with Radau5 factorises the sparse Jacobian, so it needs a sparsity pattern: pass jacobian='sparse' (or the pattern), or leave linear_solve out.
    """  # noqa: E501
    if linear_solve not in (None, "dense", "auto"):
        raise ValueError(
            f"linear_solve={linear_solve!r} with {solver} factorises the sparse Jacobian, so it "
            "needs a sparsity pattern: pass jacobian='sparse' (or the pattern), or leave "
            "linear_solve out."
        )


def pattern_method(pattern: SparsityPattern, linear_solve: str) -> str:
    """The linear solve actually used for `pattern` (`"auto"` chosen by size)."""
    return choose_linear_solve(pattern.n, pattern) if linear_solve == "auto" else linear_solve


def _dense(pattern: SparsityPattern, values: jax.Array) -> jax.Array:
    n = pattern.n
    return jnp.zeros((n, n), values.dtype).at[pattern.rows, pattern.cols].set(values)


def pattern_factor(pattern: SparsityPattern, values: jax.Array, method: str) -> Any:
    """The matrix given by its `values` at `pattern`'s entries, factorised for `pattern_apply`
    (`method`: "dense", "blocks" or "sparse"; SuperLU keeps its own factors, memoised on the
    values, so its factor is the values).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.pattern_solver import pattern_apply, pattern_factor
        >>> p = SparsityPattern([], [], 2)
        >>> factor = pattern_factor(p, jnp.array([2.0, 4.0]), "blocks")
        >>> pattern_apply(p, "blocks", factor, jnp.ones(2)).tolist()
        [0.5, 0.25]
    """
    if method == "dense":
        return lu_factor(_dense(pattern, values))
    if method == "blocks":
        return block_factor(pattern, values)
    if method == "sparse":
        return values
    raise ValueError(f"unknown linear solve {method!r}")


def pattern_apply(pattern: SparsityPattern, method: str, factor: Any, r: jax.Array) -> jax.Array:
    """A⁻¹r from `pattern_factor`'s factor."""
    if method == "dense":
        return lu_solve(factor, r)
    if method == "blocks":
        return block_apply(pattern, factor, r)
    return sparse_solve(pattern, factor, r)


def operator_values(operator: lx.AbstractLinearOperator, pattern: SparsityPattern) -> jax.Array:
    """The values of a linear operator's matrix at `pattern`'s entries, from `pattern.n_colours`
    products (its input flattened to a vector of `pattern.n` components)."""
    structure = operator.in_structure()
    leaves = jax.tree_util.tree_leaves(structure)
    if len(leaves) != 1 or operator.in_size() != pattern.n or operator.out_size() != pattern.n:
        raise ValueError(
            f"the Newton matrix acts on {operator.in_size()} components in "
            f"{len(leaves)} array(s), but the jacobian pattern is {pattern.n}x{pattern.n}: a "
            "sparse Jacobian needs a state of shape (n,) matching the pattern."
        )
    (leaf,) = leaves
    seeds = jax.nn.one_hot(jnp.asarray(pattern.colours), pattern.n_colours, dtype=leaf.dtype).T

    def product(seed):
        vector = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(structure), [seed.reshape(leaf.shape)]
        )
        return jnp.ravel(jax.tree_util.tree_leaves(operator.mv(vector))[0])

    compressed = jax.vmap(product)(seeds)  # (colours, n)
    return compressed[jnp.asarray(pattern.colours)[pattern.cols], jnp.asarray(pattern.rows)]


class _State(eqx.Module):
    values: jax.Array  # the matrix at the pattern's entries
    factor: Any  # pattern_factor's, of the matrix or (transposed) of its transpose
    transposed: bool = eqx.field(static=True)


class PatternSolver(lx.AbstractLinearSolver):
    """A lineax solver for square operators whose matrix has the sparsity `pattern`: the
    matrix from `pattern.n_colours` operator products, factorised by `linear_solve`
    ("dense", "blocks", "sparse" or "auto"). See the module docstring.

    The operator's input must be one array of `pattern.n` components (a state of shape (n,)
    for an ESDIRK; Radau IIA's three stages, shape (3, n), with the stages' pattern).

    Example:
        >>> import jax.numpy as jnp, lineax as lx
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.pattern_solver import PatternSolver
        >>> op = lx.DiagonalLinearOperator(jnp.array([2.0, 4.0]))
        >>> solver = PatternSolver(SparsityPattern([], [], 2), "dense")
        >>> lx.linear_solve(op, jnp.ones(2), solver).value.tolist()
        [0.5, 0.25]
    """

    pattern: Any = eqx.field(static=True)  # a SparsityPattern, or "sparse" before detection
    linear_solve: str = eqx.field(static=True, default="auto", converter=check_pattern_solve)

    def __check_init__(self):
        if not (self.pattern == "sparse" or isinstance(self.pattern, SparsityPattern)):
            raise ValueError(
                "PatternSolver's pattern must be a SparsityPattern (or 'sparse', to be detected "
                f"before solving), got {self.pattern!r}."
            )

    def _method(self) -> str:
        return pattern_method(self.pattern, self.linear_solve)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]) -> _State:
        del options
        if not isinstance(self.pattern, SparsityPattern):
            raise ValueError(
                "jacobian='sparse' must have its pattern detected before solving: solve through "
                "nde.SolveConfig(...).diffeqsolve or a model (they detect it), or pass "
                "jacobian=neuraldiffeq.solve.jacobian.detect_pattern(field, t0, y0, args)."
            )
        values = operator_values(operator, self.pattern)
        return _State(values, pattern_factor(self.pattern, values, self._method()), False)

    def compute(self, state: _State, vector, options: dict[str, Any]):
        del options
        leaves, treedef = jax.tree_util.tree_flatten(vector)
        (leaf,) = leaves
        r = jnp.ravel(leaf)
        pattern, method = self.pattern, self._method()
        if method == "sparse":
            # SuperLU solves with the transpose itself; sparse_solve's rule gives its derivatives
            x = sparse_solve(pattern, state.values, r, transpose=state.transposed)
        else:
            x = pattern_apply(pattern, method, state.factor, r)
        ok = jnp.all(jnp.isfinite(x))
        solution = jax.tree_util.tree_unflatten(treedef, [x.reshape(leaf.shape)])
        return solution, lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.singular), {}

    def transpose(self, state: _State, options: dict[str, Any]):
        method = self._method()
        if method == "dense":
            matrix = _dense(self.pattern, state.values)
            factor = lu_factor(matrix if state.transposed else matrix.T)
        elif method == "blocks":  # the blocks of Aᵀ are those of A, each transposed
            factor = jnp.swapaxes(state.factor, 0, 1)
        else:
            factor = state.factor
        return _State(state.values, factor, not state.transposed), options

    def conj(self, state: _State, options: dict[str, Any]):
        if not jnp.iscomplexobj(state.values):
            return state, options
        values = jnp.conj(state.values)
        factor = pattern_factor(self.pattern, values, self._method())
        conj = _State(values, factor, False)
        return (self.transpose(conj, options)[0] if state.transposed else conj), options

    def assume_full_rank(self) -> bool:
        return True
