"""Conditioned and convolutional FFJORD fields (issue #16): shapes, normalisation, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde


def test_conv_layer_shapes_and_time_conditioning():
    layer = nde.ConcatSquashConv(2, 5, kernel_size=3, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 7))
    out0, out1 = layer(0.0, x), layer(1.0, x)
    assert out0.shape == (5, 6, 7)  # "same" padding keeps the image size
    assert layer.gate.weight.shape == (5, 1) and layer.shift.weight.shape == (5, 1)
    # the time enters as a per-channel gate and shift: out(t) = conv(x) g_c(t) + s_c(t)
    conv = layer.conv(x)
    for t, out in ((0.0, out0), (1.0, out1)):
        tt = jnp.array([t])
        expected = (
            conv * jax.nn.sigmoid(layer.gate(tt))[:, None, None] + layer.shift(tt)[:, None, None]
        )
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(out0 - out1))) > 1e-3
    # with a context, the gate sees (t, c): other contexts give other outputs
    cond = nde.ConcatSquashConv(2, 5, context_size=3, key=jax.random.key(0))
    assert cond.gate.weight.shape == (5, 4)
    a = cond(0.5, x, jnp.zeros(3))
    b = cond(0.5, x, jnp.ones(3))
    assert a.shape == (5, 6, 7) and float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_conv_field_on_flattened_images():
    field = nde.ConcatSquashConvNet((1, 5, 5), channels=(3, 3), key=jax.random.key(0))
    assert field.in_size == 25
    z = jax.random.normal(jax.random.key(1), (25,))
    assert field(0.3, z, None).shape == (25,)
    # local: three 3x3 layers see 3 pixels away, so pixel (0, 0) sees (3, 3) but not (4, 4)
    jac = jax.jacfwd(lambda z: field(0.3, z, None))(z)
    assert jac.shape == (25, 25)
    assert float(jnp.abs(jac[0, 24])) == 0.0 and float(jnp.abs(jac[0, 18])) > 0.0
    assert nde.FFJORD(field).dim == 25  # the flow reads the data dimension from the field


@pytest.mark.slow
def test_conditioned_flow_density_integrates_to_one(x64):
    field = nde.ConcatSquashMLP(2, (16, 16), jnp.tanh, context_size=3, key=jax.random.key(0))
    # a strong field, so the density is far from the standard normal
    field = jax.tree_util.tree_map(lambda w: 3 * w if w.ndim == 2 else w, field)
    flow = nde.FFJORD(field, t1=1.0, trace="exact", rtol=1e-7, atol=1e-7)
    side = np.linspace(-7.0, 7.0, 71)
    h = side[1] - side[0]
    grid = np.stack(np.meshgrid(side, side), -1).reshape(-1, 2)
    log_prob = jax.jit(lambda flow, x, c: flow.log_prob(x, context=c))
    densities = []
    for c in (np.zeros(3), np.array([1.5, -1.0, 2.0])):
        context = np.broadcast_to(c, (len(grid), 3))
        logp = log_prob(flow, jnp.asarray(grid), jnp.asarray(context))
        density = np.exp(np.asarray(logp))
        assert abs(density.sum() * h * h - 1.0) < 5e-3
        densities.append(density)
    # the context changes the density (a flow that ignored it would fail here)
    assert np.max(np.abs(densities[0] - densities[1])) > 1e-2
    # and the standard normal is not what was learned
    normal = np.exp(-0.5 * np.sum(grid**2, 1)) / (2 * np.pi)
    assert np.max(np.abs(densities[0] - normal)) > 1e-2
    # forward_and_logdet is the same change of variables: log N(z(t1)) + logdet = log p(x)
    x, context = jnp.asarray(grid[:2000:97]), jnp.ones((21, 3))
    z, logdet = flow.forward_and_logdet(x, context=context)
    normal_logp = -0.5 * jnp.sum(z**2, 1) - jnp.log(2 * jnp.pi)
    np.testing.assert_allclose(normal_logp + logdet, log_prob(flow, x, context), rtol=1e-7)
    np.testing.assert_allclose(z, flow.forward(x, context=context), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_conv_flow_gradient_matches_finite_differences(x64):
    field = nde.ConcatSquashConvNet((1, 3, 3), channels=(2,), key=jax.random.key(0))
    # constant steps: the finite differences see the same discretisation as the gradient; a
    # fixed Hutchinson probe makes the log-density a deterministic function of the weights
    flow = nde.FFJORD(field, t1=0.5, solver="tsit5", dt0=0.1, rtol=None, atol=None)
    x = jax.random.normal(jax.random.key(1), (4, 9))
    probe_key = jax.random.key(2)
    params, static = eqx_partition(flow)
    direction = jax.tree_util.tree_map(
        lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params
    )

    @jax.jit
    def loss(p):
        return -jnp.mean(combine(p, static).log_prob(x, probe_key))

    grad = jax.jit(jax.grad(loss))(params)
    analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction), strict=True
        )
    )
    eps = 1e-5
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)  # noqa: E731
    numeric = (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)
    assert abs(float(analytic) - float(numeric)) < 1e-6 * max(1.0, abs(float(numeric)))
    assert abs(float(analytic)) > 1e-3


def eqx_partition(model):
    import equinox as eqx

    return eqx.partition(model, eqx.is_inexact_array)


def combine(params, static):
    import equinox as eqx

    return eqx.combine(params, static)


def test_preprocess_logdet_and_bits_per_dim():
    from neuraldiffeq.demos.ffjord_digits import LEVELS, Preprocess, bits_per_dim

    rng = np.random.default_rng(0)
    pre = Preprocess(rng.normal(size=4), rng.uniform(0.5, 2.0, size=4))
    x = rng.uniform(size=(3, 4))
    y, logdet = pre(x)
    h = 1e-6  # the map is elementwise: log|det| is the sum of the log-derivatives
    numeric = np.sum(np.log((pre(x + h)[0] - pre(x - h)[0]) / (2 * h)), 1)
    np.testing.assert_allclose(logdet, numeric, rtol=1e-6)
    np.testing.assert_allclose(pre.invert(y), x, atol=1e-9)
    # a uniform density on [0, 1]^D (-log p(x) = 0) is log2(17) bits per dimension
    assert bits_per_dim(nll_y=1.5, mean_logdet=1.5, dim=4) == pytest.approx(np.log2(LEVELS))


def test_bad_inputs_name_the_argument():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="kernel_size"):
        nde.ConcatSquashConv(1, 4, kernel_size=2, key=key)
    with pytest.raises(ValueError, match="out_channels"):
        nde.ConcatSquashConv(1, 0, key=key)
    with pytest.raises(ValueError, match="image_shape"):
        nde.ConcatSquashConvNet((8, 8), key=key)
    with pytest.raises(ValueError, match="channels"):
        nde.ConcatSquashConvNet((1, 8, 8), channels=(0,), key=key)
    with pytest.raises(ValueError, match="context_size"):
        nde.ConcatSquashMLP(2, (4,), context_size=-1, key=key)
    field = nde.ConcatSquashConvNet((1, 4, 4), channels=(2,), key=key)
    with pytest.raises(ValueError, match="z must be a flattened image"):
        field(0.0, jnp.zeros(15), None)
    cond = nde.ConcatSquashMLP(2, (4,), context_size=3, key=key)
    with pytest.raises(ValueError, match="context"):
        cond(0.0, jnp.zeros(2), None)
    flow = nde.FFJORD(cond, trace="exact")
    with pytest.raises(ValueError, match="context must have shape"):
        flow.log_prob(jnp.zeros((4, 2)), context=jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="context contains NaN"):
        flow.forward(jnp.zeros((1, 2)), context=jnp.full((1, 3), jnp.nan))
