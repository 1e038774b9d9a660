"""Bayesian inference: NUTS through the solve against a grid-integrated posterior; bad input."""

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde


class Decay(eqx.Module):
    k: jax.Array

    def __call__(self, t, y, args):
        return -self.k * y


def _decay_data(sigma=0.05, k=0.7, seed=0):
    ts = np.linspace(0.0, 2.0, 12)
    rng = np.random.default_rng(seed)
    ys = np.exp(-k * ts) + sigma * rng.normal(size=ts.shape)
    ys[0] = 1.0  # the first observation is the (fixed) initial state
    return nde.TimeSeries(ts, ys[:, None])


def _sample_decay(sigma, **options):
    """NUTS over the decay rate (LogNormal(0, 1) prior, fixed noise), 2 chains x (150 + 250)."""
    data = _decay_data(sigma)
    model = nde.NeuralODE(Decay(jnp.array(0.5)), rtol=1e-6, atol=1e-8, sensitivity=nde.Direct())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nde.PosteriorWarning)  # judged by the caller
        post = nde.sample_posterior(
            model,
            data,
            {"field.k": nde.priors.LogNormal(0.0, 1.0)},
            noise=sigma,
            chains=2,
            warmup=150,
            samples=250,
            key=jax.random.key(3),
            **options,
        )
    return data, post


def _grid_moments(data, sigma):
    """The rate's posterior mean and sd by quadrature: y = exp(-k t), the density on a grid."""
    ts, ys = np.asarray(data.ts), np.asarray(data.ys)[:, 0]
    k = np.linspace(0.3, 1.2, 20001)
    loglik = -0.5 * np.sum((ys[None] - np.exp(-k[:, None] * ts[None])) ** 2, axis=1) / sigma**2
    logprior = -0.5 * np.log(k) ** 2 - np.log(k)
    w = np.exp(loglik + logprior - np.max(loglik + logprior))
    w /= w.sum()
    mean = float(np.sum(w * k))
    return mean, float(np.sqrt(np.sum(w * (k - mean) ** 2)))


@pytest.mark.long  # a whole fit: the long tier keeps the default run within its time
@pytest.mark.parametrize(
    "mass_matrix, chain_method", [("auto", "auto"), ("diagonal", "vectorized")]
)
def test_posterior_mean_and_sd_match_grid_reference(mass_matrix, chain_method):
    """One rate, fixed noise: the posterior is a 1-D integral; NUTS must reproduce its moments,
    with either mass matrix and either way of running the chains."""
    sigma = 0.05
    data, post = _sample_decay(sigma, mass_matrix=mass_matrix, chain_method=chain_method)
    mean, sd = _grid_moments(data, sigma)
    draws = post.draws("field.k")
    assert draws.shape == (500,)
    assert abs(draws.mean() - mean) < 0.3 * sd, (draws.mean(), mean, sd)
    assert 0.7 * sd < draws.std() < 1.3 * sd, (draws.std(), sd)
    rhat = float(post.rhat["field.k"])
    assert np.isfinite(rhat) and rhat < 1.05
    assert float(post.ess["field.k"]) > 50
    assert post.models.field.k.shape == (500,)  # the models carry the sample axis
    lo, hi = post.interval("field.k", 0.9)
    assert lo < mean < hi
    bands = nde.posterior_predictive(post, data.ts)
    noisy = nde.posterior_predictive(post, data.ts, key=jax.random.key(0))
    assert bands.shape == noisy.shape == (500, 12, 1)
    assert float(jnp.std(noisy - bands)) == pytest.approx(sigma, rel=0.1)
    assert "field.k" in post.summary()


def _model():
    return nde.NeuralODE(Decay(jnp.array(0.5)), rtol=1e-6, atol=1e-8)


def test_prior_for_missing_parameter():
    with pytest.raises(ValueError, match="no parameter 'field.rate'.*field.k"):
        nde.sample_posterior(
            _model(), _decay_data(), {"field.rate": nde.priors.Normal()}, noise=0.1
        )


def test_non_finite_start_names_the_parameter():
    model = nde.NeuralODE(Decay(jnp.array(-0.5)))
    with pytest.raises(ValueError, match="not finite at the start: parameter 'field.k'"):
        nde.sample_posterior(model, _decay_data(), {"field.k": nde.priors.LogNormal()}, noise=0.1)


