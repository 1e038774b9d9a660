"""nde.VAE and nde.PlanarFlow (issue #16): log-determinants, bounds, training, validation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def test_planar_logdet_matches_jacobian_determinant(x64):
    flow = nde.PlanarFlow(3, n_layers=4)
    context = 1.5 * jax.random.normal(jax.random.key(0), (5, flow.context_size))
    z = jax.random.normal(jax.random.key(1), (5, 3))
    out, logdet = flow.forward_and_logdet(z, context=context)
    one = lambda zi, ci: flow.forward_and_logdet(zi[None], context=ci[None])[0][0]  # noqa: E731
    jacs = jax.jit(jax.vmap(jax.jacfwd(one)))(z, context)
    for i in range(5):
        sign, expected = jnp.linalg.slogdet(jacs[i])
        assert float(sign) > 0  # û keeps every map orientation-preserving (invertible)
        assert float(logdet[i]) == pytest.approx(float(expected), rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(one(z[i], context[i]), out[i])
    assert float(jnp.max(jnp.abs(logdet))) > 1e-2  # not the identity


def _patterns(n, key):
    """Binary 16-pixel images: two prototypes with 10% of pixels flipped."""
    protos = jnp.array([[1.0] * 8 + [0.0] * 8, [0.0, 1.0] * 8])
    k1, k2 = jax.random.split(key)
    which = jax.random.bernoulli(k1, 0.5, (n,)).astype(int)
    flip = jax.random.bernoulli(k2, 0.1, (n, 16))
    return jnp.where(flip, 1.0 - protos[which], protos[which])


def test_vae_elbo_gradient_matches_finite_differences(x64):
    vae = nde.VAE(16, 2, nde.PlanarFlow(2, 2), hidden=(8,), key=jax.random.key(0))
    x = _patterns(6, jax.random.key(1))
    key = jax.random.key(2)  # fixed: the ELBO is then a deterministic function of the weights
    params, static = eqx.partition(vae, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) / np.sqrt(p.size), params)

    @jax.jit
    def loss(p):
        return -jnp.mean(eqx.combine(p, static).elbo(x, key))

    grad = jax.jit(jax.grad(loss))(params)
    analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction), strict=True
        )
    )
    eps = 1e-6
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)  # noqa: E731
    numeric = (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-6, abs=1e-8)
    assert abs(float(analytic)) > 1e-3


@pytest.mark.slow
def test_importance_weighted_bound_is_above_the_elbo():
    field = nde.ConcatSquashMLP(2, (8,), jnp.tanh, context_size=3, key=jax.random.key(5))
    flow = nde.FFJORD(field, t1=0.5, trace="exact", rtol=1e-3, atol=1e-3)
    vae = nde.VAE(16, 2, flow, hidden=(16,), key=jax.random.key(0))
    assert vae.context_size == 3
    # a decoder that depends strongly on z, so the untrained posterior is a poor proposal
    strong = jax.tree_util.tree_map(lambda w: 4 * w if eqx.is_array(w) else w, vae.decoder)
    vae = eqx.tree_at(lambda v: v.decoder, vae, strong)
    x = _patterns(4, jax.random.key(1))
    # 50 ELBO samples per row in one solve: the rows repeated 50 times
    elbo = jnp.mean(vae.elbo(jnp.tile(x, (50, 1)), jax.random.key(0)).reshape(50, 4), 0)
    iw = vae.iw_log_likelihood(x, jax.random.key(99), k=200)
    # E[IW_k] >= ELBO, with a gap of 1.7-9 nats here
    assert bool(jnp.all(iw > elbo + 0.5)), (iw, elbo)
    # with k = 1 the importance-weighted estimate is the one-sample ELBO itself
    np.testing.assert_allclose(
        vae.iw_log_likelihood(x, jax.random.key(7), k=1), vae.elbo(x, jax.random.key(7)), rtol=1e-6
    )


@pytest.mark.slow
def test_tiny_vae_fit_improves_the_elbo():
    data = _patterns(256, jax.random.key(0))
    test = _patterns(128, jax.random.key(1))
    vae = nde.VAE(16, 2, nde.PlanarFlow(2, 2), hidden=(32,), key=jax.random.key(2))

    @eqx.filter_jit
    def test_elbo(model):
        return jnp.mean(model.elbo(test, jax.random.key(3)))

    before = float(test_elbo(vae))
    result = nde.fit(
        vae,
        data,
        nde.ELBO(batch_size=64),
        optimizer=optax.adam(1e-2),
        steps=150,
        steps_per_call=50,
        progress=False,
    )
    after = float(test_elbo(result.model))
    # the two prototypes + 10% flips: log p(x) ≈ -(log 2 + 16 H(0.1)) = -6.1 nats at best,
    # while the untrained model is near 16 log 2 = 11.1
    assert before < -10.0
    assert after > before + 3.0, (before, after)
    assert result.skipped == 0


def test_bad_inputs_name_the_argument():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="latent_size"):
        nde.VAE(16, 0, key=key)
    with pytest.raises(ValueError, match="n_layers"):
        nde.PlanarFlow(2, n_layers=0)
    with pytest.raises(ValueError, match="flow must be"):
        nde.VAE(16, 2, flow="planar", key=key)
    with pytest.raises(ValueError, match="latent_size is 2"):
        nde.VAE(16, 2, nde.PlanarFlow(3), key=key)
    with pytest.raises(ValueError, match="likelihood"):
        nde.VAE(16, 2, likelihood="gaussian", key=key)
    vae = nde.VAE(16, 2, hidden=(8,), key=key)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16\)"):
        vae.elbo(jnp.zeros((3, 15)), key)
    with pytest.raises(ValueError, match=r"x must hold Bernoulli targets in \[0, 1\]"):
        vae.elbo(jnp.full((3, 16), 2.0), key)
    with pytest.raises(ValueError, match="key"):
        vae.elbo(jnp.zeros((3, 16)))
    with pytest.raises(ValueError, match="k "):
        vae.iw_log_likelihood(jnp.zeros((3, 16)), key, k=0)
    with pytest.raises(ValueError, match="context must have shape"):
        nde.PlanarFlow(2, 1).forward_and_logdet(jnp.zeros((3, 2)), context=jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\) samples"):
        nde.ELBO().prepare(vae, np.zeros((2, 3, 16)))
    with pytest.raises(ValueError, match="elbo"):
        nde.ELBO().prepare(nde.NeuralODE(lambda t, y, a: -y), np.zeros((4, 16)))
    with pytest.raises(ValueError, match="fails on samples"):
        nde.ELBO().prepare(vae, np.zeros((4, 15)))
