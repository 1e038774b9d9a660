"""solve_dde against exact and independent references, its gradients, and its input errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import neuraldiffeq as nde


def exact_negative_feedback(t: float) -> float:
    """y' = -y(t - 1), y = 1 for t <= 0: on [n-1, n], y = sum_{k<=n} (-1)^k (t-k+1)^k / k!."""
    n = int(np.floor(t)) + 1
    return sum((-1) ** k * (t - (k - 1)) ** k / math.factorial(k) for k in range(n + 1))


def negative_feedback(t, y, y_lagged, args):
    return -y_lagged[0]


def test_exact_solution_on_0_3():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 3.0, 31)
        sol = nde.solve_dde(
            negative_feedback, jnp.ones(1), [1.0], 0.0, 3.0, ts, rtol=1e-8, atol=1e-8
        )
        exact = np.array([exact_negative_feedback(float(t)) for t in ts])
        assert sol.result == nde.solvers.names.diffrax.RESULTS.successful
        assert np.max(np.abs(np.asarray(sol.ys[:, 0]) - exact)) < 1e-6
        # dense output between the saved times, and the history before t0
        assert abs(float(sol.evaluate(2.345)[0]) - exact_negative_feedback(2.345)) < 1e-6
        assert float(sol.evaluate(-0.5)[0]) == 1.0
        # steps never exceed the lag, so at least 3 accepted steps on [0, 3]
        assert int(sol.num_accepted_steps) >= 3
        # the history as a function gives the same solution as the constant
        as_function = nde.solve_dde(
            negative_feedback, lambda t: jnp.ones(1), [1.0], 0.0, 3.0, ts, rtol=1e-8, atol=1e-8
        )
        np.testing.assert_allclose(as_function.ys, sol.ys, rtol=0, atol=1e-14)


def method_of_steps_reference(A, B, C, y0, lags, t1):
    """Independent reference for y' = A y + B y(t-τ1) + C y(t-τ2), constant history y0: on each
    interval of length min(τ) the lagged states are known, so it is an ODE, solved by scipy's
    DOP853 at rtol 1e-12 with the earlier intervals' dense outputs as the past."""
    h = min(lags)
    pieces = []

    def past(s):
        if s <= 0:
            return y0
        for a, b, dense in pieces:
            if a <= s <= b + 1e-14:
                return dense(s)
        raise AssertionError(s)

    t = 0.0
    y = y0
    while t < t1 - 1e-12:
        b = min(t + h, t1)

        def rhs(s, yy):
            return A @ yy + B @ past(s - lags[0]) + C @ past(s - lags[1])

        out = solve_ivp(rhs, (t, b), y, method="DOP853", rtol=1e-12, atol=1e-12, dense_output=True)
        pieces.append((t, b, out.sol))
        t, y = b, out.y[:, -1]
    return past


def test_two_lag_linear_system_against_method_of_steps():
    A = np.array([[-0.5, 1.0], [-1.0, -0.2]])
    B = np.array([[0.3, 0.0], [0.2, -0.4]])
    C = np.array([[-0.6, 0.1], [0.0, 0.3]])
    y0 = np.array([1.0, -0.5])
    lags = (1.0, 0.4)
    ref = method_of_steps_reference(A, B, C, y0, lags, 4.0)
    with jax.enable_x64(True):

        def field(t, y, yl, args):
            return A @ y + B @ yl[0] + C @ yl[1]

        ts = jnp.linspace(0.0, 4.0, 17)
        sol = nde.solve_dde(field, jnp.asarray(y0), lags, 0.0, 4.0, ts, rtol=1e-9, atol=1e-9)
        expected = np.stack([ref(float(t)) for t in ts])
        assert np.max(np.abs(np.asarray(sol.ys) - expected)) < 1e-6


def test_a_varying_history():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 1.0, 6)
        # history 1 + t: on [0, 1], y = 1 - ∫0^t s ds = 1 - t²/2
        varying = nde.solve_dde(
            negative_feedback,
            lambda t: jnp.array([1.0 + t]),
            [1.0],
            0.0,
            1.0,
            ts,
            rtol=1e-9,
            atol=1e-9,
        )
        np.testing.assert_allclose(varying.ys[:, 0], 1 - ts**2 / 2, atol=1e-9)


class History(eqx.Module):
    slope: jax.Array

    def __call__(self, t):
        return jnp.array([1.0, 0.5]) * (1 + self.slope * t)


def test_gradients_match_finite_differences_float64():
    with jax.enable_x64(True):
        ts = jnp.linspace(0.0, 3.0, 7)

        def loss(p, slope, y0):
            def field(t, y, yl, args):
                return jnp.array([-p[0] * yl[0, 1], p[1] * y[0] - yl[1, 1] * y[1]])

            sol = nde.solve_dde(
                field, History(slope), [1.0, 0.7], 0.0, 3.0, ts, y0=y0, rtol=1e-10, atol=1e-10
            )
            return jnp.sum(sol.ys**2)

        p, slope, y0 = jnp.array([1.0, -0.3]), jnp.array(0.2), jnp.array([1.0, 0.4])
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(p, slope, y0)
        loss_jit = jax.jit(loss)
        eps = 1e-6

        def fd(i, which):
            args = [p, slope, y0]
            plus, minus = list(args), list(args)
            if args[which].ndim:
                plus[which] = args[which].at[i].add(eps)
                minus[which] = args[which].at[i].add(-eps)
            else:
                plus[which], minus[which] = args[which] + eps, args[which] - eps
            return (loss_jit(*plus) - loss_jit(*minus)) / (2 * eps)

        expected = (
            np.array([fd(0, 0), fd(1, 0)]),
            np.array(fd(0, 1)),
            np.array([fd(0, 2), fd(1, 2)]),
        )
        for got, want in zip(grads, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            assert np.all(np.abs(want) > 1e-3)  # each is a real dependence, not a trivial zero


def test_too_few_steps_fails_cleanly():
    sol = nde.solve_dde(
        negative_feedback,
        jnp.ones(1),
        [1.0],
        0.0,
        10.0,
        rtol=1e-8,
        atol=1e-8,
        max_steps=5,
        throw=False,
    )
    assert sol.result != nde.solvers.names.diffrax.RESULTS.successful
    assert np.all(np.isinf(np.asarray(sol.ys)))


@pytest.mark.parametrize("lags", [[0.0], [-1.0], [1.0, -0.5], [], [float("nan")]])
def test_non_positive_lags_are_rejected(lags):
    with pytest.raises(ValueError, match="lags"):
        nde.solve_dde(negative_feedback, jnp.ones(1), lags, 0.0, 1.0)


def test_bad_history_and_field_shapes_are_rejected():
    with pytest.raises(ValueError, match="history"):  # history (2,) but y0 (1,)
        nde.solve_dde(negative_feedback, jnp.ones(2), [1.0], 0.0, 1.0, y0=jnp.ones(1))
    with pytest.raises(ValueError, match="history"):  # a matrix is not a state
        nde.solve_dde(negative_feedback, jnp.ones((2, 2)), [1.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="history"):
        nde.solve_dde(negative_feedback, lambda t: jnp.ones((3, 1)), [1.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="field must return"):
        nde.solve_dde(lambda t, y, yl, a: jnp.ones(3), jnp.ones(2), [1.0], 0.0, 1.0)
    with pytest.raises(ValueError, match="solver"):
        nde.solve_dde(negative_feedback, jnp.ones(1), [1.0], 0.0, 1.0, solver="kvaerno5")
    with pytest.raises(ValueError, match="t1"):
        nde.solve_dde(negative_feedback, jnp.ones(1), [1.0], 1.0, 0.0)
