"""NeuralDDE: fitted through `fit` with Trajectory and MultipleShooting; gradients; bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def delayed_decay_data():
    ts = jnp.linspace(0.0, 8.0, 41)
    sol = nde.solve_dde(
        lambda t, y, yl, a: -yl[0], jnp.ones(1), [1.0], 0.0, 8.0, ts, rtol=1e-8, atol=1e-8
    )
    return nde.TimeSeries(ts, sol.ys)


class DelayedDecay(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, y_lagged, args):
        return -self.rate * y_lagged[0]


def delayed_rate_fit(start: float = 0.5):
    """100 Adam steps on y' = -rate·y(t-1) from `start`; the data have rate 1."""
    data = delayed_decay_data()
    model = nde.NeuralDDE(DelayedDecay(jnp.array(start)), lags=[1.0], autonomous=False, rtol=1e-6)
    return nde.fit(
        model, data, nde.Trajectory(), optimizer=optax.adam(0.05), steps=100, progress=False
    )


@pytest.mark.slow
def test_trajectory_fit_recovers_the_delayed_rate():
    result = delayed_rate_fit(0.5)
    assert abs(float(result.model.field.rate) - 1.0) < 0.02
    assert result.losses[-1] < 1e-3 * result.losses[0]
    assert result.skipped == 0


def delay_network_shooting_losses(seed: int = 0) -> np.ndarray:
    """20 Adam steps of multiple shooting on a network that sees y, y(t-1), y(t-2)."""
    data = delayed_decay_data()
    mlp = eqx.nn.MLP(3, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(seed))
    model = nde.NeuralDDE(mlp, lags=[1.0, 2.0])
    assert model(data.ts, data.ys[0]).shape == (41, 1)
    result = nde.fit(
        model,
        data,
        nde.MultipleShooting(group_size=9),
        optimizer=optax.adam(0.01),
        steps=20,
        progress=False,
    )
    return result.losses


@pytest.mark.slow
@pytest.mark.long  # test_trajectory_fit_recovers_the_delayed_rate: a DDE fit by default
def test_network_sees_current_and_lagged_states_and_fits_with_multiple_shooting():
    losses = delay_network_shooting_losses(seed=0)
    assert losses[-5:].mean() < 0.6 * losses[0]
    assert np.all(np.isfinite(losses))


class History(eqx.Module):
    level: jax.Array

    def __call__(self, t):
        return self.level * jnp.ones(1)


def test_gradient_reaches_history_parameters_and_matches_finite_differences():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 3.0, 7)

        def loss(level):
            model = nde.NeuralDDE(
                DelayedDecay(jnp.array(0.8)),
                [1.0],
                History(level),
                autonomous=False,
                rtol=1e-10,
                atol=1e-10,
            )
            return jnp.sum(model(ts, jnp.ones(1)) ** 2)

        grad = float(jax.jit(jax.grad(loss))(jnp.array(0.6)))
        loss_jit = jax.jit(loss)
        fd = float((loss_jit(0.6 + 1e-6) - loss_jit(0.6 - 1e-6)) / 2e-6)
        assert abs(grad) > 0.1
        np.testing.assert_allclose(grad, fd, rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="lags"):
        nde.NeuralDDE(lambda x: x, lags=[0.0])
    with pytest.raises(ValueError, match="lags"):
        nde.NeuralDDE(lambda x: x, lags=-2.0)
    with pytest.raises(ValueError, match="Direct"):
        nde.NeuralDDE(lambda x: x, lags=[1.0], sensitivity=nde.Backsolve())
    with pytest.raises(ValueError, match="history"):
        nde.NeuralDDE(lambda x: x, lags=[1.0], history=jnp.ones((2, 2)))
    model = nde.NeuralDDE(
        DelayedDecay(jnp.array(1.0)), [1.0], history=jnp.ones(3), autonomous=False
    )
    with pytest.raises(ValueError, match="history has shape"):
        model(jnp.linspace(0, 1, 3), jnp.ones(1))
    with pytest.raises(ValueError, match="field must be callable"):
        nde.NeuralDDE(3.0, lags=[1.0])


class _NoDelayHint(eqx.Module):
    """The same model, hidden from MultipleShooting's isinstance check: constant history."""

    model: nde.NeuralDDE

    def __call__(self, ts, y0):
        return self.model(ts, y0)


def test_multiple_shooting_gives_segments_the_observed_past():
    # With the true field, segments that see the data's past reproduce the data; a constant
    # history (what a fresh solve from each segment start assumes) does not.
    data = delayed_decay_data()
    true = nde.NeuralDDE(DelayedDecay(jnp.array(1.0)), lags=[1.0], autonomous=False, rtol=1e-7)
    strategy = nde.MultipleShooting(group_size=5, continuity=0.0)  # the data misfit alone
    prepared = strategy.prepare(true, data)
    with_past = float(strategy.loss(true, prepared, None))
    constant = float(strategy.loss(_NoDelayHint(true), prepared, None))
    assert with_past < 1e-3, with_past
    assert constant > 100 * with_past, (constant, with_past)


def test_multiple_shooting_of_a_dde_rejects_missing_values():
    data = delayed_decay_data()
    mask = np.ones(data.ys.shape, bool)
    mask[7] = False  # not a segment start
    masked = nde.TimeSeries(data.ts, data.ys, mask=mask)
    model = nde.NeuralDDE(DelayedDecay(jnp.array(1.0)), lags=[1.0], autonomous=False)
    strategy = nde.MultipleShooting(group_size=5)
    with pytest.raises(Exception, match="fully observed"):
        jax.block_until_ready(strategy.loss(model, strategy.prepare(model, masked), None))
