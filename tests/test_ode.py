import functools

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

import neuraldiffeq as nde

A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def linear(t, y, args):
    return jnp.asarray(A, y.dtype) @ y


@pytest.mark.parametrize(
    "solver, kwargs, tol",
    [
        ("tsit5", {}, 1e-6),
        ("dopri5", {}, 1e-6),
        ("dopri8", {}, 1e-6),
        ("bosh3", {}, 1e-5),
        ("kvaerno5", {}, 1e-5),
        ("euler", {"dt0": 1e-3}, 5e-3),
    ],
)
def test_solvers_match_matrix_exponential(solver, kwargs, tol):
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 2.0, 9)
        y0 = jnp.array([1.0, 0.5])
        # dt0 alone means constant steps; tolerances would make Euler refuse (no error estimate)
        steps = kwargs or dict(rtol=1e-9, atol=1e-9)
        model = nde.NeuralODE(linear, solver, **steps)
        ys = np.asarray(model(ts, y0))
    exact = np.stack([expm(A * t) @ np.array([1.0, 0.5]) for t in np.asarray(ts)])
    np.testing.assert_allclose(ys, exact, atol=tol, rtol=0)


class Field(eqx.Module):
    """A non-trivial field: an MLP of (y, y**3) plus a learnable linear part."""

    mlp: eqx.nn.MLP
    a: jax.Array

    def __call__(self, t, y, args):
        return self.mlp(jnp.concatenate([y, y**3])) + self.a @ y * jnp.cos(t)


