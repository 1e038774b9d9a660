"""Sparse Jacobians in Radau IIA (`Radau5`) and diffrax's ESDIRKs (`Kvaerno5`, ...): the lineax
solver built from coloured operator products against dense solves, each solver's sparse path
against its dense one on a block-diagonal and a banded stiff problem, gradients against
finite differences, and the refusals."""

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.solve.dae import Radau5, _stage_pattern
from neuraldiffeq.solve.jacobian import SparsityPattern
from neuraldiffeq.solve.pattern_solver import PatternSolver
from neuraldiffeq.solve.structure import jacobian_of

pytestmark = pytest.mark.usefixtures("x64_module")  # float64 throughout

NG = 3  # Robertson groups


def robertson(t, u, log_k):
    """Robertson's kinetics in NG independent groups (x, y, z of group i at i, NG+i, 2NG+i)."""
    k1, k2, k3 = jnp.exp(log_k)
    x, y, z = u[:NG], u[NG : 2 * NG], u[2 * NG :]
    return jnp.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])


# NumPy float64 (jnp arrays made at import time would be float32, before the x64 fixture)
LOG_K = np.log([0.04, 3e7, 1e4])
Y0_ROBERTSON = np.concatenate([np.ones(NG), np.zeros(2 * NG)])


def reaction_diffusion(t, u, d):
    """1-D diffusion (zero-flux ends) with a stiff cubic reaction: a tridiagonal Jacobian."""
    lap = jnp.concatenate([u[1:2] - u[:1], u[2:] - 2 * u[1:-1] + u[:-2], u[-2:-1] - u[-1:]])
    return d * lap - 50.0 * u**3 + jnp.sin(t)


Y0_DIFFUSION = np.exp(-(np.linspace(-2, 2, 16) ** 2))


def _solve(solver, field, y0, args, t1, jacobian=None, linear_solve=None, rtol=1e-9):
    config = nde.SolveConfig(solver, rtol=rtol, atol=1e-12, jacobian=jacobian,
                             linear_solve=linear_solve, max_steps=20_000,
                             sensitivity=nde.Direct())  # fmt: skip
    y0 = jnp.asarray(y0)
    assert y0.dtype == jnp.float64
    sol = config.diffeqsolve(diffrax.ODETerm(field), 0.0, t1, y0, args=args,
                             saveat=diffrax.SaveAt(ts=jnp.array([0.3 * t1, t1])))  # fmt: skip
    assert diffrax.is_successful(sol.result)
    return np.asarray(sol.ys)


# -- the linear solver -----------------------------------------------------------------------------


@pytest.mark.parametrize("linear_solve", ["dense", "blocks", "sparse"])
def test_pattern_solver_solves_and_transposes_like_a_dense_solve(linear_solve):
    rng = np.random.default_rng(0)
    n = 12
    mask = np.kron(np.eye(4), np.ones((3, 3))).astype(bool)  # four independent 3x3 blocks
    mask[0, 4] = mask[4, 0] = False
    a = jnp.asarray(np.where(mask, rng.normal(size=(n, n)), 0.0) + 3 * np.eye(n))
    b = jnp.asarray(rng.normal(size=n))
    solver = PatternSolver(SparsityPattern.from_dense(mask), linear_solve)

    def solve(rhs, with_solver):
        return lx.linear_solve(lx.MatrixLinearOperator(a), rhs, with_solver).value

    @jax.jit  # (one program: cheaper to compile than the operations one by one)
    def both(rhs):
        # reverse mode solves with the transpose (lineax's transpose rule calls solver.transpose)
        loss = lambda r, s: jnp.sum(jnp.sin(solve(r, s)))  # noqa: E731
        grads = [jax.grad(loss)(rhs, s) for s in (solver, lx.LU())]
        return solve(rhs, solver), grads

    x, (grad, grad_lu) = both(b)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-12)
    np.testing.assert_allclose(grad, grad_lu, rtol=1e-12)


def test_stage_pattern_covers_the_radau_newton_matrix():
    pattern = SparsityPattern.from_dense(np.eye(4, k=1) + np.eye(4))
    stages = _stage_pattern(pattern, ((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 0, 0), (0, 0, 0.5, 0)))
    dense = np.zeros((12, 12), bool)
    dense[stages.rows, stages.cols] = True
    block = (np.eye(4, k=1) + np.eye(4) + np.eye(4, k=-1) * 0).astype(bool)
    block[3, 2] = True  # the mass matrix's off-diagonal entry
    np.testing.assert_array_equal(dense, np.kron(np.ones((3, 3), bool), block))


# -- the solvers: sparse against dense -------------------------------------------------------------


@pytest.mark.long
@pytest.mark.parametrize(
    "solver, problem, linear_solve",
    [
        ("radau5", "robertson", "blocks"),
        ("radau5", "diffusion", "sparse"),
        ("kvaerno5", "robertson", "sparse"),
        ("kvaerno5", "diffusion", "blocks"),
    ],
)
def test_sparse_path_solves_like_the_dense_path(solver, problem, linear_solve):
    field, y0, args, t1 = {
        "robertson": (robertson, Y0_ROBERTSON, LOG_K, 1e3),
        "diffusion": (reaction_diffusion, Y0_DIFFUSION, 200.0, 2.0),
    }[problem]
    dense = _solve(solver, field, y0, args, t1)
    sparse = _solve(solver, field, y0, args, t1, jacobian="sparse", linear_solve=linear_solve)
    # the same steps with the same Newton matrices: equal to round-off and Newton tolerance
    np.testing.assert_allclose(sparse, dense, rtol=1e-7, atol=1e-12)


