"""Jacobian structure: sparsity patterns, column colouring, and sparse Jacobians from few JVPs.

A stiff system with thousands of states usually couples each state to a few others (reaction
networks, discretised PDEs), so its Jacobian ∂f/∂y is sparse. Forming it densely costs n JVPs and
n² memory; knowing its *pattern* (which outputs depend on which inputs), columns that share no
row can be probed together: one JVP with the sum of their unit vectors gives all of them
(Curtis, Powell & Reid 1974). A greedy colouring of the columns (no two columns of one colour
share a row) needs as many JVPs as colours, 3 for a tridiagonal or a block-diagonal 3×3
Jacobian whatever n is.

- `SparsityPattern`: the pattern (rows, cols of the structural non-zeros) and its colouring; from
  the user (`SparsityPattern(rows, cols, n)`, `SparsityPattern.from_dense(mask)`) or detected
  (`detect_pattern`: the Jacobian at a random state, computed in column chunks so that memory
  stays bounded).
- `check_pattern`: a given pattern checked against the field on a random state (one JVP in a
  random direction compared with the sparse Jacobian's product): a missed dependency is a
  `ValueError`, never a silently wrong Newton matrix.
- `sparse_jacobian`: the Jacobian's values at the pattern's entries, from `n_colours` JVPs.

Example:
    >>> import jax.numpy as jnp
    >>> from neuraldiffeq.solve.jacobian import detect_pattern, sparse_jacobian
    >>> f = lambda t, y, a: -y + 0.5 * jnp.roll(y, 1)  # a bidiagonal (cyclic) coupling
    >>> pattern = detect_pattern(f, 0.0, jnp.ones(6))
    >>> pattern.nnz, pattern.n_colours
    (12, 2)
    >>> values = sparse_jacobian(f, 0.0, jnp.ones(6), None, pattern)
    >>> sorted(set(float(v) for v in values))
    [-1.0, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

#: Detection computes the Jacobian in chunks of columns holding at most this many entries.
CHUNK_ENTRIES = 2**22


def colour_columns(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """A greedy colouring of the columns of an n×n pattern: columns of one colour share no row.

    Columns are coloured in order of decreasing degree (Welsh–Powell), each with the smallest
    colour not used by a column it shares a row with.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.solve.jacobian import colour_columns
        >>> i = np.arange(5)
        >>> rows = np.concatenate([i, i[1:], i[:-1]]); cols = np.concatenate([i, i[:-1], i[1:]])
        >>> colours = colour_columns(rows, cols, 5)  # tridiagonal: 3 colours
        >>> int(colours.max()) + 1, len(set(colours[:3].tolist()))
        (3, 3)
    """
    mat = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, n))
    by_col = mat.tocsc()
    colours = np.full(n, -1, np.int64)
    degree = np.diff(by_col.indptr)
    for j in np.argsort(-degree, kind="stable"):
        touched_rows = by_col.indices[by_col.indptr[j] : by_col.indptr[j + 1]]
        # the columns sharing a row with j: the union of those rows' entries
        neighbours = np.concatenate(
            [mat.indices[mat.indptr[r] : mat.indptr[r + 1]] for r in touched_rows]
            or [np.zeros(0, np.int64)]
        )
        used = np.unique(colours[neighbours])
        used = used[used >= 0]
        free = np.setdiff1d(np.arange(len(used) + 1), used)
        colours[j] = free[0]
    return colours


class SparsityPattern:
    """The structural non-zeros of an n×n Jacobian (∂f_i/∂y_j may be non-zero at (rows[k],
    cols[k])), with its column colouring. Hashable, so it can be a static field of a solver.

    Arguments:
        rows, cols: integer arrays of equal length, the entries' row and column indices in
            [0, n); duplicates are merged. The diagonal is always added (the Newton matrix
            I - c·J has it).
        n: the number of states.

    Example:
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern
        >>> p = SparsityPattern([0, 1], [1, 0], 2)
        >>> p.nnz, p.n_colours  # the diagonal is added
        (4, 2)
    """

    def __init__(self, rows, cols, n: int):
        if not (isinstance(n, int | np.integer) and n > 0):
            raise ValueError(f"SparsityPattern: n must be a positive integer, got {n!r}.")
        rows, cols = np.asarray(rows), np.asarray(cols)
        if rows.ndim != 1 or cols.shape != rows.shape:
            raise ValueError(
                "SparsityPattern: rows and cols must be 1-D integer arrays of equal length, got "
                f"shapes {rows.shape} and {cols.shape}."
            )
        if rows.size and not (
            np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)
        ):
            raise ValueError("SparsityPattern: rows and cols must hold integers.")
        if rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
            raise ValueError(
                f"SparsityPattern: indices must lie in [0, {n}) for n = {n}; got rows in "
                f"[{rows.min()}, {rows.max()}] and cols in [{cols.min()}, {cols.max()}]."
            )
        diag = np.arange(n)
        mat = sp.coo_matrix(
            (np.ones(rows.size + n, bool), (np.r_[rows, diag], np.r_[cols, diag])), shape=(n, n)
        ).tocsr()
        mat.sum_duplicates()
        mat.sort_indices()
        coo = mat.tocoo()
        self.n = int(n)
        self.rows = coo.row.astype(np.int32)
        self.cols = coo.col.astype(np.int32)
        self.colours = colour_columns(self.rows, self.cols, self.n).astype(np.int32)
        self.n_colours = int(self.colours.max()) + 1
        self._key = (self.n, self.rows.tobytes(), self.cols.tobytes())
        self._blocks = None
        self._transposed = None

    @classmethod
    def from_dense(cls, mask) -> SparsityPattern:
        """The pattern of a square boolean (or numeric: non-zero) matrix.

        Example:
            >>> import numpy as np
            >>> from neuraldiffeq.solve.jacobian import SparsityPattern
            >>> SparsityPattern.from_dense(np.eye(3)).n_colours
            1
        """
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(
                f"jacobian pattern must be a square (n, n) matrix, got shape {mask.shape}."
            )
        rows, cols = np.nonzero(mask)
        return cls(rows, cols, mask.shape[0])

    @property
    def blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The independent blocks of the pattern (connected components of its graph):
        `members` (n_blocks, size) the states of each block padded with -1, and for every
        entry its block and its position (row, col) inside the block, `where` (3, nnz).
        Computed once per pattern.

        Example:
            >>> from neuraldiffeq.solve.jacobian import SparsityPattern
            >>> members, _ = SparsityPattern([0, 3], [3, 0], 4).blocks
            >>> members.tolist()
            [[0, 3], [1, -1], [2, -1]]
        """
        if self._blocks is None:
            from scipy.sparse.csgraph import connected_components

            graph = sp.coo_matrix((np.ones(self.nnz), (self.rows, self.cols)), (self.n, self.n))
            n_blocks, label = connected_components(graph, directed=True, connection="weak")
            order = np.argsort(label, kind="stable")
            sizes = np.bincount(label, minlength=n_blocks)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            position = np.empty(self.n, np.int64)
            position[order] = np.arange(self.n) - starts[label[order]]
            members = np.full((n_blocks, int(sizes.max())), -1, np.int64)
            members[label, position] = np.arange(self.n)
            where = np.stack([label[self.rows], position[self.rows], position[self.cols]])
            self._blocks = (members, where)
        return self._blocks

    def transposed(self) -> SparsityPattern:
        """The pattern of the transposed Jacobian Jᵀ, with its own colouring (kept after the
        first call). The adjoint equation da/dt = -Jᵀa of a continuous adjoint has this
        Jacobian.

        Example:
            >>> from neuraldiffeq.solve.jacobian import SparsityPattern
            >>> p = SparsityPattern([0, 0], [1, 2], 3)  # y0' depends on every state (+ diagonal)
            >>> p.n_colours, p.transposed().n_colours
            (3, 2)
        """
        if self._transposed is None:
            self._transposed = SparsityPattern(self.cols, self.rows, self.n)
            self._transposed._transposed = self
        return self._transposed

    @property
    def nnz(self) -> int:
        """The number of structural non-zeros (the diagonal included)."""
        return int(self.rows.size)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, SparsityPattern) and self._key == other._key

    def __repr__(self) -> str:
        return f"SparsityPattern(n={self.n}, nnz={self.nnz}, n_colours={self.n_colours})"


