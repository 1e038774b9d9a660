"""HamiltonianNN and SecondOrderNeuralODE: structure (energy conservation, the first-order system
they expand to), the split symplectic solvers, refusals, and a tiny fit through every strategy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde

pytestmark = pytest.mark.usefixtures("x64_module")  # float64 throughout


def _mlp(n_in, n_out, key, width=16):
    return eqx.nn.MLP(n_in, n_out, width, 2, activation=jnp.tanh, key=jax.random.key(key))


def test_hnn_conserves_its_own_energy_over_a_long_solve():
    H = _mlp(4, "scalar", 0)  # a random, non-separable H(q, p) with n = 2
    model = nde.HamiltonianNN(H, rtol=1e-10, atol=1e-10, max_steps=100_000)
    ts = jnp.linspace(0.0, 100.0, 201)
    y0 = jnp.array([0.8, -0.3, 0.2, 0.5])
    ys = model(ts, y0)
    energy = model.energy(ys)
    drift = float(jnp.max(jnp.abs(energy - energy[0])))
    moved = float(jnp.max(jnp.linalg.norm(ys - y0, axis=-1)))
    assert np.all(np.isfinite(np.asarray(ys))) and moved > 0.1  # it does move
    assert drift < 1e-6, drift  # to solver tolerance (measured ~1e-8)
    # the same network as a plain (gradient-free) field does not conserve it
    plain = nde.NeuralODE(lambda t, y, a: jax.grad(H)(y), rtol=1e-10, atol=1e-10)
    ys_plain = plain(ts[:21], y0)
    assert float(jnp.max(jnp.abs(model.energy(ys_plain) - energy[0]))) > 1e-2


def test_hnn_field_is_the_symplectic_gradient():
    def H(y):
        q, p = y[:2], y[2:]
        return jnp.sum(p**2) / 2 + jnp.sum(jnp.cos(q)) + q[0] * p[1]

    y = jnp.array([0.3, -0.7, 1.1, 0.4])
    q, p = y[:2], y[2:]
    want = jnp.array([p[0], p[1] + q[0], jnp.sin(q[0]) - p[1], jnp.sin(q[1])])
    np.testing.assert_allclose(nde.HamiltonianNN(H).vector_field(0.0, y), want, rtol=1e-12)


def test_second_order_equals_the_first_order_system():
    net = _mlp(4, 2, 1)
    settings = dict(rtol=1e-9, atol=1e-9)
    model = nde.SecondOrderNeuralODE(net, **settings)
    expanded = nde.NeuralODE(lambda t, y, a: jnp.concatenate([y[2:], net(y)]), **settings)
    ts = jnp.linspace(0.0, 3.0, 31)
    y0 = jnp.array([0.5, -0.2, 0.1, 0.3])
    ys = model(ts, y0)
    assert ys.shape == (31, 4)
    np.testing.assert_allclose(ys, expanded(ts, y0), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(model.vector_field(0.0, y0), expanded.field(0.0, y0, None))
    # observing positions only: the q half of the solve started at v0
    v0 = jnp.array([0.1, 0.3])
    positions = nde.SecondOrderNeuralODE(net, observe="position", v0=v0, **settings)
    np.testing.assert_allclose(positions(ts, y0[:2]), ys[:, :2], rtol=1e-12)
    assert positions.vector_field is None  # no first-order field of q alone


def _oscillator_energy_error(solver, periods=100, dt=0.1):
    H = nde.SeparableHamiltonian(lambda p: 0.5 * p @ p, lambda q: 0.5 * q @ q)
    ts = jnp.linspace(0.0, 2 * np.pi * periods, 20 * periods + 1)
    model = nde.HamiltonianNN(H, solver=solver, dt0=dt, max_steps=10_000)
    ys = model(ts, jnp.array([1.0, 0.0]))
    return np.asarray(jnp.abs(model.energy(ys) - 0.5))


def test_symplectic_solvers_keep_the_energy_error_bounded():
    """Harmonic oscillator, h = 0.1, 100 periods: the split solvers' energy error oscillates
    (O(h) for semi-implicit Euler, O(h^2) for leapfrog) without growing; Heun (a non-symplectic
    RK2 with the same step) loses energy steadily."""
    leapfrog = _oscillator_energy_error("leapfrog")
    euler = _oscillator_energy_error("semi_implicit_euler")
    heun = _oscillator_energy_error("heun")
    first, last = slice(0, 21), slice(-21, None)  # the first and the last period
    assert leapfrog.max() < 5e-3  # measured 2.5e-3 (h^2/4)
    assert leapfrog[last].max() < 1.5 * leapfrog[first].max()  # bounded: no growth
    assert euler.max() < 0.06  # measured 0.026 (h/4)
    assert euler[last].max() < 1.5 * euler[first].max()
    assert heun[last].max() > 10 * leapfrog.max()  # grows with time (measured 0.085)
    assert heun[last].max() > 10 * heun[first].max()  # measured 110x


def test_refusals_name_what_works():
    general = nde.HamiltonianNN(lambda y: y @ y).node.field.hamiltonian
    with pytest.raises(ValueError, match="SeparableHamiltonian"):
        nde.HamiltonianNN(general, solver="leapfrog", dt0=0.1)
    H = nde.SeparableHamiltonian(lambda p: p @ p, lambda q: q @ q)
    with pytest.raises(ValueError, match="no error estimate"):
        nde.HamiltonianNN(H, solver="semi_implicit_euler")  # constant steps need dt0
    with pytest.raises(ValueError, match="cannot honour.*nde.Direct\\(\\), nde.Forward\\(\\)"):
        nde.HamiltonianNN(H, solver="leapfrog", dt0=0.1, sensitivity=nde.Backsolve())
    with pytest.raises(ValueError, match="scalar"):
        nde.HamiltonianNN(lambda y: y)(jnp.linspace(0, 1, 3), jnp.ones(2))
    with pytest.raises(ValueError, match="even size"):
        nde.HamiltonianNN(lambda y: y @ y)(jnp.linspace(0, 1, 3), jnp.ones(3))
    with pytest.raises(ValueError, match="observe"):
        nde.SecondOrderNeuralODE(lambda y: -y[:1], observe="velocity")
    with pytest.raises(ValueError, match="v0"):
        nde.SecondOrderNeuralODE(lambda y: -y[:1], v0=jnp.zeros(1))  # state mode has v0 in y0
    positions = nde.SecondOrderNeuralODE(lambda y: -y[:1], observe="position")
    data = nde.TimeSeries(jnp.linspace(0, 1, 5), jnp.ones((5, 1)))
    with pytest.raises(ValueError, match="vector_field"):
        nde.Collocation().prepare(positions, data)
    nde.Trajectory().prepare(positions, data)  # positions alone: what Trajectory fits


def _spring_data():
    """A mass-spring (q'' = -q) observed in (q, p) = (q, q'), two trajectories."""
    ts = jnp.linspace(0.0, 3.0, 16)
    ys = jnp.stack(
        [jnp.stack([a * jnp.cos(ts + s), -a * jnp.sin(ts + s)], -1) for a, s in [(1, 0), (0.5, 1)]]
    )
    return nde.TimeSeries(ts, ys)


# the HNN in the long tier (about 7 CPU s, mostly its multiple-shooting step): the default run
# checks the HNN's gradient through a solve (test_sensitivity_matrix), collocation through
# `vector_field` on the second-order model here, and multiple shooting in test_shooting
@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("hnn", marks=pytest.mark.long), "second_order"])
def test_tiny_fit_through_every_strategy(kind):
    """Collocation (through `vector_field`; as the "collocation" preset for one of them), then,
    for the HNN, a few solving steps of multiple shooting; judged by the trajectory loss."""
    data = _spring_data()
    settings = dict(rtol=1e-5, atol=1e-5)
    if kind == "hnn":
        model = nde.HamiltonianNN(_mlp(2, "scalar", 2, width=8), **settings)
        first = nde.Stage(nde.Collocation(), optax.adam(3e-2), steps=100, steps_per_call=100)
        then = nde.Stage(nde.MultipleShooting(group_size=4), optax.adam(1e-3), steps=3)
        result = nde.fit(model, data, [first, then], progress=False)
    else:
        model = nde.SecondOrderNeuralODE(_mlp(2, 1, 2, width=8), **settings)
        result = nde.fit(model, data, "collocation", steps=100, progress=False)
    assert np.all(np.isfinite(np.asarray(result.losses)))
    trajectory = nde.Trajectory()
    prepared = trajectory.prepare(model, data)
    before = float(trajectory.loss(model, prepared, None))
    after = float(trajectory.loss(result.model, prepared, None))
    assert after < 0.1 * before, (before, after)  # measured: ~1000x lower
