"""Sparse Jacobians: pattern detection, column colouring, the Jacobian from few JVPs, user
patterns checked, and the linear solves (SuperLU, GMRES) against dense ones."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.solve.bdf import BDF
from neuraldiffeq.solve.jacobian import (
    SparsityPattern,
    check_pattern,
    colour_columns,
    detect_pattern,
    sparse_jacobian,
)
from neuraldiffeq.solve.linear import (
    _layout,
    block_solver,
    choose_linear_solve,
    dense_solve,
    krylov_solve,
    sparse_solve,
)

# float64 for the whole module (references and finite differences), restored after it
pytestmark = pytest.mark.usefixtures("x64_module")


def banded(t, y, args):
    """A nonlinear field with a pentadiagonal Jacobian (reaction + second-neighbour coupling)."""
    up2 = jnp.concatenate([y[2:], jnp.zeros(2)])
    down1 = jnp.concatenate([jnp.zeros(1), y[:-1]])
    return -args * y**3 + 0.3 * jnp.sin(up2) - 0.2 * down1 * y


def test_detected_pattern_and_sparse_jacobian_equal_the_dense_jacobian():
    n = 40
    y = jnp.linspace(0.5, 1.5, n)
    pattern = detect_pattern(banded, 0.0, y, 2.0)
    dense = np.asarray(jax.jacfwd(lambda v: banded(0.0, v, 2.0))(y + 0.1))
    mask = np.zeros((n, n), bool)
    mask[pattern.rows, pattern.cols] = True
    assert np.all(mask[np.abs(dense) > 0])  # every dependency is in the pattern
    assert pattern.nnz == 3 * n - 3  # diagonal, first sub-, second super-diagonal
    assert pattern.n_colours <= 4  # bandwidth 4: colours need not grow with n
    values = sparse_jacobian(banded, 0.0, y + 0.1, 2.0, pattern)
    rebuilt = np.zeros((n, n))
    rebuilt[pattern.rows, pattern.cols] = np.asarray(values)
    np.testing.assert_allclose(rebuilt, dense, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colouring_is_valid_on_random_patterns(seed):
    rng = np.random.default_rng(seed)
    n = 60
    rows, cols = rng.integers(0, n, 200), rng.integers(0, n, 200)
    pattern = SparsityPattern(rows, cols, n)
    colours = colour_columns(pattern.rows, pattern.cols, n)
    for row in range(n):  # no two columns sharing a row have one colour
        in_row = pattern.cols[pattern.rows == row]
        assert len(set(colours[in_row].tolist())) == len(in_row)
    assert colours.max() + 1 == pattern.n_colours < n


def test_a_given_pattern_with_the_wrong_shape_or_a_missed_dependency_is_refused():
    n = 10
    y = jnp.ones(n)
    with pytest.raises(ValueError, match="pattern is 3x3 but the state has 10"):
        nde.SolveConfig(
            "bdf", jacobian=np.eye(3, dtype=bool), sensitivity=nde.Direct()
        ).diffeqsolve(
            diffrax.ODETerm(banded), 0.0, 1.0, y, args=2.0, saveat=diffrax.SaveAt(t1=True)
        )
    tridiagonal = np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool) | np.eye(n, k=-1, dtype=bool)
    with pytest.raises(ValueError, match="misses a dependency"):
        check_pattern(banded, 0.0, y, 2.0, SparsityPattern.from_dense(tridiagonal))
    config = nde.SolveConfig("bdf", jacobian=tridiagonal, sensitivity=nde.Direct())
    with pytest.raises(ValueError, match="misses a dependency"):
        config.diffeqsolve(
            diffrax.ODETerm(banded), 0.0, 1.0, y, args=2.0, saveat=diffrax.SaveAt(t1=True)
        )
    with pytest.raises(ValueError, match="indices must lie in"):
        SparsityPattern([0, 12], [1, 2], n)


def test_sparse_jacobian_is_refused_by_solvers_that_form_dense_ones():
    for solver in ("kencarp5", "tsit5"):
        with pytest.raises(ValueError, match="solver='bdf', 'radau5', 'kvaerno3'"):
            nde.SolveConfig(solver, jacobian="sparse")


def _system(n, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool) | np.eye(n, k=-3, dtype=bool)
    a = np.where(mask, rng.normal(size=(n, n)), 0.0) + 4 * np.eye(n)  # diagonally dominant
    pattern = SparsityPattern.from_dense(mask)
    return a, pattern, jnp.asarray(a[pattern.rows, pattern.cols]), jnp.asarray(rng.normal(size=n))


def test_superlu_and_krylov_solves_agree_with_dense_and_superlu_differentiates():
    a, pattern, values, b = _system(30)
    x_dense = np.linalg.solve(a, np.asarray(b))
    np.testing.assert_allclose(sparse_solve(pattern, values, b), x_dense, rtol=1e-12)
    x_krylov = krylov_solve(lambda v: jnp.asarray(a) @ v, b, jnp.diag(jnp.asarray(a)),
                            rtol=1e-12, atol=1e-14)  # fmt: skip
    np.testing.assert_allclose(x_krylov, x_dense, rtol=1e-9, atol=1e-12)

    # reverse and forward mode through SuperLU equal those through the dense solve
    def loss(solve, vals, rhs):
        return jnp.sum(jnp.sin(solve(vals, rhs)))

    dense = lambda v, r: dense_solve(  # noqa: E731
        jnp.zeros((30, 30)).at[pattern.rows, pattern.cols].set(v), r
    )
    sparse = lambda v, r: sparse_solve(pattern, v, r)  # noqa: E731
    g_sparse = jax.grad(loss, argnums=(1, 2))(sparse, values, b)
    g_dense = jax.grad(loss, argnums=(1, 2))(dense, values, b)
    for gs, gd in zip(g_sparse, g_dense, strict=True):
        np.testing.assert_allclose(gs, gd, rtol=1e-10, atol=1e-12)
    tangent = jnp.ones_like(values)
    jvp_sparse = jax.jvp(lambda v: sparse(v, b), (values,), (tangent,))[1]
    jvp_dense = jax.jvp(lambda v: dense(v, b), (values,), (tangent,))[1]
    np.testing.assert_allclose(jvp_sparse, jvp_dense, rtol=1e-10, atol=1e-12)


def test_krylov_that_does_not_converge_gives_nan():
    a, _, _, b = _system(30)
    x = krylov_solve(lambda v: jnp.asarray(a) @ v, b, jnp.ones(30), rtol=1e-14, atol=1e-16,
                     max_steps=1, restart=2)  # fmt: skip
    assert np.all(np.isnan(np.asarray(x)))


@pytest.mark.parametrize(
    "linear_solve",
    [
        "blocks",
        *(pytest.param(name, marks=pytest.mark.long) for name in ("dense", "sparse", "krylov")),
    ],
)
def test_bdf_with_a_sparse_jacobian_solves_like_the_dense_one(linear_solve):
    n = 20
    y0 = jnp.linspace(0.5, 1.5, n)
    ts = jnp.array([0.0, 0.5, 2.0])
    dense = nde.NeuralODE(banded, solver="bdf", rtol=1e-8, atol=1e-10)(ts, y0, 50.0)
    config = nde.SolveConfig("bdf", rtol=1e-8, atol=1e-10, sensitivity=nde.Direct(),
                             jacobian="sparse", linear_solve=linear_solve)  # fmt: skip
    model = nde.NeuralODE(banded, config=config)
    with pytest.raises(ValueError, match="jacobian='sparse' detects"):
        jax.jit(model)(ts, y0, 50.0)  # detection needs concrete values
    resolved = model.resolve_solver(ts, y0, 50.0)
    assert isinstance(resolved.solver.jacobian, SparsityPattern)
    sparse = jax.jit(resolved)(ts, y0, 50.0)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-9)
    assert isinstance(resolved.solver, BDF)


def test_block_solve_agrees_with_dense_on_independent_blocks_of_unequal_size():
    rng = np.random.default_rng(3)
    n = 12
    labels = rng.permutation(np.repeat(np.arange(4), [1, 2, 4, 5]))  # blocks of 1, 2, 4, 5
    mask = labels[:, None] == labels[None, :]
    a = np.where(mask, rng.normal(size=(n, n)), 0.0)
    a[0, 0] = 1e-8  # a tiny leading entry: partial pivoting must swap rows in its block
    pattern = SparsityPattern.from_dense(mask)
    assert pattern.blocks[0].shape == (4, 5)
    values = jnp.asarray(a[pattern.rows, pattern.cols])
    b = jnp.asarray(rng.normal(size=n))
    np.testing.assert_allclose(block_solver(pattern, values)(b), np.linalg.solve(a, b),
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    # chosen by size: dense when small, blocks for many small independent blocks
    assert choose_linear_solve(n, pattern) == "dense"
    many = SparsityPattern.from_dense(np.kron(np.eye(100), np.ones((3, 3))))
    assert choose_linear_solve(300, many) == "blocks"
    band = np.eye(300, dtype=bool) | np.eye(300, k=1, dtype=bool) | np.eye(300, k=-1, dtype=bool)
    assert choose_linear_solve(300, SparsityPattern.from_dense(band)) == "sparse"


@pytest.mark.parametrize("size", [3, 8])  # up to UNROLL_MAX row by row; above, whole arrays
@pytest.mark.parametrize("layout", ["strided", "interleaved", "general"])
def test_block_solve_of_regular_layouts_agrees_with_dense(layout, size):
    rng = np.random.default_rng(4)
    n_blocks = 5
    n = n_blocks * size
    q, b = np.arange(size)[None, :], np.arange(n_blocks)[:, None]
    members = {
        "strided": q * n_blocks + b,
        "interleaved": b * size + q,
        "general": rng.permutation(n).reshape(n_blocks, size),
    }[layout]
    mask = np.zeros((n, n), bool)
    for m in members:
        mask[np.ix_(m, m)] = True
    a = np.where(mask, rng.normal(size=mask.shape), 0.0)
    pattern = SparsityPattern.from_dense(mask)
    assert _layout(pattern) == layout
    rhs = jnp.asarray(rng.normal(size=n))
    x = block_solver(pattern, jnp.asarray(a[pattern.rows, pattern.cols]))(rhs)
    np.testing.assert_allclose(x, np.linalg.solve(a, rhs), rtol=1e-8, atol=1e-11)


def test_superlu_keeps_float64_when_its_callback_runs_without_x64():
    # `with jax.enable_x64(True):` is thread-local: the callback may run on a thread without it
    import threading

    pattern = SparsityPattern(np.arange(4), np.arange(1, 5), 5)  # bidiagonal
    values = jnp.where(jnp.asarray(pattern.rows == pattern.cols), 2.0, 0.5)
    solve = jax.jit(lambda v, r: sparse_solve(pattern, v, r))
    rhs = jnp.linspace(1.0, 2.0, 5)
    compiled = solve.lower(values, rhs).compile()
    out = {}

    def run():
        with jax.enable_x64(False):
            try:
                out["x"] = np.asarray(compiled(values, rhs))
            except Exception as error:  # reported below, not lost in the thread
                out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert "error" not in out, out.get("error")
    a = np.zeros((5, 5))
    a[pattern.rows, pattern.cols] = np.asarray(values)
    assert out["x"].dtype == np.float64
    np.testing.assert_allclose(out["x"], np.linalg.solve(a, np.asarray(rhs)), rtol=1e-14)


def test_fit_detects_a_pending_sparse_pattern_before_compiling():
    from neuraldiffeq.fitting.solver_choice import resolve_for_fit
    from neuraldiffeq.solve.jacobian import SparsityPattern

    config = nde.SolveConfig("bdf", rtol=1e-6, jacobian="sparse", sensitivity=nde.Direct())
    model = nde.NeuralODE(lambda t, y, a: -y, config=config)
    data = (jnp.linspace(0.0, 1.0, 3), jnp.ones((3, 4)))
    resolved = resolve_for_fit(model, data)
    assert (
        isinstance(resolved.solver.jacobian, SparsityPattern) and resolved.solver.jacobian.nnz == 4
    )