def as_pattern(pattern: Any, n: int) -> SparsityPattern:
    """A `SparsityPattern` from what a user gave as `jacobian=`: a `SparsityPattern`, a square
    boolean array or a SciPy sparse matrix; checked to be n×n.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.solve.jacobian import as_pattern
        >>> as_pattern(np.eye(2), 3)
        Traceback (most recent call last):
        ...
        ValueError: jacobian pattern is 2x2 but the state has 3 components; give an (n, n) pattern with n = 3.
    """  # noqa: E501
    if isinstance(pattern, SparsityPattern):
        p = pattern
    elif sp.issparse(pattern):
        coo = sp.coo_matrix(pattern)
        if coo.shape[0] != coo.shape[1]:
            raise ValueError(f"jacobian pattern must be square, got shape {coo.shape}.")
        p = SparsityPattern(coo.row, coo.col, coo.shape[0])
    else:
        p = SparsityPattern.from_dense(pattern)
    if p.n != n:
        raise ValueError(
            f"jacobian pattern is {p.n}x{p.n} but the state has {n} components; give an (n, n) "
            f"pattern with n = {n}."
        )
    return p


def _flat(field: Callable, t, y, args) -> Callable:
    return lambda v: jnp.ravel(field(t, v.reshape(y.shape), args))


