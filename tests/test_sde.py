"""NeuralSDE: statistics against closed forms, adjoints against each other, input errors, and
MomentMatching fitting a small SDE."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def test_geometric_brownian_motion_moments_match_closed_form():
    mu, sigma, n = 0.5, 0.4, 4000
    gbm = nde.NeuralSDE(lambda t, y, a: mu * y, lambda t, y, a: sigma * y, solver="euler", dt0=0.01)
    ts = jnp.linspace(0.0, 1.0, 5)
    paths = np.asarray(gbm.sample(ts, jnp.ones(1), jax.random.key(0), n))[..., 0]
    assert paths.shape == (n, 5)
    t = np.asarray(ts)
    mean, var = np.exp(mu * t), np.exp(2 * mu * t) * (np.exp(sigma**2 * t) - 1)
    # Monte Carlo standard errors of the sample mean and variance (lognormal 4th moment)
    fourth = np.exp(4 * mu * t) * (
        np.exp(6 * sigma**2 * t) - 4 * np.exp(3 * sigma**2 * t) + 6 * np.exp(sigma**2 * t) - 3
    )
    se_mean, se_var = np.sqrt(var / n), np.sqrt(np.maximum(fourth - var**2, 0) / n)
    bias = 0.01 * mean  # Euler–Maruyama's weak error at dt = 0.01 is well below 1%
    assert np.all(np.abs(paths.mean(0) - mean) <= 4 * se_mean + bias)
    assert np.all(np.abs(paths.var(0) - var) <= 4 * se_var[-1] + 2 * bias * var + 1e-9)
    # and it is random: paths differ, the same key repeats the same paths
    assert paths[:, -1].std() > 0.3
    again = gbm.sample(ts, jnp.ones(1), jax.random.key(0), n)
    np.testing.assert_array_equal(np.asarray(again)[..., 0], paths)


class Drift(eqx.Module):
    a: jax.Array

    def __call__(self, t, y, args):
        return -self.a * y + jnp.sin(y[::-1])


class Diffusion(eqx.Module):
    b: jax.Array

    def __call__(self, t, y, args):
        return self.b * jnp.cos(y)


def test_direct_and_backsolve_gradients_agree_on_the_same_brownian_path():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 1.0, 5)
        y0, key = jnp.array([1.0, 0.5]), jax.random.key(3)

        def loss(params, sensitivity):
            model = nde.NeuralSDE(
                Drift(params[0]),
                Diffusion(params[1]),
                solver="heun",
                dt0=0.01,
                sensitivity=sensitivity,
            )
            return jnp.sum(model(ts, y0, key) ** 2)

        params = (jnp.array(0.7), jnp.array(0.3))
        direct = jax.jit(jax.grad(lambda p: loss(p, nde.Direct())))(params)
        backsolve = jax.jit(jax.grad(lambda p: loss(p, nde.Backsolve())))(params)
        for d, b in zip(direct, backsolve, strict=True):
            assert abs(float(d)) > 0.1
            np.testing.assert_allclose(float(b), float(d), rtol=2e-3)


def test_general_noise_with_more_brownian_components_than_states():
    # dy = B dW with B (2, 3): y(1) - y(0) ~ N(0, B Bᵀ)
    B = jnp.array([[1.0, 0.5, 0.0], [0.0, -0.3, 0.8]])
    model = nde.NeuralSDE(
        lambda t, y, a: jnp.zeros(2),
        lambda t, y, a: B,
        noise="general",
        brownian_dim=3,
        solver="euler",
        dt0=0.05,
    )
    paths = np.asarray(
        model.sample(jnp.linspace(0.0, 1.0, 3), jnp.zeros(2), jax.random.key(1), 4000)
    )
    assert paths.shape == (4000, 3, 2)
    cov = np.cov(paths[:, -1].T)
    np.testing.assert_allclose(cov, np.asarray(B @ B.T), atol=0.1)
    # m is inferred from the diffusion when brownian_dim is not given
    inferred = nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: B, noise="general", dt0=0.1)
    assert inferred(jnp.linspace(0, 1, 4), jnp.ones(2), jax.random.key(2)).shape == (4, 2)


def test_bad_input_gives_clear_errors():
    ts, y0, key = jnp.linspace(0, 1, 4), jnp.ones(2), jax.random.key(0)
    with pytest.raises(ValueError, match="noise='diagonal'.*shape"):
        nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: jnp.eye(2))(ts, y0, key)
    with pytest.raises(ValueError, match="noise='general'"):
        nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: y, noise="general")(ts, y0, key)
    with pytest.raises(ValueError, match="brownian_dim"):
        nde.NeuralSDE(
            lambda t, y, a: -y, lambda t, y, a: jnp.ones((2, 3)), noise="general", brownian_dim=2
        )(ts, y0, key)
    with pytest.raises(ValueError, match="drift must return"):
        nde.NeuralSDE(lambda t, y, a: jnp.ones(3), lambda t, y, a: y)(ts, y0, key)
    with pytest.raises(ValueError, match="noise must be"):
        nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: y, noise="diag")
    with pytest.raises(ValueError, match="Did you mean 'milstein'"):
        nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: y, solver="milstien")
    with pytest.raises(ValueError, match="Backsolve"):
        nde.NeuralSDE(
            lambda t, y, a: -y, lambda t, y, a: y, solver="euler", sensitivity=nde.Backsolve()
        )
    with pytest.raises(ValueError, match="n_paths"):
        nde.MomentMatching(n_paths=1)


class ScalarSDE(eqx.Module):
    """dy = mu·y dt + sigma·y dW with trainable mu, sigma (GBM)."""

    mu: jax.Array
    sigma: jax.Array

    def drift(self, t, y, args):
        return self.mu * y

    def diffusion(self, t, y, args):
        return self.sigma * y


def gbm_model(mu, sigma):
    params = ScalarSDE(jnp.array(mu), jnp.array(sigma))
    return nde.NeuralSDE(params.drift, params.diffusion, solver="euler", dt0=0.05)


def gbm_moment_fit(seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Fit (mu, sigma) of a GBM from (0, 0.1) by moment matching, with the data drawn from
    `seed + 7` and the fit's paths from `seed`: (mu, |sigma|, losses)."""
    ts = jnp.linspace(0.0, 1.0, 11)
    truth = gbm_model(0.8, 0.5)
    data = nde.TimeSeries(ts, truth.sample(ts, jnp.ones(1), jax.random.key(seed + 7), 4000))
    result = nde.fit(
        gbm_model(0.0, 0.1),
        data,
        nde.MomentMatching(n_paths=300),
        optimizer=optax.adam(0.03),
        steps=120,
        key=jax.random.key(seed),
        progress=False,
    )
    # drift and diffusion are bound methods: each carries its own copy of the module, and each
    # copy's other parameter does not enter the loss
    mu, sigma = result.model.drift.__self__.mu, result.model.diffusion.__self__.sigma
    return float(mu), abs(float(sigma)), result.losses


@pytest.mark.slow
def test_moment_matching_recovers_drift_and_diffusion():
    ts = jnp.linspace(0.0, 1.0, 11)
    truth = gbm_model(0.8, 0.5)
    data = nde.TimeSeries(ts, truth.sample(ts, jnp.ones(1), jax.random.key(7), 4000))
    mu, sigma, losses = gbm_moment_fit(seed=0)
    assert abs(mu - 0.8) < 0.1
    assert abs(sigma - 0.5) < 0.1
    assert losses[-10:].mean() < 0.05 * losses[0]
    # the per-path likelihood ranks the truth above a wrong model on the same paths
    likelihood = nde.MomentMatching(n_paths=500, objective="likelihood")
    prepared = likelihood.prepare(truth, data)
    key = jax.random.key(1)
    assert float(likelihood.loss(truth, prepared, key)) < float(
        likelihood.loss(gbm_model(0.3, 0.2), prepared, key)
    )
