"""BDF's continuous adjoint (`nde.Quadrature`): the adjoint equation solved by BDF with the
transposed Jacobian pattern and the same linear solve, the gradient integrated on the solves'
steps; float64 gradients against central finite differences and against `nde.Direct`, with
the sparse (SuperLU) and dense linear solves. Backsolve and Interpolating are refused."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.solve.bdf import BDF
from neuraldiffeq.solve.jacobian import SparsityPattern, detect_pattern

pytestmark = pytest.mark.usefixtures("x64_module")

GROUP_SCALE = (1.0, 1.7)  # each group's rates scaled: the groups are not copies


def grouped_robertson(t, u, log_k):
    """Robertson's kinetics in len(GROUP_SCALE) independent groups (all x, all y, all z)."""
    k1, k2, k3 = jnp.exp(log_k)
    s = jnp.asarray(GROUP_SCALE)
    x, y, z = jnp.split(u, 3)
    return jnp.concatenate([
        -s * k1 * x + k3 * y * z,
        s * k1 * x - k2 * y**2 - k3 * y * z,
        k2 * y**2,
    ])  # fmt: skip


NG = len(GROUP_SCALE)
# NumPy float64 here (the module turns x64 on only when its tests run)
Y0 = np.concatenate([np.ones(NG), np.zeros(2 * NG)])
LOG_K = np.log([0.04, 3e7, 1e4])
TS = np.array([0.0, 1.0, 1e3])


def robertson_loss(sensitivity, linear_solve):
    config = nde.SolveConfig("bdf", rtol=1e-9, atol=1e-13, sensitivity=sensitivity,
                             jacobian="sparse", linear_solve=linear_solve)  # fmt: skip
    ts, y0 = jnp.asarray(TS), jnp.asarray(Y0)
    model = nde.NeuralODE(grouped_robertson, config=config).resolve_solver(ts, y0, LOG_K)

    @jax.jit
    def loss(log_k):
        ys = model(ts, y0, log_k)
        return jnp.sum(ys[1:, :NG]) + 1e4 * jnp.sum(ys[1:, NG : 2 * NG])

    return model, loss


def central_differences(loss, x, eps):
    return np.array([
        (loss(x + eps * e) - loss(x - eps * e)) / (2 * eps) for e in np.eye(x.size)
    ])  # fmt: skip


def test_the_adjoint_solve_takes_the_transposed_pattern_of_the_field():
    # Robertson's pattern is not symmetric (z' depends on y only; nothing depends on z but x'
    # and y'): the adjoint field a -> -Jᵀa has the transposed one, with its own colouring
    pattern = detect_pattern(grouped_robertson, 0.0, jnp.asarray(Y0), LOG_K)
    y = jnp.linspace(0.1, 1.0, 3 * NG)
    adjoint = lambda t, a, args: -jax.vjp(lambda v: grouped_robertson(t, v, LOG_K), y)[1](a)[0]  # noqa: E731
    solver = BDF(jacobian=pattern, linear_solve="sparse").for_adjoint()
    assert solver.jacobian == detect_pattern(adjoint, 0.0, jnp.asarray(Y0), None) != pattern
    assert solver.linear_solve == "sparse" and solver.jacobian.transposed() == pattern
    assert BDF().for_adjoint() == BDF()  # dense: the Jacobian of whatever field it is given


@pytest.mark.long
def test_quadrature_with_superlu_matches_finite_differences_on_grouped_robertson():
    model, loss = robertson_loss(nde.Quadrature(), "sparse")
    assert (
        isinstance(model.solver.jacobian, SparsityPattern) and model.solver.linear_solve == "sparse"
    )
    grad = np.asarray(jax.grad(loss)(jnp.asarray(LOG_K)))
    fd = central_differences(loss, LOG_K, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-5)


@pytest.mark.long
@pytest.mark.parametrize("linear_solve", ["sparse", "dense"])
def test_quadrature_agrees_with_direct_on_grouped_robertson(linear_solve):
    _, quadrature = robertson_loss(nde.Quadrature(), linear_solve)
    _, direct = robertson_loss(nde.Direct(), linear_solve)
    g_quad, g_direct = (
        jax.grad(quadrature)(jnp.asarray(LOG_K)),
        jax.grad(direct)(jnp.asarray(LOG_K)),
    )
    np.testing.assert_allclose(g_quad, g_direct, rtol=1e-5)
    if linear_solve == "dense":
        np.testing.assert_allclose(g_quad, central_differences(direct, LOG_K, 1e-5), rtol=1e-5)


