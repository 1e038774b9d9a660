"""ODEBlock: values and gradients vs a fine fixed-step reference, sensitivities, NFE, in a model."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde


class Field(eqx.Module):
    """A small time-dependent field: f(t, y) = tanh(W2 tanh(W1 [y, t] + b1)) scaled."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args=None):
        return self.mlp(jnp.concatenate([y, jnp.reshape(t, (1,)).astype(y.dtype)]))


def make_field():
    return Field(eqx.nn.MLP(4, 3, 8, 1, activation=jnp.tanh, key=jax.random.key(0)))


def reference(field, y0, t1=1.0):
    """Tsit5 with 400 constant steps (error ~ h^5 ~ 1e-13), backpropagated through every step."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        0.0,
        t1,
        t1 / 400,
        y0,
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=400,
    )
    return sol.ys[-1]


@pytest.mark.long  # the sensitivity matrix checks ODEBlock's gradient by default
def test_output_and_gradients_match_fine_fixed_step_reference_float64():
    with jax.enable_x64(True):
        field = make_field()
        y0 = jnp.array([0.5, -1.0, 2.0])
        assert field.mlp.layers[0].weight.dtype == jnp.float64

        def loss(f, block_of):
            return jnp.sum(block_of(f)(y0) ** 2)

        ref_val, ref_grad = eqx.filter_jit(
            eqx.filter_value_and_grad(lambda f: jnp.sum(reference(f, y0) ** 2))
        )(field)
        results = {}
        for name, sens in (("direct", nde.Direct()), ("backsolve", nde.Backsolve())):

            def block_of(f, sens=sens):
                return nde.ODEBlock(f, t1=1.0, rtol=1e-10, atol=1e-10, sensitivity=sens)

            val, grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda f: loss(f, block_of)))(
                field
            )
            results[name] = grad
            np.testing.assert_allclose(float(val), float(ref_val), rtol=1e-9)
            for a, b in zip(
                jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad), strict=True
            ):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
        # Backsolve and Direct agree with each other too (continuous vs discrete adjoint)
        for a, b in zip(
            jax.tree_util.tree_leaves(results["direct"]),
            jax.tree_util.tree_leaves(results["backsolve"]),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_gradient_matches_central_finite_differences_float64():
    with jax.enable_x64(True):
        field = make_field()
        y0 = jnp.array([0.5, -1.0, 2.0])

        # one compiled program gives the gradient and the six finite-difference values
        @jax.jit
        @jax.value_and_grad
        def value_and_grad(w):
            g = eqx.tree_at(lambda f: f.mlp.layers[1].weight, field, w)
            block = nde.ODEBlock(g, rtol=1e-10, atol=1e-10, sensitivity=nde.Backsolve())
            return jnp.sum(jnp.sin(block(y0)))

        def f(w):
            return value_and_grad(w)[0]

        w = field.mlp.layers[1].weight
        grad = value_and_grad(w)[1]
        for idx in [(0, 0), (1, 5), (2, 7)]:
            e = jnp.zeros_like(w).at[idx].set(1e-6)
            fd = (f(w + e) - f(w - e)) / 2e-6
            np.testing.assert_allclose(float(grad[idx]), float(fd), rtol=1e-6, atol=1e-9)


def test_nfe_counts_every_field_evaluation():
    calls = []

    class Counting(eqx.Module):
        inner: Field

        def __call__(self, t, y, args=None):
            jax.debug.callback(lambda t: calls.append(1), t)
            return self.inner(t, y, args)

    y0 = jnp.array([0.5, -1.0, 2.0])
    for solver, rtol in (("tsit5", 1e-6), ("bosh3", 1e-4)):
        block = nde.ODEBlock(Counting(make_field()), t1=3.0, solver=solver, rtol=rtol, atol=rtol)
        calls.clear()
        jax.block_until_ready(block(y0))
        counted = len(calls)
        calls.clear()
        nfe = int(block.nfe(y0))
        assert nfe == counted, (solver, rtol, nfe, counted)
    # tighter tolerances need more evaluations; nfe works under vmap (one count per example)
    loose = nde.ODEBlock(make_field(), t1=3.0, rtol=1e-2, atol=1e-2)
    tight = nde.ODEBlock(make_field(), t1=3.0, rtol=1e-8, atol=1e-8)
    counts = jax.vmap(tight.nfe)(jnp.stack([y0, 2 * y0]))
    assert counts.shape == (2,)
    assert int(counts[0]) > 2 * int(loose.nfe(y0))


def test_odeblock_inside_a_conv_model_under_vmap_and_grad():
    class ConvField(eqx.Module):
        conv: eqx.nn.Conv2d

        def __call__(self, t, x, args=None):
            return jnp.tanh(self.conv(x))

    class Net(eqx.Module):
        block: nde.ODEBlock
        fc: eqx.nn.Linear

        def __call__(self, x):
            return self.fc(jnp.mean(self.block(x), axis=(1, 2)))

    k1, k2 = jax.random.split(jax.random.key(0))
    net = Net(
        nde.ODEBlock(
            ConvField(eqx.nn.Conv2d(4, 4, 3, padding=1, key=k1)), sensitivity=nde.Backsolve()
        ),
        eqx.nn.Linear(4, 3, key=k2),
    )
    x = jax.random.normal(jax.random.key(1), (5, 4, 6, 6))

    # one compiled program: the batched output comes back as the loss's aux
    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(net):
        out = jax.vmap(net)(x)
        return jnp.sum(out**2), out

    (value, out), grads = loss(net)
    assert out.shape == (5, 3)
    g = grads.block.node.field.conv.weight
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="t1"):
        nde.ODEBlock(make_field(), t1=0.0)
    with pytest.raises(ValueError, match="field"):
        nde.ODEBlock("not a field")
    with pytest.raises(ValueError, match="sensitivity"):
        nde.ODEBlock(make_field(), sensitivity="magic")
