"""Continuous adjoints that read the forward solution from its dense interpolation.

diffrax offers the discrete adjoint and the backsolve adjoint; these two are SciML's
`InterpolatingAdjoint` and `QuadratureAdjoint`:

- interpolating: the forward solve keeps its dense output; the backward pass integrates the
  adjoint a(t) and the parameter gradient g(t) together backwards, reading y(t) from the dense
  output instead of re-solving the state backwards (so it is stable where backsolve drifts);
- quadrature: the backward pass integrates only a(t) (D equations, not D + P) with dense output,
  then computes g = ∫ a(t)ᵀ ∂f/∂θ(t, y(t)) dt by composite Gauss–Legendre quadrature, all
  nodes at once (vmapped vector–Jacobian products).

Both work on the NeuralODE protocol `diff = (model, y0, args)`: `model.field`, `model.solver`,
`model.rtol/atol/dt0/max_steps` and `model._diffeqsolve`.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _controller(model):
    if isinstance(model.solver, diffrax.AbstractAdaptiveSolver):
        return diffrax.PIDController(rtol=model.rtol, atol=model.atol)
    return diffrax.ConstantStepSize()


def _dt0(model):
    return None if model.dt0 is None else -model.dt0


def _field_vjp(model, args, t, y, a):
    """(aᵀ ∂f/∂y, aᵀ ∂f/∂θ) with θ the float arrays of (model, args)."""
    _, vjp = eqx.filter_vjp(lambda p, y: p[0].field(t, y, p[1]), (model, args), y)
    g_params, g_y = vjp(a)
    return g_y, g_params


def _zeros_like_params(model, args):
    return jax.tree_util.tree_map(jnp.zeros_like, eqx.filter((model, args), eqx.is_inexact_array))


def _add(x, y):
    return jax.tree_util.tree_map(lambda u, v: u + v, x, y)


def _backward_interval(model, term, t_hi, t_lo, state, saveat=None):
    """Solve `term` from t_hi back to t_lo (diffrax handles the reversed direction)."""
    return diffrax.diffeqsolve(
        term,
        model.solver,
        t_hi,
        t_lo,
        _dt0(model),
        state,
        saveat=saveat if saveat is not None else diffrax.SaveAt(t1=True),
        stepsize_controller=_controller(model),
        max_steps=model.max_steps,
        throw=False,
    )


def _forward_dense(diff, ts):
    model, y0, args = diff
    sol = model._diffeqsolve(
        ts,
        y0,
        args,
        diffrax.RecursiveCheckpointAdjoint(),
        throw=False,
        saveat=diffrax.SaveAt(ts=ts, dense=True),
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jnp.where(ok, sol.ys, jnp.inf), sol.interpolation


def _assemble(diff, a0, g):
    """Cotangents in the structure of `diff = (model, y0, args)`."""
    g_model, g_args = g
    return (g_model, a0, g_args)


# -- interpolating ------------------------------------------------------------------------------


@eqx.filter_custom_vjp
def interpolating_solve(diff, ts):
    return _forward_dense(diff, ts)[0]


@interpolating_solve.def_fwd
def _interpolating_fwd(perturbed, diff, ts):
    ys, interpolation = _forward_dense(diff, ts)
    return ys, interpolation


@interpolating_solve.def_bwd
def _interpolating_bwd(interpolation, ys_bar, perturbed, diff, ts):
    model, y0, args = diff

    def augmented(t, state, _):
        a, g = state
        g_y, g_params = _field_vjp(model, args, t, interpolation.evaluate(t), a)
        return jax.tree_util.tree_map(jnp.negative, (g_y, g_params))

    term = diffrax.ODETerm(augmented)

    def interval(state, i):
        sol = _backward_interval(model, term, ts[i], ts[i - 1], state)
        a, g = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
        return (a + ys_bar[i - 1], g), None

    state = (ys_bar[-1], _zeros_like_params(model, args))
    (a0, g), _ = jax.lax.scan(interval, state, jnp.arange(len(ts) - 1, 0, -1))
    return _assemble(diff, a0, g)


# -- quadrature ---------------------------------------------------------------------------------


@eqx.filter_custom_vjp
def quadrature_solve(diff, ts, nodes_per_interval):
    return _forward_dense(diff, ts)[0]


@quadrature_solve.def_fwd
def _quadrature_fwd(perturbed, diff, ts, nodes_per_interval):
    ys, interpolation = _forward_dense(diff, ts)
    return ys, interpolation


@quadrature_solve.def_bwd
def _quadrature_bwd(interpolation, ys_bar, perturbed, diff, ts, nodes_per_interval):
    model, y0, args = diff
    subintervals, order = nodes_per_interval
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(order)  # on [-1, 1]

    def adjoint_only(t, a, _):
        return -_field_vjp(model, args, t, interpolation.evaluate(t), a)[0]

    term = diffrax.ODETerm(adjoint_only)

    def interval(carry, i):
        a, g = carry
        t_hi, t_lo = ts[i], ts[i - 1]
        sol = _backward_interval(model, term, t_hi, t_lo, a, diffrax.SaveAt(t1=True, dense=True))
        # composite Gauss–Legendre on [t_lo, t_hi]: g += ∫ aᵀ ∂f/∂θ dt
        edges = jnp.linspace(t_lo, t_hi, subintervals + 1)
        mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
        nodes = (mid[:, None] + half[:, None] * unit_nodes[None, :]).ravel()
        weights = (half[:, None] * unit_weights[None, :]).ravel()

        def integrand(t):
            a_t = sol.evaluate(t)
            return _field_vjp(model, args, t, interpolation.evaluate(t), a_t)[1]

        values = jax.vmap(integrand)(nodes)
        increment = jax.tree_util.tree_map(lambda v: jnp.tensordot(weights, v, axes=1), values)
        a_lo = sol.ys[-1]
        return (a_lo + ys_bar[i - 1], _add(g, increment)), None

    carry = (ys_bar[-1], _zeros_like_params(model, args))
    (a0, g), _ = jax.lax.scan(interval, carry, jnp.arange(len(ts) - 1, 0, -1))
    return _assemble(diff, a0, g)
