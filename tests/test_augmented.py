"""AugmentedNeuralODE: shapes, validation, and the 1-D crossing problem a plain ODE cannot fit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def make(dim, augment_dim, key):
    width = dim + augment_dim
    mlp = eqx.nn.MLP(width, width, 16, 1, activation=jnp.tanh, key=key)
    node = nde.NeuralODE(nde.autonomous(mlp), sensitivity=nde.Direct())
    return nde.AugmentedNeuralODE(node, augment_dim)


def test_shapes_and_zero_augmentation():
    model = make(2, 3, jax.random.key(0))
    ys = model(jnp.linspace(0, 1, 4), jnp.array([1.0, 2.0]))
    assert ys.shape == (4, 5)
    np.testing.assert_allclose(np.asarray(ys[0]), [1.0, 2.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        np.asarray(model.final(jnp.array([1.0, 2.0]))), np.asarray(ys[-1]), rtol=1e-4, atol=1e-5
    )
    assert jax.vmap(model.final)(jnp.ones((7, 2))).shape == (7, 5)


def crossing_losses(seed: int = 1) -> tuple[float, float]:
    """Dupont et al.'s g(x) = -x after 300 Adam steps: (plain 1-D loss, augmented loss)."""
    x = jnp.array([-1.0, 1.0])
    target = -x

    def train(augment_dim):
        model = make(1, augment_dim, jax.random.key(seed))
        readout = jnp.zeros(1 + augment_dim).at[0].set(1.0)  # read the original coordinate
        opt = optax.adam(3e-2)

        def loss(m):
            out = jax.vmap(lambda v: m.final(v[None], t1=1.0) @ readout)(x)
            return jnp.mean((out - target) ** 2)

        params, static = eqx.partition(model, eqx.is_inexact_array)

        @jax.jit
        def run(params):  # 300 Adam steps in one compiled scan
            def step(carry, _):
                p, state = carry
                value, g = jax.value_and_grad(lambda p: loss(eqx.combine(p, static)))(p)
                updates, state = opt.update(g, state)
                return (optax.apply_updates(p, updates), state), value

            # a 301st step's value is the loss after 300 updates: the program traces and
            # compiles one solve (under value_and_grad), not a second one for the loss
            _, values = jax.lax.scan(step, (params, opt.init(params)), length=301)
            return values[-1]

        return float(run(params))

    return train(0), train(1)


def test_plain_ode_cannot_cross_augmented_can():
    """In 1-D the flow cannot swap -1 and 1, with one more dimension it can."""
    plain, augmented = crossing_losses(seed=1)
    # the 1-D flow is monotone: the best it can do maps both points to 0 (loss 1)
    assert plain > 0.9
    assert augmented < 0.05


def test_bad_arguments():
    node = nde.NeuralODE(lambda t, y, args: -y)
    with pytest.raises(ValueError, match="augment_dim"):
        nde.AugmentedNeuralODE(node, -1)
    with pytest.raises(ValueError, match="node"):
        nde.AugmentedNeuralODE(3, 1)
    with pytest.raises(ValueError, match="already an nde.NeuralODE"):  # settings go on the node
        nde.AugmentedNeuralODE(node, 1, rtol=1e-5)
    # a field takes the solve settings here
    from_field = nde.AugmentedNeuralODE(lambda t, y, a: -y, 1, rtol=1e-5, sensitivity="direct")
    assert from_field.node.rtol == 1e-5 and isinstance(from_field.node.sensitivity, nde.Direct)
    with pytest.raises(ValueError, match="y0"):
        nde.AugmentedNeuralODE(node, 1)(jnp.linspace(0, 1, 3), jnp.ones((2, 2)))
