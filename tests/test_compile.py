"""`nde.compiler_options`: the XLA options fit compiles with change speed, never results."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import neuraldiffeq as nde


def test_cpu_options_are_the_ynnpack_workaround():
    options = nde.compiler_options()
    if jax.default_backend() == "cpu":
        assert options == {
            "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
        }
    else:
        assert options is None


def test_batched_gradient_is_identical_with_and_without_options():
    # The reductions over a batch in a backward pass are what the options move off YNNPACK.
    mlp = eqx.nn.MLP(3, 2, 32, 2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (100, 3))

    def loss(model, x):
        return jnp.sum(jnp.tanh(jax.vmap(model)(x)) ** 2)

    grad = eqx.filter_grad(loss)
    plain = eqx.filter_jit(grad)(mlp, x)
    tuned = eqx.filter_jit(grad, compiler_options=nde.compiler_options())(mlp, x)
    for a, b in zip(
        jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(tuned), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_only_batched_strategies_ask_for_the_options():
    assert nde.MaximumLikelihood(batch_size=8).compiler_options == nde.compiler_options()
    assert nde.Trajectory().compiler_options is None
