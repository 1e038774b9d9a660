"""Linear solves of Newton matrices A = I - c·J that scale: dense, sparse direct, Krylov.

- `"dense"`: LU of the n×n matrix (`jax.scipy.linalg`); O(n³), the default for small systems.
- `"sparse"`: SciPy's SuperLU on the CPU, called from compiled code through `jax.pure_callback`.
  The matrix is given by its values at a `SparsityPattern`'s entries. The factorisation is
  memoised on the matrix's values (a pure function of its input, so the cache is sound), so the
  Newton iterations of a step, and steps that keep the matrix, factorise once. Derivatives:
  `jax.lax.custom_linear_solve`, whose rules solve with A (forward mode) and with Aᵀ (reverse
  mode, SuperLU's transposed solve) and differentiate the matrix through its product.
- `"blocks"`: when the pattern falls apart into independent blocks (the connected components
  of its graph: decoupled groups of species, independent cells), each block's dense LU, all
  blocks batched in one compiled operation (no callback); for small blocks only
  (`BLOCK_MAX`).
- `"krylov"`: matrix-free GMRES (lineax) on J's products (JVPs), preconditioned by the inverse
  of A's diagonal (from the sparse Jacobian when a pattern is known); for when factorising costs
  too much. A solve that does not converge is reported (its result is non-finite), and the
  solver rejects the step like any failed Newton iteration.

`choose_linear_solve(n, pattern)`: dense up to `DENSE_MAX` states; above, with a pattern, blocks
when its independent blocks are small, else sparse; Krylov without a pattern.

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from neuraldiffeq.solve.jacobian import SparsityPattern
    >>> from neuraldiffeq.solve.linear import sparse_solve
    >>> p = SparsityPattern([0], [1], 2)  # entries (0,0), (0,1), (1,1)
    >>> values = jnp.array([2.0, 1.0, 4.0])  # A = [[2, 1], [0, 4]]
    >>> sparse_solve(p, values, jnp.array([3.0, 4.0])).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .jacobian import SparsityPattern

#: Linear solves by name.
LINEAR_SOLVES = ("dense", "blocks", "sparse", "krylov")
#: Up to this many states the dense LU is chosen.
DENSE_MAX = 200
#: A pattern whose independent blocks have at most this many states is solved block by block.
BLOCK_MAX = 32
#: Blocks of at most this many states are inverted and applied row by row (a few elementwise
#: operations per entry, fastest for many tiny blocks); the number of operations grows with the
#: cube of the size, and so does the compile time, so larger blocks use batched array operations.
UNROLL_MAX = 6
#: SuperLU factorisations kept (memoised on the matrix values).
CACHE_SIZE = 8


def choose_linear_solve(n: int, pattern: SparsityPattern | None) -> str:
    """The linear solve for n states: dense up to `DENSE_MAX`; above it, with a pattern, block
    by block when its independent blocks are small (at most `BLOCK_MAX` states), else sparse;
    Krylov without a pattern.

    Example:
        >>> from neuraldiffeq.solve.linear import choose_linear_solve
        >>> choose_linear_solve(10, None), choose_linear_solve(5000, None)
        ('dense', 'krylov')
    """
    if n <= DENSE_MAX:
        return "dense"
    if pattern is None:
        return "krylov"
    return "blocks" if pattern.blocks[0].shape[1] <= BLOCK_MAX else "sparse"


def check_linear_solve(name: str) -> str:
    """`name` lower-cased if it is one of `LINEAR_SOLVES` (or "auto"), else a `ValueError`."""
    key = name.lower() if isinstance(name, str) else name
    if key not in (*LINEAR_SOLVES, "auto"):
        raise ValueError(
            f"linear_solve must be one of {', '.join(LINEAR_SOLVES)} or 'auto', got {name!r}."
        )
    return key


# -- sparse direct: SuperLU through a callback -----------------------------------------------------

_FACTORS: OrderedDict = OrderedDict()


def _factor(pattern: SparsityPattern, values: np.ndarray):
    key = (hash(pattern), hashlib.blake2b(values.tobytes(), digest_size=16).digest())
    lu = _FACTORS.get(key)
    if lu is None:
        mat = sp.csc_matrix((values, (pattern.rows, pattern.cols)), shape=(pattern.n,) * 2)
        lu = spla.splu(mat)
        _FACTORS[key] = lu
        if len(_FACTORS) > CACHE_SIZE:
            _FACTORS.popitem(last=False)
    else:
        _FACTORS.move_to_end(key)
    return lu


def _host_solve(pattern: SparsityPattern, trans: str, dtype, values, b):
    values, b = _from_bits(values, dtype), _from_bits(b, dtype)
    try:
        x = _factor(pattern, values).solve(b, trans=trans)
    except RuntimeError:  # singular matrix: a failed Newton iteration, not a crash
        x = np.full_like(b, np.nan)
    x = np.ascontiguousarray(x.astype(dtype))
    return x.view(np.uint32).reshape(*x.shape, -1) if x.itemsize > 4 else x.view(np.uint32)


# The callback's arrays travel as their bits (uint32): JAX converts a callback's arguments and
# results to the dtypes of the thread that runs it, and XLA may run it on a worker thread
# where `with jax.enable_x64(True):` (a thread-local setting) is not in force, which would turn
# float64 into float32 there and fail the result's dtype check.
def _to_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _from_bits(bits, dtype) -> np.ndarray:
    bits = np.ascontiguousarray(np.asarray(bits, np.uint32))
    words = np.dtype(dtype).itemsize // 4
    return bits.view(dtype).reshape(bits.shape[: bits.ndim - (words > 1)])


def _callback_solve(pattern: SparsityPattern, trans: str, values, b):
    bits = _to_bits(b)
    out = jax.pure_callback(
        functools.partial(_host_solve, pattern, trans, np.dtype(b.dtype)),
        jax.ShapeDtypeStruct(bits.shape, bits.dtype),
        _to_bits(values.astype(b.dtype)),
        bits,
        vmap_method="sequential",
    )
    return jax.lax.bitcast_convert_type(out, b.dtype)


def sparse_matvec(pattern: SparsityPattern, values: jax.Array, x: jax.Array) -> jax.Array:
    """A·x for A given by its values at `pattern`'s entries (differentiable in both).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.linear import sparse_matvec
        >>> sparse_matvec(SparsityPattern([], [], 2), jnp.array([2.0, 3.0]), jnp.ones(2)).tolist()
        [2.0, 3.0]
    """
    return jax.ops.segment_sum(values * x[pattern.cols], pattern.rows, pattern.n)


def sparse_solve(
    pattern: SparsityPattern, values: jax.Array, b: jax.Array, *, transpose: bool = False
) -> jax.Array:
    """x with A·x = b (`transpose`: Aᵀ·x = b), A given by its `values` at `pattern`'s entries,
    by SciPy's SuperLU (one factorisation serves both).

    Differentiable in `values` and `b` (forward and reverse mode, by
    `jax.lax.custom_linear_solve`); batched under `vmap` one solve at a time. A singular A gives
    NaN. See the module docstring.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.linear import sparse_solve
        >>> p = SparsityPattern([], [], 2)
        >>> g = jax.grad(lambda v: sparse_solve(p, v, jnp.ones(2)).sum())(jnp.array([2.0, 4.0]))
        >>> g.tolist()  # d(1/a)/da = -1/a²
        [-0.25, -0.0625]
    """
    fixed = jax.lax.stop_gradient(values)  # the solves are exact inverses; derivatives of A
    # flow through the matvec (custom_linear_solve's rule)
    if transpose:
        return jax.lax.custom_linear_solve(
            lambda x: jax.ops.segment_sum(values * x[pattern.rows], pattern.cols, pattern.n),
            b,
            solve=lambda _, r: _callback_solve(pattern, "T", fixed, r),
            transpose_solve=lambda _, r: _callback_solve(pattern, "N", fixed, r),
        )
    return jax.lax.custom_linear_solve(
        lambda x: sparse_matvec(pattern, values, x),
        b,
        solve=lambda _, r: _callback_solve(pattern, "N", fixed, r),
        transpose_solve=lambda _, r: _callback_solve(pattern, "T", fixed, r),
    )


# -- independent blocks ----------------------------------------------------------------------------


def block_solver(pattern: SparsityPattern, values: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """r -> A⁻¹r for A given by its values at `pattern`'s entries, factorising each independent
    block of the pattern (`pattern.blocks`) densely, all blocks batched. Padding rows of
    smaller blocks are the identity. Differentiable (jax.numpy throughout).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.linear import block_solver
        >>> p = SparsityPattern([0], [2], 3)  # blocks {0, 2} and {1}
        >>> solve = block_solver(p, jnp.array([2.0, 1.0, 4.0, 5.0]))  # (0,0) (0,2) (1,1) (2,2)
        >>> solve(jnp.array([3.0, 4.0, 5.0])).tolist()
        [1.0, 1.0, 1.0]
    """
    inverse = block_factor(pattern, values)
    return lambda r: block_apply(pattern, inverse, r)


def block_factor(pattern: SparsityPattern, values: jax.Array) -> jax.Array:
    """The inverses of the pattern's independent blocks of A (values at the pattern's entries),
    shape (size, size, blocks): entry [i, j, b] of block b's inverse, the blocks last so that
    every operation runs along them. What `block_apply` multiplies by; kept across steps by
    `BDF`.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.linear import block_factor
        >>> block_factor(SparsityPattern([], [], 2), jnp.array([2.0, 4.0])).shape
        (1, 1, 2)
    """
    members, where = pattern.blocks
    n_blocks, size = members.shape
    # gathers, not scatters (scatters are slow on CPU): each block slot reads its entry's value
    slot = np.full(size * size * n_blocks, -1, np.int64)
    slot[np.ravel_multi_index((where[1], where[2], where[0]), (size, size, n_blocks))] = np.arange(
        pattern.nnz
    )
    padding = members < 0
    pad_eye = (np.eye(size, dtype=bool)[:, :, None] & padding.T[None, :, :]).reshape(-1)
    flat = jnp.where(jnp.asarray(slot >= 0), values[jnp.asarray(np.maximum(slot, 0))], 0.0)
    blocks = (flat + jnp.asarray(pad_eye, values.dtype)).reshape(size, size, n_blocks)
    return _batched_inverse(blocks)


def _layout(pattern: SparsityPattern) -> str:
    """How the blocks' states lie in the state vector: "strided" (state q of block b at
    q·n_blocks + b: all first states, then all second ones, ...), "interleaved" (at
    b·size + q: block after block), else "general" (gathered by index)."""
    members, _ = pattern.blocks
    n_blocks, size = members.shape
    b, q = np.arange(n_blocks)[:, None], np.arange(size)[None, :]
    if np.array_equal(members, q * n_blocks + b):
        return "strided"
    if np.array_equal(members, b * size + q):
        return "interleaved"
    return "general"


def block_apply(pattern: SparsityPattern, inverse: jax.Array, r: jax.Array) -> jax.Array:
    """A⁻¹r from the block inverses of `block_factor`.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> from neuraldiffeq.solve.linear import block_apply, block_factor
        >>> p = SparsityPattern([], [], 2)
        >>> block_apply(p, block_factor(p, jnp.array([2.0, 4.0])), jnp.ones(2)).tolist()
        [0.5, 0.25]
    """
    members, _ = pattern.blocks
    n_blocks, size = members.shape
    layout = _layout(pattern)
    # each block's right-hand side, (size, n_blocks); no gather where the layout is regular
    if layout == "strided" and size <= UNROLL_MAX:
        # contiguous pieces of r and of the result: one-dimensional loops, no index arithmetic
        local = [r[j * n_blocks : (j + 1) * n_blocks] for j in range(size)]
        rows = [sum(inverse[i, j] * local[j] for j in range(size)) for i in range(size)]
        return jnp.concatenate(rows)
    if layout == "strided":
        return jnp.einsum("ijb,jb->ib", inverse, r.reshape(size, n_blocks)).reshape(-1)
    if layout == "interleaved":
        local = r.reshape(n_blocks, size).T
    else:
        padding = members < 0
        local = jnp.where(
            jnp.asarray(padding.T), 0.0, r[jnp.asarray(np.where(padding, 0, members).T)]
        )
    if size <= UNROLL_MAX:
        x = sum(inverse[:, j, :] * local[j] for j in range(size))  # (size, n_blocks)
    else:
        x = jnp.einsum("ijb,jb->ib", inverse, local)
    if layout == "interleaved":
        return x.T.reshape(-1)
    # where each state sits in the flattened (position, block) layout
    padding = members < 0
    back = np.empty(pattern.n, np.int64)
    back[members.T[~padding.T]] = np.flatnonzero(~padding.T.reshape(-1))
    return x.reshape(-1)[jnp.asarray(back)]


def _batched_inverse(blocks: jax.Array) -> jax.Array:
    """Inverses of a batch of small square matrices, shape (size, size, batch), by Gauss–Jordan
    elimination with partial pivoting, vectorised along the batch (the last axis). Up to
    `UNROLL_MAX` the rows are separate arrays and the pivot is chosen by comparisons and
    selects, so every operation is elementwise along the batch (no gathers, no index
    reductions, which are slow on CPU); larger blocks eliminate whole matrices per column. A
    singular block gives non-finite values (a failed Newton iteration)."""
    size = blocks.shape[0]
    if size > UNROLL_MAX:
        return jnp.moveaxis(_batched_inverse_by_columns(jnp.moveaxis(blocks, 2, 0)), 0, 2)
    eye = jnp.eye(size, dtype=blocks.dtype)[:, :, None]
    rows = [
        jnp.concatenate([blocks[i], jnp.broadcast_to(eye[i], blocks[i].shape)]) for i in range(size)
    ]
    for k in range(size):
        # the pivot: the row (k or below) with the largest |entry| in column k
        best, pivot_row = jnp.abs(rows[k][k]), rows[k]
        pivot = jnp.zeros(best.shape, jnp.int32) + k
        for i in range(k + 1, size):
            larger = jnp.abs(rows[i][k]) > best
            best = jnp.where(larger, jnp.abs(rows[i][k]), best)
            pivot = jnp.where(larger, i, pivot)
            pivot_row = jnp.where(larger[None], rows[i], pivot_row)
        # swap it with row k, scale it, and eliminate column k from the other rows
        row_k = pivot_row / pivot_row[k][None]
        old_k = rows[k]
        for i in range(size):
            if i == k:
                continue
            row = jnp.where((pivot == i)[None], old_k, rows[i]) if i > k else rows[i]
            rows[i] = row - row[k][None] * row_k
        rows[k] = row_k
    return jnp.stack([row[size:] for row in rows])


def _batched_inverse_by_columns(blocks: jax.Array) -> jax.Array:
    """Inverses of (batch, size, size) matrices by Gauss–Jordan with partial pivoting: a few
    whole-array operations per column, so the program grows with the size, not its cube."""
    n_blocks, size, _ = blocks.shape
    eye = jnp.broadcast_to(jnp.eye(size, dtype=blocks.dtype), blocks.shape)
    m = jnp.concatenate([blocks, eye], axis=2)
    rows = jnp.arange(size)
    for k in range(size):
        candidates = jnp.where(rows >= k, jnp.abs(m[:, :, k]), -1.0)
        pivot = jnp.argmax(candidates, axis=1)  # (n_blocks,)
        order = jnp.where(rows == k, pivot[:, None], jnp.where(rows == pivot[:, None], k, rows))
        m = jnp.take_along_axis(m, order[:, :, None], axis=1)
        m = m.at[:, k, :].divide(m[:, k, k][:, None])
        factor = jnp.where((rows == k)[None, :], 0.0, m[:, :, k])
        m = m - factor[:, :, None] * m[:, k, None, :]
    return m[:, :, size:]


# -- dense -----------------------------------------------------------------------------------------


def lu_factor(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The LU factorisation of a dense matrix with its row permutation (not LAPACK's pivots):
    what `lu_solve` takes. `jax.scipy.linalg.lu_solve` turns pivots into the permutation at
    every solve, a loop of n small steps; a Newton iteration solves many times per
    factorisation, so the permutation is formed once, here.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.linear import lu_factor, lu_solve
        >>> factor = lu_factor(jnp.array([[0.0, 2.0], [4.0, 0.0]]))
        >>> lu_solve(factor, jnp.array([2.0, 8.0])).tolist()
        [2.0, 1.0]
    """
    lu, _, permutation = jax.lax.linalg.lu(matrix)
    return lu, permutation