def central_difference(f, h=1e-3):
    """Fourth-order central difference of f at 0. A wide step keeps the adaptive solver's
    tolerance-sized jumps (step counts changing with the parameters) far below the tolerance."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def _loss(model, y0, ts, weights):
    return jnp.sum(weights * model(ts, y0) ** 2)


@pytest.mark.parametrize(
    "sensitivity, rtol_solver, tol",
    [
        (nde.Direct(), 1e-12, 1e-6),
        (nde.Forward(), 1e-12, 1e-6),
        (nde.Backsolve(), 1e-10, 1e-4),
        (nde.Interpolating(), 1e-10, 1e-4),
        (nde.Quadrature(), 1e-10, 1e-4),
    ],
    ids=["direct", "forward", "backsolve", "interpolating", "quadrature"],
)
def test_gradients_match_finite_differences(sensitivity, rtol_solver, tol):
    with jax.enable_x64(True):
        key1, key2, key3, key4 = jax.random.split(jax.random.key(0), 4)
        mlp = eqx.nn.MLP(4, 2, 8, 1, activation=jnp.tanh, key=key1)
        field = Field(mlp, 0.3 * jax.random.normal(key2, (2, 2)))
        field = jax.tree_util.tree_map(
            lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field
        )
        model = nde.NeuralODE(
            field, "dopri8", rtol=rtol_solver, atol=rtol_solver, sensitivity=sensitivity
        )
        ts = jnp.linspace(0.0, 1.5, 7)
        y0 = jnp.array([1.0, -0.5])
        weights = jax.random.uniform(key3, (7, 2))
        params, static = eqx.partition(model, eqx.is_inexact_array)
        flat, unravel = jax.flatten_util.ravel_pytree(params)

        # one compiled program gives the gradient and the twelve finite-difference values
        @jax.jit
        @functools.partial(jax.value_and_grad, argnums=(0, 1))
        def value_and_grad(flat, y0):
            return _loss(eqx.combine(unravel(flat), static), y0, ts, weights)

        _, (g_flat, grad_y0) = value_and_grad(flat, y0)
        direction = jax.random.normal(key4, flat.shape)
        direction = direction / jnp.linalg.norm(direction)

        def loss_at(flat, y0):
            return value_and_grad(flat, y0)[0]

        fd = central_difference(lambda eps: loss_at(flat + eps * direction, y0))
        assert abs(fd - g_flat @ direction) <= tol * abs(fd), (fd, g_flat @ direction)

        for i in range(2):
            unit = jnp.zeros(2).at[i].set(1.0)
            fd_y0 = central_difference(lambda e, u=unit: loss_at(flat, y0 + e * u))
            assert abs(fd_y0 - grad_y0[i]) <= tol * max(abs(fd_y0), 1e-3), (fd_y0, grad_y0[i])


@pytest.mark.parametrize(
    "sensitivity",
    [nde.Direct()]
    + [  # args through each adjoint: long tier (parameters and y0: the test above, default run)
        pytest.param(s, marks=pytest.mark.long)
        for s in (nde.Forward(), nde.Backsolve(), nde.Interpolating(), nde.Quadrature())
    ],
    ids=["direct", "forward", "backsolve", "interpolating", "quadrature"],
)
def test_gradient_wrt_args_and_python_floats(sensitivity):
    # y' = a y: y(t) = e^{a t}; d/da sum_i y(t_i) = sum_i t_i e^{a t_i}.
    model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-7, atol=1e-7, sensitivity=sensitivity)
    ts = jnp.array([0.0, 0.5, 1.0, 2.0])
    exact = float(jnp.sum(ts * jnp.exp(-ts)))
    for a in (-1.0, jnp.array(-1.0)):  # a weakly typed Python float must not lose its gradient
        grad = jax.grad(lambda a: model(ts, jnp.ones(1), a).sum())(a)
        assert abs(float(grad) - exact) < 1e-4, (type(a), float(grad), exact)


def test_auto_sensitivity_follows_sciml_rule():
    assert isinstance(nde.resolve_sensitivity("auto", 2, 50), nde.Forward)
    assert isinstance(nde.resolve_sensitivity("auto", 2, 252), nde.Direct)
    assert isinstance(nde.resolve_sensitivity("backsolve", 2, 5), nde.Backsolve)


def test_autonomous_and_batching_by_vmap():
    mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))
    ts = jnp.linspace(0, 1, 5)
    y0s = jnp.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    batch = jax.vmap(lambda y0: model(ts, y0))(y0s)
    assert batch.shape == (3, 5, 2)
    np.testing.assert_allclose(batch[1], model(ts, y0s[1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch[:, 0], y0s)


def test_solve_exposes_statistics():
    model = nde.NeuralODE(linear, "tsit5", rtol=1e-8, atol=1e-8)
    sol = model.solve(jnp.linspace(0.0, 2.0, 5), jnp.array([1.0, 0.0]))
    assert int(sol.stats["num_steps"]) > 5
    assert sol.ys.shape == (5, 2)


def test_solver_failure_is_inf_compiled_and_an_error_called_directly():
    model = nde.NeuralODE(linear, "tsit5", rtol=1e-10, atol=1e-10, max_steps=3)
    ts, y0 = jnp.linspace(0.0, 2.0, 5), jnp.array([1.0, 0.0])
    ys = jax.jit(lambda y: model(ts, y))(y0)  # inside compiled code (fit): inf, no exception
    assert not np.all(np.isfinite(np.asarray(ys)))
    with pytest.raises(nde.SolveError, match="max_steps=3 "):  # called directly: why
        model(ts, y0)
    with pytest.raises(nde.SolveError, match="max_steps=3 "):
        model.solve(ts, y0, throw=True)
    assert not np.all(np.isfinite(np.asarray(model.solve(ts, y0).ys)))  # solve: no raise


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"solver": "tsit6"}, "unknown solver 'tsit6'. Did you mean 'tsit5'.*Valid names: "),
        ({"solver": "euler"}, "pass dt0"),
        ({"rtol": -1.0}, "rtol must be a positive"),
        ({"atol": float("nan")}, "atol must be a positive"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"sensitivity": "adjoint"}, "unknown sensitivity 'adjoint'"),
        ({"solver": 3}, "solver must be a solver name"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nde.NeuralODE(linear, **kwargs)


def test_bad_call_arguments():
    model = nde.NeuralODE(linear)
    with pytest.raises(ValueError, match="ts must be strictly increasing"):
        model(jnp.array([0.0, 1.0, 0.5]), jnp.ones(2))
    with pytest.raises(ValueError, match="ts must be a 1-D array of at least 2 times"):
        model(jnp.array([0.0]), jnp.ones(2))
    with pytest.raises(ValueError, match="field must be callable"):
        nde.NeuralODE("not a function")
    with pytest.raises(ValueError, match="net must be callable"):
        nde.autonomous(3)