class StiffNeuralField(eqx.Module):
    """dy/dt = -Λ(y - mlp(y)) with rates Λ from 1 to 1e4: a stiff field with weights."""

    mlp: eqx.nn.MLP
    rates: jax.Array

    def __call__(self, t, y, args):
        return -self.rates * (y - self.mlp(y))


def neural_loss(sensitivity):
    field = StiffNeuralField(
        eqx.nn.MLP(3, 3, 8, 1, activation=jnp.tanh, key=jax.random.key(0)),
        jnp.array([1.0, 1e2, 1e4]),
    )
    config = nde.SolveConfig("bdf", rtol=1e-10, atol=1e-12, sensitivity=sensitivity)
    ts, y0 = jnp.array([0.0, 0.5, 2.0]), jnp.array([1.0, -0.5, 0.3])

    def loss(field):
        ys = nde.NeuralODE(field, config=config)(ts, y0)
        return jnp.sum(ys[1:] ** 2)

    return field, eqx.filter_jit(loss)


@pytest.mark.long
def test_quadrature_on_a_stiff_neural_field_matches_direct_and_finite_differences():
    field, quadrature = neural_loss(nde.Quadrature())
    _, direct = neural_loss(nde.Direct())
    g_quad = eqx.filter_grad(quadrature)(field).mlp
    g_direct = eqx.filter_grad(direct)(field).mlp
    for a, b in zip(
        jax.tree_util.tree_leaves(g_quad), jax.tree_util.tree_leaves(g_direct), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    # finite differences along the first layer's bias
    bias = field.mlp.layers[0].bias
    with_bias = lambda b: quadrature(eqx.tree_at(lambda f: f.mlp.layers[0].bias, field, b))  # noqa: E731
    fd = central_differences(with_bias, bias, 1e-6)
    np.testing.assert_allclose(g_quad.layers[0].bias, fd, rtol=1e-5, atol=1e-9)


def test_bdf_refuses_backsolve_and_interpolating_naming_the_sensitivities_it_takes():
    field = lambda t, y, args: -y  # noqa: E731
    for sensitivity, reason in ((nde.Backsolve(), "unstable"), (nde.Interpolating(), "gradient")):
        takes = "nde.Direct\\(\\), nde.Forward\\(\\), nde.Quadrature\\(\\)"
        with pytest.raises(ValueError, match=f"cannot honour.*{takes}.*{reason}"):
            nde.NeuralODE(field, solver="bdf", sensitivity=sensitivity)
    model = nde.NeuralODE(field, solver="bdf", sensitivity=nde.Quadrature())
    assert model.config.sensitivity == nde.Quadrature()
    # "auto" still picks the discrete adjoint
    assert isinstance(nde.NeuralODE(field, solver="bdf").config.sensitivity, nde.Direct)
    with pytest.raises(ValueError, match="subintervals"):
        nde.Quadrature(subintervals="adaptive")
    with pytest.raises(ValueError, match="atol.*adjoint solve's tolerance"):
        nde.Quadrature(atol=-1e-8)


@pytest.mark.long
@pytest.mark.parametrize("tolerances", [{}, {"rtol": 1e-9, "atol": 1e-11}])
def test_quadrature_on_the_steps_of_an_explicit_solve_matches_the_analytic_gradient(tolerances):
    # subintervals="steps" is not BDF's alone: d/da of y(2) = e^(2a) at a = -1 is 2e^-2; also
    # with the adjoint solve's own tolerances
    sensitivity = nde.Quadrature(subintervals="steps", **tolerances)
    model = nde.NeuralODE(lambda t, y, a: a * y, solver="tsit5", rtol=1e-8, atol=1e-10,
                          sensitivity=sensitivity)  # fmt: skip
    grad = jax.grad(lambda a: model(jnp.array([0.0, 2.0]), jnp.ones(1), a)[-1, 0])(-1.0)
    np.testing.assert_allclose(grad, 2 * np.exp(-2.0), rtol=1e-7)
