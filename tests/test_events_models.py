"""Events on every ODE-type model: `nde.HybridODE(model, events)` with a `SecondOrderNeuralODE`,
`HamiltonianNN` or `NeuralODEMM` base (values against closed forms; gradients against closed
forms here and finite differences in tests/test_sensitivity_matrix.py), what is refused, and the
fitting paths (`fit(..., "auto")`, multiple shooting from a point between events)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_events import T1, TS, Y0, E, G, Restitution, ball, bounce_times, final_height

import neuraldiffeq as nde

pytestmark = pytest.mark.usefixtures("x64_module")  # float64 throughout

TOL = dict(rtol=1e-8, atol=1e-8)


class Gravity(eqx.Module):
    """q'' = -g with a trainable g (the acceleration network of a second-order model)."""

    g: jax.Array

    def __call__(self, y):
        return jnp.stack([-self.g + 0 * y[0]])


def second_order_ball(p, observe="position"):
    fall = nde.SecondOrderNeuralODE(Gravity(p[0]), observe=observe, sensitivity=nde.Direct(), **TOL)
    bounce = nde.Event(lambda t, y, args: y[0], direction="down", jump=Restitution(p[1]))
    return nde.HybridODE(fall, bounce, max_events=12)


@pytest.mark.long  # a hybrid gradient's compilation; the matrix keeps a default row
def test_second_order_ball_bounces_at_the_closed_form_times_with_its_gradient():
    # position mode: y0 = the height alone, the model returns heights; events see (q, v)
    p = jnp.array([G, E])
    model = second_order_ball(p)
    sol = model.solve(TS, Y0[:1])
    np.testing.assert_allclose(np.asarray(sol.event_ts[:6]), bounce_times(G, E, 6), atol=1e-7)
    assert model(TS, Y0[:1]).shape == (TS.shape[0], 1)
    n = int(np.searchsorted(bounce_times(G, E, 60), T1))
    grad = jax.jit(jax.grad(lambda p: second_order_ball(p)(TS, Y0[:1])[-1, 0]))(p)
    np.testing.assert_allclose(grad, jax.grad(final_height)(p, n), rtol=0, atol=1e-6)


def test_dae_events_restart_consistent():
    # y1' = -y1, 0 = y1 + y2 - 1; y1 reset to 1 whenever it falls to 1/2: events at k log 2,
    # and after each reset the algebraic y2 is solved for again (y2 = 1 - y1 throughout)
    dae = nde.NeuralODEMM(
        lambda t, y, a: -y[:1],
        [1.0, 0.0],
        constraints=lambda t, y, a: y[:1] + y[1:] - 1.0,
        rtol=1e-10,
        atol=1e-10,
    )
    reset = nde.Event(
        lambda t, y, a: y[0] - 0.5, direction="down", jump=lambda t, y, a: y.at[0].set(1.0)
    )
    ts = jnp.linspace(0.0, 2.0, 9)
    sol = nde.HybridODE(dae, reset, max_events=4).solve(ts, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(np.asarray(sol.event_ts[:2]), np.log(2) * np.arange(1, 3), atol=1e-8)
    assert int(sol.n_events) == 2
    t = np.asarray(ts)
    want = np.exp(-np.mod(t, np.log(2)))  # y1 restarts at 1 every log 2
    np.testing.assert_allclose(np.asarray(sol.ys[:, 0]), want, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sol.ys[:, 0] + sol.ys[:, 1]), 1.0, atol=1e-9)


def test_models_that_cannot_take_events_are_refused_at_construction():
    event = nde.Event(lambda t, y, args: y[0])
    dde = nde.NeuralDDE(lambda t, y, yl, a: -yl[0], [1.0], autonomous=False)
    with pytest.raises(ValueError, match="NeuralDDE.*accepted on nde.NeuralODE, nde.Hamilton"):
        nde.HybridODE(dde, event)
    H = nde.SeparableHamiltonian(lambda p: 0.5 * p @ p, lambda q: 0.5 * q @ q)
    leapfrog = nde.HamiltonianNN(H, solver="leapfrog", dt0=0.1)
    with pytest.raises(ValueError, match="Leapfrog cannot take events.*solver='tsit5'"):
        nde.HybridODE(leapfrog, event)
    sde = nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: y, dt0=0.1)
    with pytest.raises(ValueError, match="cannot take events on a NeuralSDE"):
        nde.HybridODE(sde, event)
    node = nde.NeuralODE(lambda t, y, a: -y)
    with pytest.raises(ValueError, match="carries its own solve settings; set rtol on it"):
        nde.HybridODE(node, event, rtol=1e-6)
    knots = np.linspace(0.0, 1.0, 3)
    u = nde.interpolation_coeffs(knots, knots[:, None], kind="linear", time_channel=False)
    with pytest.raises(ValueError, match="inputs reach a field"):
        nde.HybridODE(node, event, inputs=u)
    with pytest.raises(ValueError, match="inputs reach a field"):  # per series, as an argument
        nde.HybridODE(node, event)(jnp.linspace(0.0, 1.0, 3), jnp.ones(1), nde.Exogenous(inputs=u))
    with pytest.raises(ValueError, match="solver='auto'"):
        nde.HybridODE(nde.NeuralODE(lambda t, y, a: -y, solver="auto"), event)
    # and a sensitivity the base refuses stays refused (the base's own construction)
    with pytest.raises(ValueError, match="cannot honour"):
        nde.NeuralODEMM(lambda t, y, a: -y, [1.0], sensitivity=nde.Backsolve())


@pytest.mark.long  # two compiled multiple-shooting losses
def test_multiple_shooting_from_a_point_between_events_is_exact_at_the_truth():
    # segments of 5 points start at data points between bounces (t = 2, 4, ...) and contain
    # bounces: at the true parameters every segment reproduces the data, so the loss is ~0
    data = nde.TimeSeries(TS, ball(jnp.array([G, E]))(TS, Y0)[None])
    strategy = nde.MultipleShooting(group_size=5)
    loss = eqx.filter_jit(strategy.loss)
    truth = ball(jnp.array([G, E]), max_events=8)
    assert float(loss(truth, strategy.prepare(truth, data), None)) < 1e-8  # tolerance 1e-8
    wrong = ball(jnp.array([G, 0.75]), max_events=8)
    assert float(loss(wrong, strategy.prepare(wrong, data), None)) > 1e-3


@pytest.mark.long  # a whole fit (three stages): the long tier keeps the default run in budget
# multiple shooting finds k; the trajectory stage's Adam (the preset's lr) then wanders around
# it, which fit reports as a divergence and undoes (it returns the stage's best)
@pytest.mark.filterwarnings("ignore:stage 2/3 Trajectory diverged")
def test_fit_auto_trains_a_hybrid_model_and_collocation_presets_refuse():
    # a decay with a trainable rate, reset to 1 whenever it falls to 0.4: the event times
    # (log 2.5 / k, 2 log 2.5 / k, ...) move with k
    class Decay(eqx.Module):
        k: jax.Array

        def __call__(self, t, y, args):
            return -self.k * y

    def jump(t, y, args):
        return y * 0 + 1.0

    reset = nde.Event(lambda t, y, a: y[0] - 0.4, direction="down", jump=jump)

    def model_of(k):
        return nde.HybridODE(Decay(jnp.array(k)), reset, max_events=6, rtol=1e-7, atol=1e-9)

    # observed away from the event times n log 2.5 / k of every k in [1.2, 1.4] (an event
    # crossing an observation time makes the loss jump: a sawtooth's value is discontinuous)
    ts = jnp.array([0.0, 0.3, 0.5, 0.6, 0.9, 1.1, 1.25, 1.6, 1.8, 1.9, 2.35, 2.45, 2.55])
    data = nde.TimeSeries(ts, model_of(1.3)(ts, jnp.ones(1))[None])
    result = nde.fit(model_of(1.2), data, "auto", steps=40, progress=False)
    names = [s.name for s in result.stages]
    assert "MultipleShooting" in names[0] and "Trajectory" in names[1], names
    assert abs(float(result.model.field.k) - 1.3) < 1e-3 * 1.3  # from 8% off
    assert result.skipped == 0
    for preset in ("mixed", "collocation"):
        with pytest.raises(ValueError, match="Collocation.*HybridODE has none"):
            nde.fit(model_of(1.2), data, preset, steps=1, progress=False)
