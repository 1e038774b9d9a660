"""Mixed training (Stage lists, the "auto" preset), hybrid collocation, and minibatching."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def small_model(seed=0):
    mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(seed))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))


def trajectory_loss(model, data):
    t = nde.Trajectory()
    return float(t.loss(model, t.prepare(model, data), None))


def mixed_preset_run(seed: int = 0) -> tuple[float, float, list[str]]:
    """The "mixed" preset (40 steps a stage, 10 of L-BFGS) on a 20-point spiral:
    (trajectory loss before, after, stage names)."""
    data = nde.datasets.spiral(n_points=20)
    model = small_model(seed)
    stages = nde.PRESETS["mixed"](steps=40)
    # real optax optimizers, and `steps` reaches the solving stages only
    assert all(isinstance(s.optimizer, optax.GradientTransformation) for s in stages)
    presets = nde.fitting.presets
    assert [s.steps for s in stages] == [presets.COLLOCATION_STEPS, 40, 40, presets.LBFGS_STEPS]
    stages[-1] = dataclasses.replace(stages[-1], steps=10)  # a shorter L-BFGS polish
    result = nde.fit(model, data, stages, progress=False)
    names = [s.name.split(" ", 1)[1] for s in result.stages]
    return trajectory_loss(model, data), trajectory_loss(result.model, data), names


# long tier: four compiled stages; the default run fits each stage's strategy in its own tests
# (test_collocation, test_shooting, test_fit's built-ahead stages) and checks the preset's
# stage list in its docstring
@pytest.mark.long
def test_mixed_preset_runs_collocation_shooting_trajectory_lbfgs():
    before, after, names = mixed_preset_run(seed=0)
    assert names == ["Collocation", "MultipleShooting", "Trajectory", "Trajectory"]
    assert after < 0.1 * before, (before, after)
    model, data = small_model(), nde.datasets.spiral(n_points=20)
    # "auto" is the same recipe without collocation
    assert [type(s.strategy).__name__ for s in nde.PRESETS["auto"]()] == names[1:]
    with pytest.raises(ValueError, match="unknown strategy preset"):
        nde.fit(model, data, "fastest", progress=False)


class HybridLV(eqx.Module):
    """Known growth/decay terms plus a network standing in for the interactions."""

    net: eqx.nn.MLP

    def __call__(self, t, u, args):
        return jnp.stack([1.5 * u[0], -1.0 * u[1]]) + self.net(u)


def hybrid_collocation_fit(seed: int = 3):
    """Collocation on Lotka-Volterra with the interaction terms left to a network."""
    data = nde.datasets.lotka_volterra(n_points=200, t1=5.0)
    net = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(seed))
    model = nde.NeuralODE(HybridLV(net))
    result = nde.fit(
        model,
        data,
        nde.Collocation(bandwidth=0.03),
        optimizer=optax.adam(0.02),
        steps=600,
        steps_per_call=200,
        progress=False,
    )
    return data, result


def test_collocation_fits_a_hybrid_field():
    data, result = hybrid_collocation_fit(seed=3)
    assert result.losses[-1] < 0.1 * result.losses[0]
    # the network learnt the interactions -x*y and 3*x*y at a point on the orbit
    u = data.ys[40]
    np.testing.assert_allclose(
        result.model.field.net(u), [-u[0] * u[1], 3 * u[0] * u[1]], rtol=0.2, atol=0.1
    )


def test_minibatching_windows_and_trajectories():
    data = nde.datasets.spiral(n_points=15)
    model = small_model(1)
    full = trajectory_loss(model, data)
    key = jax.random.key(0)
    # a window as long as the series on a single series is the full loss
    whole = nde.Trajectory(batch_time=15, batch_size=1)
    assert float(whole.loss(model, whole.prepare(model, data), key)) == pytest.approx(
        full, rel=1e-5
    )
    # windows: reproducible per key, different across keys, scaled with the number of windows
    win = nde.Trajectory(batch_time=4, batch_size=6)
    prep = win.prepare(model, data)
    a, b = (float(win.loss(model, prep, k)) for k in (key, key))
    c = float(win.loss(model, prep, jax.random.key(1)))
    assert a == b and a != c and 0 < a
    # trajectories without replacement: all of them in some order is the full loss
    batch = nde.TimeSeries(data.ts, jnp.stack([data.ys, 0.5 * data.ys, -data.ys]))
    per_traj = nde.Trajectory(batch_size=3)
    full_b = trajectory_loss(model, batch)
    assert float(per_traj.loss(model, per_traj.prepare(model, batch), key)) == pytest.approx(
        full_b, rel=1e-5
    )
    with pytest.raises(ValueError, match="batch_time 20 exceeds"):
        nde.Trajectory(batch_time=20).prepare(model, data)
    with pytest.raises(ValueError, match="batch_size 4 exceeds the 3 trajectories"):
        nde.Trajectory(batch_size=4).prepare(model, batch)
    with pytest.raises(ValueError, match="batch_time must be None or an integer >= 2"):
        nde.Trajectory(batch_time=1)
    mask = np.ones((15, 2), bool)
    mask[5, 1] = False
    with pytest.raises(ValueError, match="needs fully observed data"):
        win.prepare(model, nde.TimeSeries(data.ts, data.ys, mask))


def minibatch_fit_losses(seed: int = 2) -> tuple[float, float]:
    """Trajectory minibatches (windows of 8, 10 a step) on a 30-point spiral: (before, after)."""
    data = nde.datasets.spiral(n_points=30)
    model = small_model(seed)
    before = trajectory_loss(model, data)
    strategy = nde.Trajectory(batch_time=8, batch_size=10)
    result = nde.fit(
        model,
        data,
        strategy,
        optimizer=optax.adam(0.02),
        steps=150,
        steps_per_call=50,
        key=jax.random.key(seed + 3),
        progress=False,
    )
    return before, trajectory_loss(result.model, data)


# long tier: a fit to a threshold; the default run checks minibatches' losses against the full
# loss (test_minibatching_windows_and_trajectories, test_shooting) and fits with them elsewhere
@pytest.mark.long
def test_fit_with_minibatches_reduces_the_full_loss():
    before, after = minibatch_fit_losses(seed=2)
    assert after < 0.3 * before, (before, after)
