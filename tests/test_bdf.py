"""The BDF/NDF solver: analytic and scipy references (float64), tolerance proportionality and
the orders it reaches, dense output, gradients (Direct, Forward) against finite differences, and
the names 'bdf' and 'radau5' for every ODE model."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import neuraldiffeq as nde
from neuraldiffeq.solve.bdf import BDF, MAX_ORDER
from neuraldiffeq.solve.dae import Radau5

# float64 for the whole module (references and finite differences), restored after it
pytestmark = pytest.mark.usefixtures("x64_module")

ROBER_RATES = (0.04, 3e7, 1e4)


def rober(t, y, k):
    return jnp.stack([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])  # fmt: skip


# a stiff linear system with known solution y(t) = expm(A t) y0 (eigenvalues -1, -10, -1e4)
_Q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
A = _Q @ np.diag([-1.0, -10.0, -1e4]) @ _Q.T
Y0 = np.array([1.0, 2.0, -1.0])


def linear(t, y, args):
    return jnp.asarray(A) @ y


def solve(field, t1, y0, args=None, *, rtol, atol, ts=None, solver=None):
    config = nde.SolveConfig(solver or BDF(), rtol=rtol, atol=atol, sensitivity=nde.Direct(),
                             max_steps=100_000)  # fmt: skip
    saveat = (
        diffrax.SaveAt(ts=ts, solver_state=True)
        if ts is not None
        else diffrax.SaveAt(t1=True, solver_state=True)
    )
    return config.diffeqsolve(diffrax.ODETerm(field), 0.0, t1, jnp.asarray(y0), args=args,
                              saveat=saveat, throw=True)  # fmt: skip


def test_stiff_linear_system_matches_the_matrix_exponential_and_reaches_order_5():
    sol = solve(linear, 5.0, Y0, rtol=1e-10, atol=1e-12)
    exact = scipy.linalg.expm(A * 5.0) @ Y0
    np.testing.assert_allclose(sol.ys[-1], exact, rtol=1e-7, atol=1e-10)
    # on a smooth solution the order rises to the highest the method has
    assert int(sol.solver_state.order) == MAX_ORDER


def test_dense_output_matches_the_analytic_solution_between_steps():
    ts = jnp.linspace(0.0, 2.0, 41)
    sol = solve(linear, 2.0, Y0, rtol=1e-10, atol=1e-12, ts=ts)
    exact = np.stack([scipy.linalg.expm(A * float(t)) @ Y0 for t in ts])
    assert int(sol.stats["num_steps"]) > 40  # (ts are not step ends: interpolated)
    np.testing.assert_allclose(sol.ys, exact, rtol=1e-6, atol=1e-8)


def rober_jac(y, k):
    return [
        [-k[0], k[2] * y[2], k[2] * y[1]],
        [k[0], -2 * k[1] * y[1] - k[2] * y[2], -k[2] * y[1]],
        [0.0, 2 * k[1] * y[1], 0.0],
    ]


@pytest.mark.long
def test_robertson_matches_a_tight_scipy_reference():
    ts = jnp.array([1e-3, 1.0, 1e2])
    k = np.array(ROBER_RATES)
    f = lambda t, y: np.asarray(rober(t, y, k))  # noqa: E731
    jac = lambda t, y: rober_jac(y, k)  # noqa: E731
    ref = scipy.integrate.solve_ivp(f, (0.0, 1e2), [1.0, 0.0, 0.0], method="Radau", jac=jac,
                                    rtol=1e-12, atol=1e-16, t_eval=np.asarray(ts)).y.T  # fmt: skip
    sol = solve(rober, 1e2, [1.0, 0.0, 0.0], jnp.asarray(k), rtol=1e-8, atol=1e-12, ts=ts)
    np.testing.assert_allclose(sol.ys, ref, rtol=2e-5, atol=1e-12)
    # and takes about as many steps as scipy's BDF (the same method) at these tolerances
    steps = scipy.integrate.solve_ivp(f, (0.0, 1e2), [1.0, 0.0, 0.0], method="BDF", jac=jac,
                                      rtol=1e-8, atol=1e-12).t.size  # fmt: skip
    assert 0.5 * steps < int(sol.stats["num_accepted_steps"]) < 1.5 * steps


@pytest.mark.long
def test_error_is_proportional_to_the_tolerance():
    # variable order: the global error falls in proportion to rtol (slope ~1 in log-log)
    exact = scipy.linalg.expm(A * 3.0) @ Y0
    tols = np.array([1e-5, 1e-7, 1e-9])
    errors = [
        np.max(np.abs(np.asarray(solve(linear, 3.0, Y0, rtol=tol, atol=tol).ys[-1]) - exact))
        for tol in tols
    ]
    slope = np.polyfit(np.log10(tols), np.log10(errors), 1)[0]
    assert 0.6 < slope < 1.4, (errors, slope)
    assert errors[-1] < 1e-7


@pytest.mark.parametrize(
    "sensitivity", [pytest.param(nde.Direct(), marks=pytest.mark.long), nde.Forward()]
)
def test_gradients_match_finite_differences(sensitivity):
    ts = jnp.array([0.0, 1.0, 10.0])
    y0 = jnp.array([1.0, 0.0, 0.0])
    model = nde.NeuralODE(rober, solver="bdf", rtol=1e-9, atol=1e-13, sensitivity=sensitivity)

    # one compiled program gives the gradient and the six finite-difference values
    @jax.jit
    @jax.value_and_grad
    def value_and_grad(log_k):
        ys = model(ts, y0, jnp.exp(log_k))
        return ys[-1, 0] + 1e4 * ys[-1, 1]

    def loss(log_k):
        return value_and_grad(log_k)[0]

    log_k = jnp.log(jnp.asarray(ROBER_RATES))
    grad = np.asarray(value_and_grad(log_k)[1])
    eps = 1e-5
    fd = np.array([(loss(log_k.at[i].add(eps)) - loss(log_k.at[i].add(-eps))) / (2 * eps)
                   for i in range(3)])  # fmt: skip
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_a_continuous_adjoint_through_diffrax_is_refused_with_the_sensitivities_that_work():
    # models refuse it when built; a direct diffrax solve meets BDF's own check at the first step
    y0 = jnp.array([1.0, 0.0, 0.0])

    def final(k):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rober), BDF(), 0.0, 1.0, 1e-4, y0, k,
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
            adjoint=diffrax.BacksolveAdjoint(),
        )  # fmt: skip
        return sol.ys[-1, 0]

    with pytest.raises(
        ValueError, match="use nde.Direct\\(\\), nde.Forward\\(\\) or nde.Quadrature"
    ):
        jax.grad(final)(jnp.array(ROBER_RATES))


@pytest.mark.parametrize("name, cls", [("bdf", BDF), ("radau5", Radau5)])
def test_every_ode_model_takes_the_stiff_solvers_by_name(name, cls):
    field = lambda t, y, a: -1e3 * (y - jnp.cos(t))  # noqa: E731
    ts = jnp.array([0.0, 0.5, 1.0])
    model = nde.NeuralODE(field, solver=name, rtol=1e-7, atol=1e-9)
    assert isinstance(model.solver, cls)
    ys = model(ts, jnp.ones(2))
    # y follows cos(t) with lag ~1e-3·sin(t)
    np.testing.assert_allclose(ys[1:, 0], np.cos(ts[1:]) + 1e-3 * np.sin(ts[1:]), atol=1e-5)
    assert isinstance(nde.SolveConfig(name).solver, cls)


def test_bdf_refuses_a_non_vector_state():
    with pytest.raises(ValueError, match="states of shape \\(n,\\)"):
        solve(lambda t, y, a: -y, 1.0, jnp.ones((2, 2)), rtol=1e-6, atol=1e-8)


def test_kept_jacobian_solves_like_a_fresh_one_and_is_kept():
    # CVODE-style reuse (the default) against a Jacobian and factorisation at every step: the
    # same solution within the tolerance, and the kept Jacobian is older than one step
    exact = scipy.linalg.expm(A * 5.0) @ Y0
    kept = solve(linear, 5.0, Y0, rtol=1e-8, atol=1e-10, solver=BDF())
    fresh = solve(linear, 5.0, Y0, rtol=1e-8, atol=1e-10, solver=BDF(reuse_jacobian=False))
    for sol in (kept, fresh):
        np.testing.assert_allclose(sol.ys[-1], exact, rtol=1e-5, atol=1e-8)
    assert int(kept.solver_state.jac_age) > 1
    assert fresh.solver_state.jac_age is None


def test_bdf_refuses_backsolve_and_interpolating_when_the_model_is_built():
    # (its continuous adjoint, Quadrature: tests/test_bdf_adjoint.py)
    field = lambda t, y, args: -y  # noqa: E731
    for sensitivity in (nde.Backsolve(), nde.Interpolating()):
        with pytest.raises(ValueError, match="cannot honour.*nde.Direct\\(\\), nde.Forward\\(\\)"):
            nde.NeuralODE(field, solver="bdf", sensitivity=sensitivity)
    # "auto" picks one it can honour, whatever the parameter count would suggest
    assert isinstance(nde.NeuralODE(field, solver="bdf").config.sensitivity, nde.Direct)
    assert isinstance(
        nde.NeuralODE(field, solver="bdf", sensitivity=nde.Forward()).config.sensitivity,
        nde.Forward,
    )
