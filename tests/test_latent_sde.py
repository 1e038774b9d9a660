"""nde.LatentSDE: the path KL against the Girsanov closed form on an OU pair, sampling, fitting.

The ELBO's gradient (fixed key, so a fixed Brownian path and z0 draw) is checked against float64
central finite differences for every sensitivity in tests/test_sensitivity_matrix.py
("LatentSDE.elbo").
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


class OUDrift(eqx.Module):
    """f(t, z, c) = -rate * z: the posterior drift of an OU process, ignoring the context."""

    rate: float

    def __call__(self, t, z, context=None):
        return -self.rate * z


class Constant(eqx.Module):
    value: float

    def __call__(self, t, z):
        return jnp.full_like(z, self.value)


def ou_pair(a, theta, sigma, m0, s0, pm, ps, dt0):
    """A LatentSDE whose posterior is dz = -a z dt + σ dW, z0 ~ N(m0, s0²), and whose prior is
    dz = -θ z dt + σ dW, z0 ~ N(pm, ps²)."""
    model = nde.LatentSDE(1, 1, context_size=2, hidden_size=2, dt0=dt0, key=jax.random.key(0))
    qz0 = eqx.tree_at(
        lambda q: (q.weight, q.bias),
        model.qz0,
        (jnp.zeros_like(model.qz0.weight), jnp.array([m0, np.log(s0)], jnp.float32)),
    )
    return eqx.tree_at(
        lambda m: (m.qz0, m.posterior_drift, m.prior_drift, m.diffusion, m.pz0_mean, m.pz0_logstd),
        model,
        (
            qz0,
            OUDrift(a),
            lambda t, z: -theta * z,
            Constant(sigma),
            jnp.array([pm], jnp.float32),
            jnp.array([np.log(ps)], jnp.float32),
        ),
    )


def test_path_kl_matches_girsanov_closed_form_on_ou():
    a, theta, sigma, m0, s0, pm, ps, t1 = 1.0, 2.0, 0.5, 1.0, 0.3, 0.5, 0.8, 1.0
    model = ou_pair(a, theta, sigma, m0, s0, pm, ps, dt0=0.01)
    n = 2000
    ts = jnp.linspace(0.0, t1, 3)
    terms = eqx.filter_jit(lambda m, ys, k: m.elbo_terms(ts, ys, None, k))
    _, kl0, kl_path = terms(model, jnp.zeros((n, 3, 1)), jax.random.key(1))
    kl_path = np.asarray(kl_path)
    # Girsanov: KL = E_q ∫ ½ ((f - h) / σ)² dt = (θ - a)² / (2σ²) ∫ E_q[z_t²] dt, with
    # E_q[z_t²] = (m0² + s0²) e^{-2at} + σ²/(2a) (1 - e^{-2at}).
    second_moment = (m0**2 + s0**2 - sigma**2 / (2 * a)) * (1 - np.exp(-2 * a * t1)) / (
        2 * a
    ) + sigma**2 * t1 / (2 * a)
    exact = (theta - a) ** 2 / (2 * sigma**2) * second_moment
    stderr = kl_path.std() / np.sqrt(n)
    estimate = kl_path.mean()
    # Monte Carlo error (~1.3%) plus Euler's O(dt) bias (~1%); a missing ½, the prior's path
    # instead of the posterior's, or a KL of zero are all off by > 25%.
    assert abs(estimate - exact) < max(4 * stderr, 0.05 * exact), (estimate, exact, stderr)
    assert stderr < 0.025 * exact
    # the initial-state KL: KL(N(m0, s0²) || N(pm, ps²))
    kl0_exact = np.log(ps / s0) + (s0**2 + (m0 - pm) ** 2) / (2 * ps**2) - 0.5
    np.testing.assert_allclose(np.asarray(kl0), kl0_exact, rtol=1e-5)
    # a posterior equal to the prior has no path KL at all
    same = eqx.tree_at(lambda m: m.prior_drift, model, lambda t, z: -a * z)
    _, _, zero = same.elbo_terms(ts, jnp.zeros((4, 3, 1)), None, jax.random.key(1))
    assert np.all(np.asarray(zero) == 0.0)


def test_elbo_terms_log_likelihood_is_gaussian_on_observed_entries():
    model = nde.LatentSDE(2, 2, context_size=3, hidden_size=4, obs_std=0.5, key=jax.random.key(0))
    ts = jnp.linspace(0.0, 1.0, 4)
    ys = jax.random.normal(jax.random.key(1), (3, 4, 2))
    mask = jnp.ones(ys.shape, bool).at[:, 1:3, 0].set(False)
    key = jax.random.key(2)

    @eqx.filter_jit  # one compilation for every call below
    def terms(m, ys):
        # vmapped over the KL weight only: the solve inside does not depend on it
        weighted = jax.vmap(lambda w: m.elbo(ts, ys, mask, key, kl_weight=w))
        return m.elbo_terms(ts, ys, mask, key), weighted(jnp.array([1.0, 0.5]))

    (loglik, kl0, kl_path), (elbo, annealed) = terms(model, ys)
    # the ELBO is their combination, and KL annealing scales only the KL
    assert float(elbo) == pytest.approx(float(jnp.mean(loglik - kl0 - kl_path)), rel=1e-6)
    half = float(jnp.mean(loglik - 0.5 * (kl0 + kl_path)))
    assert float(annealed) == pytest.approx(half, rel=1e-6)
    # masked-out values are never read (NaN there changes nothing)
    nan_ys = jnp.where(mask, ys, jnp.nan)
    np.testing.assert_allclose(terms(model, nan_ys)[0][0], loglik, rtol=1e-6)
    assert np.all(np.asarray(kl0) > 0) and np.all(np.asarray(kl_path) > 0)


def test_sampling_shapes_and_keys():
    model = nde.LatentSDE(2, 3, context_size=4, hidden_size=8, key=jax.random.key(0))
    ts = jnp.linspace(0.0, 1.0, 6)
    prior_fn = eqx.filter_jit(lambda m, k: m.sample_prior(ts, key=k, n=5))
    prior = prior_fn(model, jax.random.key(1))
    assert prior.shape == (5, 6, 3)
    np.testing.assert_array_equal(prior, prior_fn(model, jax.random.key(1)))
    other = prior_fn(model, jax.random.key(2))
    assert not np.allclose(prior, other)
    assert len({tuple(np.round(np.asarray(p[-1]), 6)) for p in prior}) == 5  # distinct paths
    ys = jax.random.normal(jax.random.key(3), (4, 6, 3))
    fine = jnp.linspace(0.1, 1.0, 7)  # a finer grid inside the observation window
    post_fn = eqx.filter_jit(lambda m, k: m.sample_posterior(ts, ys, key=k, n=2, ts_out=fine))
    post = post_fn(model, jax.random.key(4))
    assert post.shape == (2, 4, 7, 3)
    np.testing.assert_array_equal(post, post_fn(model, jax.random.key(4)))
    assert not np.allclose(post, post_fn(model, jax.random.key(5)))
    single = eqx.filter_eval_shape(  # shapes only: nothing compiles
        lambda m: m.sample_posterior(ts, ys[0], key=jax.random.key(4), n=3, latent=True), model
    )
    assert single.shape == (3, 6, 2)
    with pytest.raises(TypeError):  # the key is keyword-only
        model.sample_prior(ts, jax.random.key(1))
    with pytest.raises(ValueError, match="n .number of paths"):
        model.sample_prior(ts, key=jax.random.key(1), n=0)
    with pytest.raises(ValueError, match="ts_out must lie within"):
        model.sample_posterior(ts, ys, key=jax.random.key(4), ts_out=jnp.linspace(0, 2, 3))


def test_bad_inputs_are_value_errors():
    model = nde.LatentSDE(2, 3, context_size=4, hidden_size=8, key=jax.random.key(0))
    ts = jnp.linspace(0.0, 1.0, 6)
    ys = jnp.zeros((4, 6, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="ys has 2 state components"):
        model.elbo(ts, jnp.zeros((4, 6, 2)), None, key)
    with pytest.raises(ValueError, match="strictly increasing"):
        model.elbo(ts[::-1], ys, None, key)
    with pytest.raises(ValueError, match="NaN"):
        model.elbo(ts, ys.at[0, 0, 0].set(jnp.nan), None, key)
    with pytest.raises(ValueError, match="needs key"):
        model.elbo(ts, ys)
    with pytest.raises(ValueError, match="constant steps"):
        nde.LatentSDE(2, 3, rtol=1e-3, solver="heun", key=key)
    with pytest.raises(ValueError, match="cannot honour.*Backsolve.*heun"):
        nde.LatentSDE(2, 3, sensitivity=nde.Backsolve(), key=key)
    honoured = nde.LatentSDE(2, 3, solver="heun", sensitivity=nde.Backsolve(), key=key)
    assert isinstance(honoured.sensitivity, nde.Backsolve)
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        nde.LatentSDE(0, 3, key=key)
    with pytest.raises(ValueError, match="kl_weight"):
        nde.ELBO(kl_weight=-1.0)
    data = nde.TimeSeries(ts, jnp.zeros((4, 6, 2)))
    with pytest.raises(ValueError, match="ELBO: LatentSDE.elbo fails on data of shape"):
        nde.fit(model, data, nde.ELBO(), optimizer=optax.adam(1e-2), steps=1, progress=False)


# long tier: about 7 CPU s, mostly compiling the fused step; the default run checks the ELBO's
# gradient against finite differences (test_sensitivity_matrix's LatentSDE.elbo row), its terms
# and path KL here, and fit with the ELBO strategy on a LatentODE (test_latent)
@pytest.mark.long
def test_fit_improves_the_elbo():
    data = nde.datasets.stochastic_lorenz(16, n_obs=20, t1=1.0, dt=0.01, key=jax.random.key(0))
    model = nde.LatentSDE(
        2, 3, context_size=8, hidden_size=16, obs_std=0.3, dt0=0.05, key=jax.random.key(1)
    )
    result = nde.fit(model, data, nde.ELBO(), optimizer=optax.adam(2e-2), steps=100, progress=False)
    before = float(np.mean(result.losses[:3]))
    after = float(np.mean(result.losses[-5:]))
    # -ELBO per series starts near 20 * 3 * (½ (y/0.3)² + 0.3) ≈ 400; 100 steps took off 73%
    # (422 -> 113 when written); asking for 25% leaves a margin of ~3x
    assert np.all(np.isfinite(result.losses))
    assert after < 0.75 * before, (before, after)


def test_elbo_mean_over_keys_is_the_same_on_a_grid_or_a_tree():
    """The two Brownian paths give ELBOs of the same distribution: the means of many
    independent draws (one per series, every series the same) agree within standard errors."""
    n, ts = 2000, jnp.linspace(0.0, 1.0, 5)
    ys = jnp.broadcast_to(jnp.array([0.5, 0.2, -0.1, 0.3, 0.4])[None, :, None], (n, 5, 1))
    common = dict(context_size=2, hidden_size=8, obs_std=0.5, dt0=0.05, key=jax.random.key(0))
    grid = nde.LatentSDE(2, 1, **common)
    tree = nde.LatentSDE(2, 1, brownian="tree", **common)
    assert (grid.brownian, tree.brownian) == ("grid", "tree")

    @eqx.filter_jit
    def draws(model, key):
        loglik, kl0, kl_path = model.elbo_terms(ts, ys, None, key)
        return loglik - kl0 - kl_path, kl_path

    (e_grid, kl_grid), (e_tree, kl_tree) = (
        (np.asarray(x, np.float64) for x in draws(m, jax.random.key(k)))
        for m, k in ((grid, 1), (tree, 2))
    )
    for a, b in ((e_grid, e_tree), (kl_grid, kl_tree)):
        se = np.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)
        assert a.std() > 0 and b.std() > 0
    # the noise matters here: without it (a path KL of 0 std) the comparison would be empty
    assert kl_grid.std() > 0.05 * kl_grid.mean()


def test_saved_model_keeps_its_brownian_path_and_activation(tmp_path):
    model = nde.LatentSDE(2, 1, context_size=2, hidden_size=4, key=jax.random.key(0))
    nde.save(tmp_path / "m.eqx", model)
    loaded = nde.load(tmp_path / "m.eqx")  # a plain load: every part is named, none pickled
    assert loaded.brownian == "grid"
    assert loaded.diffusion.nets.activation is nde.models.latent_sde.softplus
    ts, ys = jnp.linspace(0.0, 1.0, 4), jnp.zeros((2, 4, 1))
    elbo = eqx.filter_jit(lambda m: m.elbo(ts, ys, None, jax.random.key(1)))
    assert float(elbo(loaded)) == float(elbo(model))


def test_joint_terms_solve_as_the_two_terms_do():
    """`JointTerms` (drift and diffusion from one evaluation, what the latent SDE's posterior
    solve uses) gives the same solution as `MultiTerm(ODETerm, ControlTerm)` with the same
    Brownian path, forwards and backwards in time, and the same gradient up to rounding."""
    import diffrax

    from neuraldiffeq.models.sde import JointTerms

    def fields(theta, t, y, args):
        g = 0.3 + 0.1 * jnp.tanh(theta[1] * y)
        return -theta[0] * y + jnp.sin(t) * g, g

    def solve(theta, joint, solver, t0, t1):
        bm = nde.GridBrownianPath(
            min(t0, t1),
            max(t0, t1),
            0.05,
            jax.ShapeDtypeStruct((3,), jnp.float32),
            jax.random.key(4),
        )
        drift = diffrax.ODETerm(lambda t, y, a: fields(theta, t, y, a)[0])
        diffusion = diffrax.ControlTerm(
            lambda t, y, a: lx.DiagonalLinearOperator(fields(theta, t, y, a)[1]), bm
        )
        both = lambda t, y, a: fields(theta, t, y, a)  # noqa: E731
        terms = JointTerms(drift, diffusion, both) if joint else diffrax.MultiTerm(drift, diffusion)
        dt0 = 0.05 if t1 > t0 else -0.05
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            t0,
            t1,
            dt0,
            jnp.array([1.0, -0.5, 0.2]),
            saveat=diffrax.SaveAt(ts=jnp.linspace(t0, t1, 5)),
        )
        return sol.ys

    def squared(theta, joint, solver, t0, t1):
        ys = solve(theta, joint, solver, t0, t1)
        return jnp.sum(ys**2), ys

    # Heun backwards in time: `vf` and `prod` (Euler's `vf_prod` is the latent SDE's own solve,
    # checked against finite differences in tests/test_sensitivity_matrix.py), time flipped
    theta, solver, (t0, t1) = jnp.array([0.7, 1.3]), diffrax.Heun(), (1.0, 0.0)
    (_, a), ga = jax.value_and_grad(squared, has_aux=True)(theta, True, solver, t0, t1)
    (_, b), gb = jax.value_and_grad(squared, has_aux=True)(theta, False, solver, t0, t1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(ga, gb, rtol=1e-5)
    assert np.all(np.abs(np.asarray(ga)) > 1e-3)
    # and the fields are evaluated together: the two terms' own fields are never called
    calls = []
    record = lambda name, value: calls.append(name) or value  # noqa: E731
    bm = nde.GridBrownianPath(0.0, 1.0, 0.1, jax.ShapeDtypeStruct((2,), jnp.float32), KEY)
    joint = JointTerms(
        diffrax.ODETerm(lambda t, y, a: record("drift", -y)),
        diffrax.ControlTerm(lambda t, y, a: record("diffusion", lx.DiagonalLinearOperator(y)), bm),
        lambda t, y, a: record("both", (-y, y)),
    )
    for solver in (diffrax.Euler(), diffrax.Heun()):
        step_all = ft.partial(diffrax.diffeqsolve, joint, solver, 0.0, 1.0, 0.1)
        jax.eval_shape(lambda y, f=step_all: f(y).ys, jnp.ones(2))
    assert "both" in calls and "drift" not in calls and "diffusion" not in calls, calls


KEY = jax.random.key(5)


def test_direct_keeps_every_step_of_the_posterior_solve_unless_told(monkeypatch):
    """`Direct()` gives the posterior solve as many checkpoints as it may take steps (none
    recomputed in the backward pass); `Direct(checkpoints=k)` is honoured."""
    used = []
    solve = nde.SolveConfig.diffeqsolve

    def recording(self, terms, t0, t1, *args, **kwargs):
        used.append((self.sensitivity, self.steps_for(t0, t1)))
        return solve(self, terms, t0, t1, *args, **kwargs)

    monkeypatch.setattr(nde.SolveConfig, "diffeqsolve", recording)
    ts, ys = jnp.linspace(0.0, 1.0, 6), jnp.zeros((2, 6, 1))
    common = dict(context_size=2, hidden_size=4, dt0=0.05, key=jax.random.key(0))
    for sensitivity in (nde.Direct(), nde.Direct(checkpoints=3)):
        model = nde.LatentSDE(1, 1, sensitivity=sensitivity, **common)
        eqx.filter_eval_shape(lambda m: m.elbo(ts, ys, None, KEY), model)  # traced only
        (direct, steps) = used[-1]
        assert isinstance(direct, nde.Direct) and steps > 20  # the bound of 20 steps or more
        assert direct.checkpoints == (steps if sensitivity.checkpoints is None else 3)