def test_noise_must_be_given_once():
    priors = {"field.k": nde.priors.LogNormal()}
    with pytest.raises(ValueError, match="noise scale is unknown"):
        nde.sample_posterior(_model(), _decay_data(), priors)
    with pytest.raises(ValueError, match="not both"):
        nde.sample_posterior(
            _model(), _decay_data(), {**priors, "noise": nde.priors.HalfNormal()}, noise=0.1
        )
    with pytest.raises(ValueError, match="chains must be an integer >= 2"):
        nde.sample_posterior(_model(), _decay_data(), priors, noise=0.1, chains=1)


def test_sampler_options_are_checked_before_compiling():
    priors = {"field.k": nde.priors.LogNormal()}
    with pytest.raises(ValueError, match="mass_matrix must be one of .*'dense'"):
        nde.sample_posterior(_model(), _decay_data(), priors, noise=0.1, mass_matrix="full")
    with pytest.raises(ValueError, match="chain_method must be one of .*'sequential'"):
        nde.sample_posterior(_model(), _decay_data(), priors, noise=0.1, chain_method="pmap")
    for depth in (0, 21, 2.5, True):
        with pytest.raises(ValueError, match="max_tree_depth must be"):
            nde.sample_posterior(_model(), _decay_data(), priors, noise=0.1, max_tree_depth=depth)


def test_bad_priors():
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        nde.priors.Normal(0.0, -1.0)
    with pytest.raises(ValueError, match="high must exceed low"):
        nde.priors.Uniform(1.0, 0.0)
    with pytest.raises(ValueError, match="must be an nde.priors"):
        nde.sample_posterior(_model(), _decay_data(), {"field.k": 1.0}, noise=0.1)


@pytest.mark.parametrize("prior", [nde.priors.Uniform(-1.0, 2.0), nde.priors.HalfNormal(2.0)])
def test_bijections_have_the_right_jacobian(prior):
    """forward's log-Jacobian equals log|dx/du| by autodiff, and inverse undoes forward."""
    u = jnp.linspace(-2.0, 1.5, 7)
    x, logdet = prior.forward(u)
    slope = jax.vmap(jax.grad(lambda v: prior.forward(v)[0]))(u)
    np.testing.assert_allclose(float(logdet), float(jnp.sum(jnp.log(jnp.abs(slope)))), rtol=1e-5)
    np.testing.assert_allclose(prior.inverse(x), u, atol=1e-5)


def test_poor_diagnostics_warn_with_the_parameter():
    x = np.random.default_rng(0).normal(size=(2, 20))
    x[1] += 3.0  # two chains in different places: R-hat far above 1.01
    from blackjax.diagnostics import effective_sample_size, potential_scale_reduction

    from neuraldiffeq.inference.posterior import _warn_if_poor

    post = nde.Posterior(
        models=None,
        y0=jnp.ones((40, 1)),
        noise=jnp.ones(40),
        samples={"field.k": x},
        rhat={"field.k": np.asarray(potential_scale_reduction(x))},
        ess={"field.k": np.asarray(effective_sample_size(x))},
        divergences=3,
        step_sizes=np.ones(2),
        acceptance=0.8,
    )
    with pytest.warns(nde.PosteriorWarning, match=r"field.k: R-hat .*3 divergent"):
        _warn_if_poor(post)
    # trajectories cut at the tree-depth cap are counted and warned about (Stan's treedepth)
    steps = np.full((2, 20), 7)
    steps[0, :5] = 15  # 2**4 - 1: at the cap of depth 4
    capped = dataclasses.replace(
        post, samples={}, rhat={}, ess={}, divergences=0, integration_steps=steps, max_tree_depth=4
    )
    assert capped.saturated == 5
    with pytest.warns(nde.PosteriorWarning, match=r"5 draws reached max_tree_depth=4"):
        _warn_if_poor(capped)
    assert "5 draws at max_tree_depth=4" in capped.summary()


def test_network_prior_names_every_array_of_the_network():
    class UDE(eqx.Module):
        net: eqx.nn.MLP

        def __call__(self, t, y, args):
            return self.net(y)

    net = eqx.nn.MLP(1, 1, 3, 1, key=jax.random.key(0))
    model = nde.NeuralODE(UDE(net))
    with pytest.raises(
        ValueError, match=r"field.net.layers\[0\].weight.*field.net.layers\[1\].bias"
    ):
        nde.sample_posterior(model, _decay_data(), {"field.nett": nde.priors.Normal()}, noise=0.1)
    with pytest.raises(ValueError, match="has two priors"):
        nde.sample_posterior(
            model,
            _decay_data(),
            {"field.net": nde.priors.Normal(), "field.net.layers[0]": nde.priors.Normal()},
            noise=0.1,
        )