@pytest.mark.long
def test_radau_sparse_gradients_with_direct_match_finite_differences():
    pattern = np.kron(np.ones((3, 3)), np.eye(NG)).astype(bool)  # the groups' 3x3 blocks
    config = nde.SolveConfig("radau5", rtol=1e-11, atol=1e-13, jacobian=pattern,
                             linear_solve="sparse", sensitivity=nde.Direct())  # fmt: skip
    assert isinstance(jacobian_of(config.solver), SparsityPattern)

    @jax.jit
    def loss(log_k):
        sol = config.diffeqsolve(diffrax.ODETerm(robertson), 0.0, 10.0, jnp.asarray(Y0_ROBERTSON),
                                 args=log_k, saveat=diffrax.SaveAt(t1=True))  # fmt: skip
        y = sol.ys[-1]
        return jnp.sum(y[:NG]) + 1e4 * jnp.sum(y[NG : 2 * NG])

    log_k = jnp.asarray(LOG_K)
    assert log_k.dtype == jnp.float64
    grad = np.asarray(jax.grad(loss)(log_k))
    eps = 1e-5
    fd = np.array([(loss(log_k + eps * e) - loss(log_k - eps * e)) / (2 * eps) for e in np.eye(3)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


# -- refusals --------------------------------------------------------------------------------------


def test_unsupported_choices_are_refused_with_what_works():
    with pytest.raises(ValueError, match="not available with Radau5"):
        nde.SolveConfig("radau5", jacobian="sparse", linear_solve="krylov")
    with pytest.raises(ValueError, match="not available with Kvaerno5"):
        nde.SolveConfig("kvaerno5", jacobian="sparse", linear_solve="krylov")
    for solver in ("radau5", "kvaerno5"):
        with pytest.raises(ValueError, match="needs a sparsity pattern"):
            nde.SolveConfig(solver, linear_solve="sparse")
    with pytest.raises(ValueError, match="solver='bdf', 'radau5'"):
        nde.SolveConfig("kencarp5", jacobian="sparse")


@pytest.mark.parametrize("solver", ["radau5", "kvaerno5"])
def test_a_bad_pattern_is_refused_before_solving(solver):
    term = diffrax.ODETerm(lambda t, y, a: a * (jnp.roll(y, 1) - y))
    n = Y0_DIFFUSION.size
    wrong_shape = nde.SolveConfig(solver, jacobian=np.eye(3, dtype=bool), sensitivity=nde.Direct())
    with pytest.raises(ValueError, match=f"pattern is 3x3 but the state has {n}"):
        wrong_shape.diffeqsolve(term, 0.0, 1.0, jnp.asarray(Y0_DIFFUSION), args=1.0,
                                saveat=diffrax.SaveAt(t1=True))  # fmt: skip
    diagonal = nde.SolveConfig(solver, jacobian=np.eye(n, dtype=bool), sensitivity=nde.Direct())
    with pytest.raises(ValueError, match="misses a dependency"):
        diagonal.diffeqsolve(term, 0.0, 1.0, jnp.asarray(Y0_DIFFUSION), args=1.0,
                             saveat=diffrax.SaveAt(t1=True))  # fmt: skip


def test_sparse_is_detected_for_every_structured_solver_by_name():
    for solver in ("radau5", "kvaerno3", "kvaerno5", "implicit_euler"):
        config = nde.SolveConfig(solver, rtol=1e-6, jacobian="sparse", linear_solve="sparse")
        model = nde.NeuralODE(reaction_diffusion, config=config)
        resolved = model.resolve_solver(jnp.array([0.0, 1.0]), jnp.asarray(Y0_DIFFUSION), 1.0)
        pattern = jacobian_of(resolved.solver)
        assert isinstance(pattern, SparsityPattern) and pattern.nnz == 3 * 16 - 2, solver
    assert isinstance(jacobian_of(Radau5(jacobian=pattern)), SparsityPattern)


@pytest.mark.long
def test_neural_odemm_with_a_sparse_jacobian_solves_like_the_dense_one():
    # Robertson in DAE form per group: x' and y' as above, 0 = x + y + z - 1 (M singular)
    def dae(t, u, log_k):
        x, y, z = u[:NG], u[NG : 2 * NG], u[2 * NG :]
        return jnp.concatenate([robertson(t, u, log_k)[: 2 * NG], x + y + z - 1.0])

    mass = np.r_[np.ones(2 * NG), np.zeros(NG)]
    ts = jnp.array([0.0, 1.0, 100.0])
    y0, log_k = jnp.asarray(Y0_ROBERTSON), jnp.asarray(LOG_K)
    dense = nde.NeuralODEMM(dae, mass, rtol=1e-9, atol=1e-12)(ts, y0, log_k)
    config = nde.SolveConfig("radau5", rtol=1e-9, atol=1e-12, jacobian="sparse",
                             linear_solve="sparse", sensitivity=nde.Direct())  # fmt: skip
    sparse = nde.NeuralODEMM(dae, mass, config=config)(ts, y0, log_k)
    np.testing.assert_allclose(sparse, dense, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(np.sum(np.asarray(sparse).reshape(3, 3, NG), axis=1), 1.0,
                               rtol=1e-9)  # fmt: skip
