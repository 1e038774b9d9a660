"""NeuralODE.batched: the values and gradients of jax.vmap of the model, failures per sample."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.solve.batched import MIN_ROWS, solve_batched


class Field(eqx.Module):
    """dy/dt = -k * y + 0.1 * mlp(y): each sample's rate k sets how many steps it needs."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, k):
        return -k * y + 0.1 * self.mlp(y)


def problem(batch: int):
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(Field(mlp), "tsit5", rtol=1e-5, atol=1e-5, sensitivity=nde.Direct())
    k = jnp.asarray(np.geomspace(0.1, 60.0, batch), jnp.float32)  # 10 to ~200 steps
    y0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, 2)), jnp.float32)
    return model, jnp.linspace(0.0, 3.0, 6), y0, k


def same_as_vmap(model, ts, y0, k):
    """Values and weight gradients of model.batched and of jax.vmap of the model (jitted)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, batched):
        m = eqx.combine(p, static)
        ys = m.batched(ts, y0, k) if batched else jax.vmap(m, in_axes=(None, 0, 0))(ts, y0, k)
        finite = jnp.where(jnp.isfinite(ys), ys, 0.0)
        return jnp.sum(finite**2), ys

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (value, ys), grads = grad(params, True)
    (ref_value, ref_ys), ref_grads = grad(params, False)
    # The same steps on each sample; only rounding differs (a kernel may sum in another
    # order for another number of rows), which the solve may amplify a little.
    np.testing.assert_allclose(ys, ref_ys, rtol=5e-5, atol=1e-6)
    np.testing.assert_allclose(value, ref_value, rtol=5e-5)
    for g, r in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(r))))
    return ys


class Linear(eqx.Module):
    """dy/dt = -k * (W y): a weight matrix shared by the batch, a rate per sample."""

    w: jax.Array

    def __call__(self, t, y, k):
        return -k * (self.w @ y)


def linear_problem():
    # 17 rows: a loop over all of them, then one over the 9 (of 16 rows) still going
    w = jnp.array([[1.0, 0.3], [-0.2, 0.8]])
    model = nde.NeuralODE(Linear(w), rtol=1e-6, atol=1e-6, max_steps=60, sensitivity=nde.Direct())
    k = jnp.asarray(np.append(np.geomspace(0.05, 30.0, MIN_ROWS), 5000.0), jnp.float32)
    return model, jnp.linspace(0.0, 1.0, 4), jnp.ones((MIN_ROWS + 1, 2)), k


def test_batched_gives_vmaps_values_and_failures():
    model, ts, y0, k = linear_problem()
    ys = eqx.filter_jit(model.batched)(ts, y0, k)
    ref = eqx.filter_jit(lambda m, *a: jax.vmap(m, in_axes=(None, 0, 0))(*a))(model, ts, y0, k)
    np.testing.assert_allclose(ys, ref, rtol=5e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isinf(ys[-1])))  # the stiffest sample ran out of steps, as under vmap
    assert bool(jnp.all(jnp.isfinite(ys[:-1])))


@pytest.mark.long
def test_batched_gives_vmaps_gradients_and_failures():
    ys = same_as_vmap(*linear_problem())
    assert bool(jnp.all(jnp.isinf(ys[-1])))


@pytest.mark.long
def test_batched_network_field_over_three_shrinking_loops():
    batch = 3 * MIN_ROWS  # three loops: 48 rows, 24, then 16
    model, ts, y0, k = problem(batch)
    steps = jax.vmap(lambda y, a: model.solve(ts, y, a).stats["num_steps"])(y0, k)
    assert int(steps.max()) > 5 * int(steps.min())  # the rows finish at very different times
    same_as_vmap(model, ts, y0, k)


@pytest.mark.parametrize(
    "settings, kwargs, match",
    [
        (dict(solver="kvaerno5", sensitivity=nde.Direct()), {}, "explicit Runge-Kutta"),
        (dict(sensitivity=nde.Backsolve()), {}, "Direct"),
        (dict(sensitivity=nde.Direct()), dict(args_axis=1), "args_axis"),
    ],
)
def test_batched_refuses_what_it_cannot_do_the_same_way(settings, kwargs, match):
    model = nde.NeuralODE(lambda t, y, k: -k * y, **settings)
    with pytest.raises(ValueError, match=match):
        model.batched(jnp.linspace(0.0, 1.0, 3), jnp.ones((2, 1)), jnp.ones(2), **kwargs)


def test_solve_batched_refuses_a_bad_shrink_and_backward_times():
    term = lambda t, y, k: -k * y  # noqa: E731
    common = (diffrax.Tsit5(), diffrax.PIDController(1e-4, 1e-4), nde.Direct())
    with pytest.raises(ValueError, match="shrink"):
        solve_batched(term, *common, jnp.array([0.0, 1.0]), jnp.ones((2, 1)), shrink=1, max_steps=8)
    with pytest.raises(ValueError, match="increasing"):
        solve_batched(term, *common, jnp.array([1.0, 0.0]), jnp.ones((2, 1)), max_steps=8)