@pytest.mark.long  # compiles NUTS
def test_max_tree_depth_caps_every_trajectory_and_keeps_the_posterior():
    """A cap of 2 doublings: at most 3 gradients a draw, counted per draw; the chain still
    targets the same posterior (the grid reference's mean, with a margin for fewer ESS)."""
    sigma = 0.05
    data, post = _sample_decay(sigma, max_tree_depth=2)
    assert post.integration_steps.shape == (2, 250)
    assert post.integration_steps.min() >= 1 and post.integration_steps.max() <= 3
    assert post.saturated == int(np.sum(post.integration_steps == 3))
    mean, sd = _grid_moments(data, sigma)
    assert abs(post.draws("field.k").mean() - mean) < 0.4 * sd


@pytest.mark.long  # a point fit and two NUTS compilations: about a minute
def test_bayes_demo_lynx_hare_half_reduced(tmp_path):
    """The demo's own path, cut to a few draws: both halves write their outputs with finite
    values, and the lynx-hare UDE's diagnostics (R-hat, ESS, steps, tree depth) are reported."""
    import json

    from neuraldiffeq.cli import main

    out = tmp_path / "bayes"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nde.PosteriorWarning)  # a few draws cannot mix
        code = main(
            [
                "demo", "bayes", "--chains", "2", "--warmup", "10", "--samples", "10",
                "--lynx-hare-warmup", "10", "--lynx-hare-samples", "10",
                "--lynx-hare-tree-depth", "3", "--fit-steps", "50",
                "--out", str(out), "--no-progress",
            ]
        )  # fmt: skip
    assert code == 0
    for name in ["predictive.png", "marginals.png", "lynx_hare_predictive.png",
                 "lynx_hare_marginals.png"]:  # fmt: skip
        assert (out / name).stat().st_size > 10_000, name
    lh = json.loads((out / "metrics.json").read_text())["lynx_hare"]
    assert lh["parameters_sampled"] == 2 + 42 + 1
    assert lh["samples"] == 10 and lh["max_tree_depth"] == 3
    for key in ["noise_mean", "max_rhat", "min_ess", "mean_leapfrog_steps_per_draw",
                "observations_in_90_band"]:  # fmt: skip
        assert np.isfinite(lh[key]), key
    assert np.all(np.isfinite(lh["rates_interval_90"])) and np.all(np.isfinite(lh["step_sizes"]))
    assert 1 <= lh["mean_leapfrog_steps_per_draw"] <= 7  # 2**3 - 1 at most
    assert 0 <= lh["draws_at_max_tree_depth"] <= 20
    assert isinstance(lh["divergences"], int)


@pytest.mark.long  # compiles NUTS
def test_window_adaptation_learns_a_dense_mass_matrix():
    """A correlated Gaussian (correlation 0.95, scales 1 and 10): the draws have its mean and
    covariance, and the adapted dense mass matrix whitens it, so a draw needs a few leapfrog
    steps at a step size near 1 (with the identity, the narrow direction would force small
    steps and long trajectories)."""
    from neuraldiffeq.inference.posterior import _window_adapted_nuts

    cov = np.array([[1.0, 9.5], [9.5, 100.0]])
    precision = jnp.asarray(np.linalg.inv(cov))
    sample = jax.jit(
        lambda key: _window_adapted_nuts(
            lambda x: -0.5 * x[0] @ precision @ x[0], key, (jnp.zeros(2),), 300, 1000, 0.8, True, 10
        )
    )
    (draws,), divergent, _, step_size, n_steps = sample(jax.random.key(0))
    x = np.asarray(draws)
    assert x.shape == (1000, 2) and not np.any(np.asarray(divergent))
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(x.mean(0)) < 0.25 * sd)  # ESS of a few hundred: standard error ~0.06 sd
    np.testing.assert_allclose(np.cov(x.T), cov, rtol=0.2, atol=0.2)
    assert float(step_size) > 0.4
    assert float(np.mean(np.asarray(n_steps))) < 8
