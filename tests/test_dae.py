"""Mass-matrix DAEs (`nde.NeuralODEMM`, `neuraldiffeq.solve.dae.Radau5`): Robertson's kinetics in
DAE form against scipy's Radau on the ODE form, conservation, gradients against float64 central
finite differences, consistent initial states, refusals, and a tiny fit through `nde.fit`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.integrate import solve_ivp

import neuraldiffeq as nde
from neuraldiffeq.solve.dae import Radau5, algebraic_residual

RATES = (0.04, 3e7, 1e4)


pytestmark = pytest.mark.usefixtures("x64_module")  # float64 throughout


class RobertsonDAE(eqx.Module):
    """y1' = -k1 y1 + k3 y2 y3, y2' = k1 y1 - k3 y2 y3 - k2 y2², 0 = y1 + y2 + y3 - 1."""

    log_rates: jax.Array

    def __call__(self, t, y, args=None):
        k1, k2, k3 = jnp.exp(self.log_rates)
        r1, r2, r3 = k1 * y[0], k2 * y[1] ** 2, k3 * y[1] * y[2]
        return jnp.stack([-r1 + r3, r1 - r2 - r3, y[0] + y[1] + y[2] - 1.0])


def robertson_ode(t, y):
    k1, k2, k3 = RATES
    r1, r2, r3 = k1 * y[0], k2 * y[1] ** 2, k3 * y[1] * y[2]
    return [-r1 + r3, r1 - r2 - r3, r2]


def rober_model(**settings):
    return nde.NeuralODEMM(RobertsonDAE(jnp.log(jnp.array(RATES))), [1.0, 1.0, 0.0], **settings)


@pytest.mark.slow
def test_robertson_dae_matches_scipy_radau_and_conserves_mass():
    ts = np.concatenate([[0.0], np.logspace(-4, 5, 7)])
    model = rober_model(rtol=1e-10, atol=1e-12, max_steps=5000)
    sol = model.solve(jnp.asarray(ts), jnp.array([1.0, 0.0, 0.0]))
    ys = np.asarray(sol.ys)
    ref = solve_ivp(
        robertson_ode, (0.0, ts[-1]), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-16,
        t_eval=ts,
    ).y.T  # fmt: skip
    scale = np.abs(ref).max(axis=0)  # y2 lives around 1e-5: each species against its own size
    scaled = np.abs(ys - ref) / scale
    assert scaled.max() <= 1e-6, scaled
    big = np.abs(ref) >= 1e-3 * scale  # pointwise relative error where a species is not ~0
    assert np.max(np.abs(ys - ref)[big] / np.abs(ref)[big]) <= 1e-6
    # every saved state satisfies the algebraic equation: y1 + y2 + y3 = 1
    assert np.max(np.abs(ys.sum(axis=1) - 1.0)) <= 1e-10
    # the DAE form really was solved with a singular M (not the ODE form)
    assert np.linalg.matrix_rank(np.asarray(model.mass_matrix)) == 2
    assert int(sol.stats["num_steps"]) < 5000


@pytest.mark.slow
def test_gradients_wrt_rates_match_finite_differences():
    ts = jnp.array([0.0, 1e-3, 0.1, 10.0])
    y0 = jnp.array([1.0, 0.0, 0.0])
    weights = jnp.array([1.0, 1e5, 1.0])  # y2 scaled to order one, so its gradient counts

    def loss(log_rates):
        model = rober_model(rtol=1e-10, atol=1e-14, max_steps=2000)
        model = eqx.tree_at(lambda m: m.field.log_rates, model, log_rates)
        return jnp.sum((model(ts, y0) * weights) ** 2)

    p = jnp.log(jnp.array(RATES))
    # one compiled program gives the gradient and the six finite-difference values
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    grad = np.asarray(value_and_grad(p)[1])
    eps = 1e-5
    basis = np.eye(3) * eps
    fd = np.array(
        [(value_and_grad(p + e)[0] - value_and_grad(p - e)[0]) / (2 * eps) for e in basis]
    )
    assert np.all(np.abs(fd) > 1e-3)  # every rate matters to this loss
    assert np.max(np.abs(grad - fd) / np.abs(fd)) <= 1e-4, (grad, fd)


def test_inconsistent_initial_state_is_refused_or_computed():
    model = rober_model(rtol=1e-6, atol=1e-10)
    ts = jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match=r"y0 is not consistent.*residual 0\.2"):
        model(ts, jnp.array([1.0, 0.0, 0.2]))
    fixed = model.consistent(jnp.array([0.9, 0.0, 0.5]))
    np.testing.assert_allclose(np.asarray(fixed), [0.9, 0.0, 0.1], atol=1e-14)
    residual = algebraic_residual(model.field, model.mass_matrix, 0.0, fixed)
    assert float(jnp.abs(residual).max()) <= 1e-14

    # a general (non-diagonal) singular M: the algebraic equation is y1 - y2 = f2 - f1 ... here
    # M = [[1, 1], [1, 1]] has left null vector (1, -1)/√2: 0 = f1 - f2 = (y2 - y1) - (y1 - 0.5)
    def field(t, y, args):
        return jnp.stack([y[1] - y[0], y[0] - 0.5])

    y = nde.NeuralODEMM(field, [[1.0, 1.0], [1.0, 1.0]]).consistent(jnp.array([0.0, 0.0]))
    f = field(0.0, y, None)
    assert abs(float(f[0] - f[1])) <= 1e-14


def test_general_mass_matrix_solves_the_transformed_problem():
    # u = (a, b) with M = [[1, 1], [0, 0]]: (a + b)' = -(a + b), 0 = a - 2b. So a + b = 3e^{-t}·…
    def field(t, y, args):
        return jnp.stack([-(y[0] + y[1]), y[0] - 2.0 * y[1]])

    model = nde.NeuralODEMM(field, [[1.0, 1.0], [0.0, 0.0]], rtol=1e-9, atol=1e-12)
    ts = jnp.linspace(0.0, 2.0, 5)
    ys = np.asarray(model(ts, jnp.array([2.0, 1.0])))
    s = 3.0 * np.exp(-np.asarray(ts))
    np.testing.assert_allclose(ys, np.stack([2 * s / 3, s / 3], axis=1), rtol=1e-7)


def test_refusals_name_what_works():
    with pytest.raises(ValueError, match=r"NeuralODEMM cannot honour sensitivity=Backsolve"):
        rober_model(sensitivity=nde.Backsolve())
    with pytest.raises(ValueError, match="it accepts nde.Direct\\(\\), nde.Forward\\(\\)"):
        rober_model(sensitivity=nde.Quadrature())
    with pytest.raises(ValueError, match="solves with 'radau5'"):
        rober_model(solver=nde.solvers.resolve_solver("kvaerno5"))
    with pytest.raises(ValueError, match="unknown solver 'kvaerno5'.*radau5"):
        rober_model(solver="kvaerno5")
    with pytest.raises(ValueError, match="needs adaptive steps"):
        rober_model(dt0=0.1)
    with pytest.raises(ValueError, match="mass_matrix must be a square matrix"):
        nde.NeuralODEMM(lambda t, y, a: y, [[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"y0 must have shape \(3,\)"):
        rober_model()(jnp.array([0.0, 1.0]), jnp.ones(2))
    assert isinstance(rober_model().sensitivity, nde.Direct)  # "auto" and the default
    assert isinstance(rober_model(sensitivity="auto").sensitivity, nde.Direct)
    assert isinstance(rober_model().solver, Radau5)


@pytest.mark.slow
def test_tiny_neural_odemm_fit():
    # y1' = -y1 (learned by a network), 0 = y1 + y2 - 1 (known): DiffEqFlux's NeuralODEMM form
    ts = jnp.linspace(0.0, 2.0, 12)
    y1 = jnp.exp(-ts)
    data = nde.TimeSeries(ts, jnp.stack([y1, 1.0 - y1], axis=1))
    net = eqx.nn.MLP(2, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODEMM(
        nde.autonomous(net),
        [1.0, 0.0],
        constraints=lambda t, y, args: y[:1] + y[1:] - 1.0,
        rtol=1e-6,
        atol=1e-9,
    )
    result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05), steps=20,
                     progress=False)  # fmt: skip
    assert result.losses[-1] <= 0.2 * result.losses[0], result.losses
    ys = np.asarray(result.model(ts, data.ys[0]))
    assert np.max(np.abs(ys.sum(axis=1) - 1.0)) <= 1e-8  # the constraint holds along the fit