def lu_solve(factor: tuple[jax.Array, jax.Array], b: jax.Array) -> jax.Array:
    """x with A·x = b from `lu_factor(A)` (the same triangular solves as
    `jax.scipy.linalg.lu_solve`; differentiable, transposable)."""
    lu, permutation = factor
    x = b[permutation][:, None]
    x = jax.lax.linalg.triangular_solve(lu, x, left_side=True, lower=True, unit_diagonal=True)
    x = jax.lax.linalg.triangular_solve(lu, x, left_side=True, lower=False)
    return x[:, 0]


def dense_solve(matrix: jax.Array, b: jax.Array) -> jax.Array:
    """x with A·x = b for a dense A (`jnp.linalg.solve`, differentiable).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.linear import dense_solve
        >>> dense_solve(jnp.diag(jnp.array([2.0, 4.0])), jnp.ones(2)).tolist()
        [0.5, 0.25]
    """
    return jnp.linalg.solve(matrix, b)


# -- Krylov ----------------------------------------------------------------------------------------


def krylov_solve(
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    diagonal: jax.Array,
    *,
    rtol: float,
    atol: float,
    max_steps: int = 200,
    restart: int = 30,
) -> jax.Array:
    """x with A·x = b by preconditioned GMRES (lineax), A given by its product `matvec` and its
    `diagonal` (Jacobi preconditioner). Where GMRES does not converge the result is NaN, so a
    Newton iteration built on it fails and its step is rejected.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.linear import krylov_solve
        >>> d = jnp.array([2.0, 4.0, 8.0])
        >>> x = krylov_solve(lambda v: d * v, jnp.ones(3), d, rtol=1e-5, atol=1e-6)
        >>> [round(float(v), 4) for v in x]
        [0.5, 0.25, 0.125]
    """
    structure = jax.ShapeDtypeStruct(b.shape, b.dtype)
    operator = lx.FunctionLinearOperator(matvec, structure)
    safe = jnp.where(diagonal == 0, 1.0, diagonal)
    preconditioner = lx.DiagonalLinearOperator(1.0 / safe)
    solver = lx.GMRES(rtol=rtol, atol=atol, restart=restart, max_steps=max_steps)
    sol = lx.linear_solve(
        operator, b, solver, options={"preconditioner": preconditioner}, throw=False
    )
    ok = sol.result == lx.RESULTS.successful
    return jnp.where(ok, sol.value, jnp.nan)