def _random_state(y, seed: int) -> jax.Array:
    """A generic state of y's shape and scale: y + (1 + |y|)·u, u uniform in [0.5, 1.5] (no
    zeros, so products like y₁·y₂ show both their dependencies)."""
    u = jax.random.uniform(jax.random.key(seed), jnp.shape(y), jnp.asarray(y).dtype, 0.5, 1.5)
    return y + (1.0 + jnp.abs(y)) * u


def detect_pattern(field: Callable, t, y, args: Any = None, *, seed: int = 0) -> SparsityPattern:
    """The sparsity pattern of ∂field/∂y, read off the Jacobian at a random state near `y`.

    The Jacobian is computed in chunks of columns (`jax.jacfwd` on at most `CHUNK_ENTRIES`
    entries at a time), so a pattern with n = 30,000 needs bounded memory; it costs n JVPs once.
    A dependency whose derivative vanishes exactly at the random state (e.g. through
    `jnp.where`) is missed; give such a pattern yourself.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import detect_pattern
        >>> detect_pattern(lambda t, y, a: y**2, 0.0, jnp.zeros(4)).nnz
        4
    """
    y = jnp.asarray(y)
    n = int(y.size)
    fn = _flat(field, t, y, args)
    state = jnp.ravel(_random_state(y, seed))
    chunk = max(1, min(n, CHUNK_ENTRIES // max(n, 1)))

    @jax.jit
    def block(start):
        seeds = jax.nn.one_hot(start + jnp.arange(chunk), n, dtype=state.dtype)
        return jax.vmap(lambda v: jax.jvp(fn, (state,), (v,))[1])(seeds)  # (chunk, n): J.T

    rows, cols = [], []
    for start in range(0, n, chunk):
        cols_t = np.asarray(block(start))[: n - start]  # row k: column start+k of J
        c, r = np.nonzero(cols_t)
        rows.append(r)
        cols.append(c + start)
    return SparsityPattern(np.concatenate(rows), np.concatenate(cols), n)


def sparse_jacobian(field: Callable, t, y, args: Any, pattern: SparsityPattern) -> jax.Array:
    """The values of ∂field/∂y at (t, y) at the pattern's entries (`pattern.rows`,
    `pattern.cols`), from `pattern.n_colours` JVPs. Traceable and differentiable.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern, sparse_jacobian
        >>> p = SparsityPattern([], [], 3)  # diagonal
        >>> sparse_jacobian(lambda t, y, a: y**2, 0.0, jnp.arange(3.0), None, p).tolist()
        [0.0, 2.0, 4.0]
    """
    y = jnp.asarray(y)
    fn = _flat(field, t, y, args)
    flat = jnp.ravel(y)
    seeds = jax.nn.one_hot(jnp.asarray(pattern.colours), pattern.n_colours, dtype=y.dtype).T
    _, compressed = jax.vmap(lambda v: jax.jvp(fn, (flat,), (v,)))(seeds)  # (colours, n)
    return compressed[jnp.asarray(pattern.colours)[pattern.cols], jnp.asarray(pattern.rows)]


def check_pattern(
    field: Callable, t, y, args: Any, pattern: SparsityPattern, *, seed: int = 1
) -> None:
    """Raise a `ValueError` if `pattern` misses a dependency `field` has: at a random state,
    the sparse Jacobian (from the pattern's colouring) times a random vector must equal the
    field's JVP in that direction.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.jacobian import SparsityPattern, check_pattern
        >>> f = lambda t, y, a: jnp.roll(y, 1) - y
        >>> check_pattern(f, 0.0, jnp.ones(3), None, SparsityPattern([], [], 3))
        Traceback (most recent call last):
        ...
        ValueError: jacobian pattern misses a dependency of the vector field: at a random state the Jacobian from the pattern differs from the field's own derivative by 1 (relative). Add the missing entries, or let it be detected with jacobian='sparse'.
    """  # noqa: E501
    y = jnp.asarray(y)
    if y.size != pattern.n:
        raise ValueError(
            f"jacobian pattern is {pattern.n}x{pattern.n} but the state has {y.size} components."
        )
    state = _random_state(y, seed)
    values = sparse_jacobian(field, t, state, args, pattern)
    v = jax.random.normal(jax.random.key(seed + 1), (pattern.n,), y.dtype)
    exact = jax.jvp(_flat(field, t, state, args), (jnp.ravel(state),), (v,))[1]
    approx = jax.ops.segment_sum(values * v[pattern.cols], pattern.rows, pattern.n)
    exact, approx = np.asarray(exact, np.float64), np.asarray(approx, np.float64)
    scale = max(float(np.max(np.abs(exact))), 1e-30)
    gap = float(np.max(np.abs(exact - approx))) / scale
    tol = 1e3 * float(jnp.finfo(y.dtype).eps)
    if not gap <= tol:
        raise ValueError(
            "jacobian pattern misses a dependency of the vector field: at a random state the "
            f"Jacobian from the pattern differs from the field's own derivative by {gap:.3g} "
            "(relative). Add the missing entries, or let it be detected with jacobian='sparse'."
        )


def check_jacobian_choice(solver: str, jacobian: Any) -> None:
    """A structured solver's `jacobian=` when it is built: `"dense"`, `"sparse"` (detected when
    the solve starts) or a `SparsityPattern`, else a `ValueError` naming them.

    Example:
        >>> from neuraldiffeq.solve.jacobian import check_jacobian_choice
        >>> check_jacobian_choice("BDF", "sparse")  # accepted
        >>> check_jacobian_choice("BDF", "banded")
        Traceback (most recent call last):
        ...
        ValueError: BDF's jacobian must be 'dense' or a SparsityPattern (see neuraldiffeq.solve.jacobian; SolveConfig(..., jacobian='sparse') detects one), got 'banded'.
    """  # noqa: E501
    if not (jacobian in ("dense", "sparse") or isinstance(jacobian, SparsityPattern)):
        raise ValueError(
            f"{solver}'s jacobian must be 'dense' or a SparsityPattern (see "
            "neuraldiffeq.solve.jacobian; SolveConfig(..., jacobian='sparse') detects one), "
            f"got {jacobian!r}."
        )


def check_pattern_at_start(solver: str, jacobian: Any, pattern: SparsityPattern | None, n: int):
    """A structured solver's check when its solve starts (`init`): `jacobian="sparse"` must have
    been replaced by the detected pattern, and a pattern must be n x n for a state of n entries.

    Example:
        >>> from neuraldiffeq.solve.jacobian import check_pattern_at_start
        >>> check_pattern_at_start("BDF", "dense", None, 3)  # nothing to check
        >>> check_pattern_at_start("BDF", "sparse", None, 3)
        Traceback (most recent call last):
        ...
        ValueError: BDF(jacobian='sparse') must have its pattern detected before solving: solve through nde.SolveConfig(...).diffeqsolve or a model (they detect it), or pass jacobian=neuraldiffeq.solve.jacobian.detect_pattern(field, t0, y0, args).
    """  # noqa: E501
    if jacobian == "sparse":
        raise ValueError(
            f"{solver}(jacobian='sparse') must have its pattern detected before solving: solve "
            "through nde.SolveConfig(...).diffeqsolve or a model (they detect it), or pass "
            "jacobian=neuraldiffeq.solve.jacobian.detect_pattern(field, t0, y0, args)."
        )
    if pattern is not None and pattern.n != n:
        raise ValueError(
            f"{solver}'s jacobian pattern is {pattern.n}x{pattern.n} but the state has {n} "
            "components."
        )
