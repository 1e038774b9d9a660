"""NeuralSDE: statistics against closed forms, adjoints against each other, input errors, and
MomentMatching fitting a small SDE."""

import diffrax
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
                brownian="tree",  # Backsolve's path, asked for explicitly for Direct too
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


def _still(t, y, args):
    return jnp.zeros_like(y)


def diffrax_grid(t0, t1, dt0):
    """The (start, end) of each step diffrax's constant steps take on [t0, t1] (traced times:
    one compilation for every grid)."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_still),
        diffrax.Euler(),
        jnp.asarray(t0, jnp.float32),
        jnp.asarray(t1, jnp.float32),
        jnp.asarray(dt0, jnp.float32),
        jnp.zeros(1),
        saveat=diffrax.SaveAt(steps=True),
        max_steps=256,
    )
    ends = np.asarray(sol.ts)[np.isfinite(np.asarray(sol.ts))]
    return np.concatenate([[t0], ends[:-1]]), ends


def test_grid_brownian_increments_have_brownian_moments_on_diffrax_grid():
    # dt0 = 0.3 on [0, 1]: diffrax's grid is 0.3, 0.5, 0.75, 1 (steps of unequal length)
    t0, t1, dt0, n = 0.0, 1.0, 0.3, 20000
    shape = jax.ShapeDtypeStruct((2,), jnp.float32)
    starts, ends = diffrax_grid(t0, t1, dt0)
    np.testing.assert_allclose(ends, [0.3, 0.5, 0.75, 1.0], rtol=1e-6)
    h = ends - starts

    @jax.jit
    def draw(keys):
        def one(key):
            bm = nde.GridBrownianPath(t0, t1, dt0, shape, key, diffrax.SpaceTimeLevyArea)
            levy = [bm.evaluate(s, e, use_levy=True) for s, e in zip(starts, ends, strict=True)]
            return jnp.stack([x.W for x in levy]), jnp.stack([x.H for x in levy])

        return jax.vmap(one)(keys)

    w, hh = (np.asarray(x, np.float64) for x in draw(jax.random.split(jax.random.key(0), n)))
    # mean 0 and variance h per step (4 standard errors), H ~ N(0, h / 12)
    assert np.all(np.abs(w.mean(0)) < 4 * np.sqrt(h / n)[:, None])
    assert np.all(np.abs(w.var(0) / h[:, None] - 1) < 4 * np.sqrt(2 / n))
    assert np.all(np.abs(hh.var(0) / (h[:, None] / 12) - 1) < 4 * np.sqrt(2 / n))
    # no correlation across steps, components, or between W and H
    flat = np.concatenate([w.reshape(n, -1), hh.reshape(n, -1)], 1)
    corr = np.corrcoef(flat.T)
    assert np.all(np.abs(corr - np.eye(16)) < 4 / np.sqrt(n))
    # the same key gives the same path, under jit or not; a single time is refused
    bm = nde.GridBrownianPath(t0, t1, dt0, shape, jax.random.key(5))
    jitted = eqx.filter_jit(lambda b, s, e: b.evaluate(s, e))
    np.testing.assert_array_equal(bm.evaluate(0.5, 0.75), jitted(bm, 0.5, 0.75))
    with pytest.raises(ValueError, match="evaluate.t0, t1."):
        bm.evaluate(0.5)


def test_grid_brownian_steps_map_one_to_one_onto_diffrax_steps():
    """Each step diffrax takes reads its own draw: no two steps share one, none is skipped."""
    shape = jax.ShapeDtypeStruct((1,), jnp.float32)
    for t0, t1, dt0 in [(0.0, 2.0, 0.01), (0.3, 1.7, 0.07), (0.0, 1.0, 0.6)]:
        starts, ends = diffrax_grid(t0, t1, dt0)
        bm = nde.GridBrownianPath(t0, t1, dt0, shape, jax.random.key(0))
        # the draw of a step is the one keyed by its index (the moments test checks the draws)
        np.testing.assert_array_equal(bm._index(jnp.asarray(starts)), np.arange(len(ends)))


def test_brownian_kind_is_chosen_honoured_or_refused():
    drift, diffusion = (lambda t, y, a: -y), (lambda t, y, a: 0.1 * y)
    assert nde.NeuralSDE(drift, diffusion).brownian == "grid"  # Direct()
    assert nde.NeuralSDE(drift, diffusion, sensitivity=nde.Forward()).brownian == "grid"
    stratonovich = dict(solver="heun", sensitivity=nde.Backsolve())
    assert nde.NeuralSDE(drift, diffusion, **stratonovich).brownian == "tree"
    assert nde.NeuralSDE(drift, diffusion, brownian="tree").brownian == "tree"
    with pytest.raises(ValueError, match="brownian='grid'.*Backsolve"):
        nde.NeuralSDE(drift, diffusion, brownian="grid", **stratonovich)
    with pytest.raises(ValueError, match="brownian must be 'auto', 'grid' or 'tree'"):
        nde.NeuralSDE(drift, diffusion, brownian="unsafe")
    # a grid model whose sensitivity is swapped afterwards is refused, not solved on a tree
    model = nde.NeuralSDE(drift, diffusion, solver="heun")
    swapped = eqx.tree_at(lambda m: m.config.sensitivity, model, nde.Backsolve())
    with pytest.raises(ValueError, match="brownian='grid'"):
        swapped(jnp.linspace(0, 1, 3), jnp.ones(2), jax.random.key(0))
    # both kinds give the same key the same path in every call, and differ from each other
    ts, y0, key = jnp.linspace(0, 1, 3), jnp.ones(2), jax.random.key(1)
    grid, tree = (nde.NeuralSDE(drift, diffusion, brownian=b) for b in ("grid", "tree"))
    np.testing.assert_array_equal(grid(ts, y0, key), grid(ts, y0, key))
    assert not np.allclose(grid(ts, y0, key), tree(ts, y0, key))
