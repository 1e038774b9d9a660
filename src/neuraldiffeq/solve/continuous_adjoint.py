"""The loops behind `Forward`, `Interpolating` and `Quadrature`: diffrax adjoints of our own.

diffrax's `diffeqsolve` runs its main loop through `adjoint.loop(...)`; an adjoint decides how
gradients flow through that loop. diffrax ships the discrete (`RecursiveCheckpointAdjoint`) and
backsolve adjoints; here are three more, each a `jax.custom_vjp` around diffrax's own loop, so
every model reaches them through the same `diffeqsolve(..., adjoint=sensitivity)` call:

- forward: the Jacobian of the saved values w.r.t. every differentiable input (y0, args, the
  terms' arrays) by forward-mode AD through the loop (as diffrax's `ForwardMode`), contracted
  with the cotangent on the backward pass;
- interpolating (SciML's `InterpolatingAdjoint`): the forward solve keeps its dense output; the
  backward pass integrates the adjoint a(t) and the parameter gradient g(t) together backwards,
  reading y(t) from the dense output instead of re-solving the state backwards (so it is stable
  where backsolve drifts);
- quadrature (SciML's `QuadratureAdjoint`): the backward pass integrates only a(t) with dense
  output, then g = ∫ aᵀ ∂f/∂θ dt by composite Gauss–Legendre quadrature, on uniform pieces (all
  nodes at once) or on the steps of the forward and backward solves (`"steps"`: the pieces
  follow the solution's time scales, which a stiff problem's span many decades of).

The backward solves reuse the forward solve's solver, step-size controller, dt0 and max_steps,
as passed to `loop` by `diffeqsolve`: no step-size rule is built here. The adjoint equation of
a stiff problem is stiff too, and its Jacobian is -Jᵀ: `BDF` (`solver="bdf"`) solves it with
the same implicit machinery and linear solve, with its sparsity pattern transposed
(`BDF.for_adjoint`); the state it steps is the adjoint a alone, of shape (n,), which is why
`BDF` takes `Quadrature` (and not `Interpolating`, whose backward state also holds the
parameter gradient).

Times inside `loop` are
diffrax's internal ones (already multiplied by the direction), and the terms are diffrax's
wrapped terms, so `vf_prod(t, y, args, contr(t, t + 1))` is dy/dt in those internal times.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._compat import saved_states
from .bdf import BDF

#: Quadrature's uniform pieces per interval between saved times, unless it is told otherwise
#: (with `BDF`: "steps").
DEFAULT_SUBINTERVALS = 8

# -- pieces of diffrax's loop protocol ----------------------------------------------------------


def _lax_loops():
    # No AD runs through the loop inside a custom_vjp (forward mode needs "lax" anyway).
    return dict(
        inner_while_loop=eqx.Partial(eqxi.while_loop, kind="lax"),
        outer_while_loop=eqx.Partial(eqxi.while_loop, kind="lax"),
    )


def _saved_ys(final_state) -> list:
    """The saved values (what a `Solution.ys` is made of) of a loop's final state."""
    return [s.ys for s in saved_states(final_state.save_state)]


def _is_sde(terms) -> bool:
    """Whether `terms` is driven by Brownian motion (as diffrax decides it, from public types)."""
    is_brownian = lambda x: isinstance(x, diffrax.AbstractBrownianPath)  # noqa: E731
    leaves = jax.tree_util.tree_leaves(terms, is_leaf=is_brownian)
    return any(is_brownian(leaf) for leaf in leaves)


def _saved_ts(final_state):
    return final_state.save_state.ts


def check_saveat(name: str, saveat, *, dense_ok: bool = False) -> None:
    """Our adjoints transpose the saved values only; refuse outputs they would not differentiate."""
    subs = jax.tree_util.tree_leaves(
        saveat.subs, is_leaf=lambda x: isinstance(x, diffrax.SubSaveAt)
    )
    if len(subs) != 1 or subs[0].steps or subs[0].fn is not diffrax.SaveAt(t1=True).subs.fn:
        raise NotImplementedError(
            f"sensitivity={name}() differentiates values saved with SaveAt(ts=..., t0=..., t1=...)"
            " only (no subs, steps or fn)."
        )
    if saveat.dense and not dense_ok:
        raise NotImplementedError(
            f"sensitivity={name}() does not differentiate dense output (SaveAt(dense=True)); "
            "use nde.Direct() to differentiate sol.evaluate."
        )


def _only_ys_differentiable(out):
    """Only the saved values carry gradients out of our loops (as in diffrax's adjoints)."""
    final_state, aux = out

    def getter(state):
        return [s.ys for s in saved_states(state.save_state)]

    ys = getter(final_state)
    stopped = jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, final_state
    )
    return eqx.tree_at(getter, stopped, ys), aux


def _stop_state_gradients(init_state):
    # The solver and controller states (e.g. the first step size) are not differentiated, as in
    # diffrax's BacksolveAdjoint.
    return eqx.tree_at(
        lambda s: (s.solver_state, s.controller_state),
        init_state,
        replace_fn=jax.lax.stop_gradient,
        is_leaf=lambda x: x is None,
    )


def _split_y(init_state):
    y = init_state.y
    return y, eqx.tree_at(lambda s: s.y, init_state, object())


def _with_y(init_state, y):
    return eqx.tree_at(lambda s: s.y, init_state, y)


def _materialise(grad, like):
    """`grad` with symbolic-zero (None) cotangents replaced by zeros shaped like `like`."""
    return jax.tree_util.tree_map(
        lambda g, x: jax.tree_util.tree_map(jnp.zeros_like, x) if g is None else g,
        grad,
        like,
        is_leaf=lambda g: g is None,
    )


# -- forward sensitivities -----------------------------------------------------------------------


def forward_loop(*, args, terms, init_state, passed_solver_state, passed_controller_state, **kw):
    check_saveat("Forward", kw["saveat"])
    y, init_state = _split_y(_stop_state_gradients(init_state))
    return _only_ys_differentiable(_forward(((y, args, terms),), init_state=init_state, kw=kw))


def _run_forward_mode(diff, init_state, kw):
    ((y, args, terms),) = diff
    kw = dict(kw)
    kw.pop("throw", None)
    return diffrax.ForwardMode().loop(
        args=args,
        terms=terms,
        init_state=_with_y(init_state, y),
        throw=False,
        passed_solver_state=False,
        passed_controller_state=False,
        **kw,
    )


@eqx.filter_custom_vjp
def _forward(diff, *, init_state, kw):
    return _run_forward_mode(diff, init_state, kw)


@_forward.def_fwd
def _forward_fwd(perturbed, diff, *, init_state, kw):
    out = _run_forward_mode(diff, init_state, kw)
    # Directions only for the inputs that are differentiated (not, e.g., a Brownian tree's times).
    moving, fixed = eqx.partition(diff, perturbed)

    def flat_ys(d):
        return ravel_pytree(_saved_ys(_run_forward_mode(eqx.combine(d, fixed), init_state, kw)[0]))[
            0
        ]

    jacobian = eqx.filter_jacfwd(flat_ys)(moving)  # leaves (n_out, *input.shape)
    return out, (jacobian, _saved_ys(out[0]))


@_forward.def_bwd
def _forward_bwd(residuals, grad_out, perturbed, diff, *, init_state, kw):
    jacobian, ys = residuals
    grad_ys = _materialise(_saved_ys(grad_out[0]), ys)
    cotangent = ravel_pytree(grad_ys)[0]
    return jax.tree_util.tree_map(
        lambda jac: None if jac is None else jnp.tensordot(cotangent, jac, axes=1),
        jacobian,
        is_leaf=lambda x: x is None,
    )


# -- continuous adjoints from the dense forward solution -----------------------------------------


def _run_dense(diff, init_state, kw):
    """diffrax's loop with dense output switched on: (final state without it, interpolation)."""
    ((y, args, terms),) = diff
    solver, saveat, max_steps = kw["solver"], kw["saveat"], kw["max_steps"]
    init_state = _with_y(init_state, y)
    if not saveat.dense:
        # Allocate the dense buffers as diffeqsolve does when SaveAt(dense=True).
        _, _, info, _, _ = eqx.filter_eval_shape(
            solver.step,
            terms,
            init_state.tprev,
            init_state.tnext,
            y,
            args,
            init_state.solver_state,
            init_state.made_jump,
        )
        dtype = jnp.result_type(init_state.tprev)
        init_state = eqx.tree_at(
            lambda s: (s.dense_ts, s.dense_infos, s.dense_save_index),
            init_state,
            (
                jnp.full(max_steps + 1, jnp.inf, dtype),
                jax.tree_util.tree_map(  # (integer entries, e.g. BDF's order: zeros)
                    lambda x: jnp.full((max_steps, *x.shape), _padding(x.dtype), x.dtype), info
                ),
                0,
            ),
            is_leaf=lambda x: x is None,
        )
    kw = dict(kw, saveat=eqx.tree_at(lambda s: s.dense, saveat, True))
    kw.pop("throw")
    final_state, aux = diffrax.RecursiveCheckpointAdjoint()._loop(
        args=args, terms=terms, init_state=init_state, **kw, **_lax_loops()
    )
    interpolation = diffrax.DenseInterpolation(
        ts=final_state.dense_ts,
        ts_size=final_state.dense_save_index + 1,
        infos=final_state.dense_infos,
        interpolation_cls=solver.interpolation_cls,
        direction=1,
        t0_if_trivial=kw["t0"],
        y0_if_trivial=y,
    )
    if not saveat.dense:
        final_state = eqx.tree_at(
            lambda s: (s.dense_ts, s.dense_infos, s.dense_save_index),
            final_state,
            (None, None, None),
            is_leaf=lambda x: x is None,
        )
    return (final_state, aux), interpolation


def _padding(dtype):
    return jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else 0


def _vf(terms, t, y, args):
    """dy/dt in diffrax's internal time."""
    return terms.vf_prod(t, y, args, terms.contr(t, t + 1))


def _field_vjp(params, t, y, a):
    """(aᵀ ∂f/∂y, aᵀ ∂f/∂θ) with θ the float arrays of params = (args, terms)."""
    _, vjp = eqx.filter_vjp(lambda p, y: _vf(p[1], t, y, p[0]), params, y)
    g_params, g_y = vjp(a)
    return g_y, g_params


def _tree_add(x, y):
    return jax.tree_util.tree_map(lambda u, v: u + v, x, y)


def _tree_neg(x):
    return jax.tree_util.tree_map(jnp.negative, x)


def _backward_settings(kw, tolerances=(None, None)):
    """The backward solve's solver and step-size controller: the forward solve's, with the
    adjoint's own (rtol, atol) where given (None: the forward's); BDF with its pattern
    transposed (the adjoint's Jacobian is -Jᵀ)."""
    solver, controller = kw["solver"], kw["stepsize_controller"]
    rtol, atol = tolerances
    if rtol is not None or atol is not None:
        if not isinstance(controller, diffrax.PIDController):
            raise ValueError(
                "Quadrature(rtol=..., atol=...) sets the adjoint solve's tolerances on the "
                f"forward solve's PIDController; this solve's controller is "
                f"{type(controller).__name__}: leave them out."
            )
        rtol = controller.rtol if rtol is None else rtol
        atol = controller.atol if atol is None else atol
        controller = eqx.tree_at(lambda c: (c.rtol, c.atol), controller, (rtol, atol))
        if isinstance(solver, diffrax.AbstractImplicitSolver):  # its Newton tolerances
            solver = eqx.tree_at(
                lambda s: (s.root_finder.rtol, s.root_finder.atol), solver, (rtol, atol)
            )
    if isinstance(solver, BDF):
        solver = solver.for_adjoint()
    return solver, controller


def _backward_solve(kw, term, t_hi, t_lo, state, saveat, tolerances=(None, None)):
    """Solve `term` from t_hi back to t_lo with the forward solve's own solver and controller."""
    dt0 = kw["dt0"]
    solver, controller = _backward_settings(kw, tolerances)
    return diffrax.diffeqsolve(
        term,
        solver,
        t_hi,
        t_lo,
        None if dt0 is None else -dt0,
        state,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=kw["max_steps"],
        throw=False,
    )


def _poison(ok, tree):
    """A failed backward solve gives an infinite gradient, so `fit` skips the step."""
    return jax.tree_util.tree_map(lambda x: jnp.where(ok, x, jnp.inf), tree)


def _zeros_params(params):
    return jax.tree_util.tree_map(jnp.zeros_like, eqx.filter(params, eqx.is_inexact_array))


def dense_loop(
    name, *, args, terms, init_state, passed_solver_state, passed_controller_state, **kw
):
    """`loop` of `Interpolating` (name "interpolating") and `Quadrature` ((pieces, order))."""
    label = "Interpolating" if name == "interpolating" else "Quadrature"
    check_saveat(label, kw["saveat"])
    if kw["max_steps"] is None:
        raise ValueError(f"sensitivity={label}() keeps the dense output: max_steps must be set.")
    if _is_sde(terms):  # the models refuse this pair earlier
        raise NotImplementedError(f"sensitivity={label}() is for ODEs, not SDEs.")
    if name != "interpolating" and name[0] is None:  # Quadrature's default pieces
        name = ("steps" if isinstance(kw["solver"], BDF) else DEFAULT_SUBINTERVALS, *name[1:])
    y, init_state = _split_y(_stop_state_gradients(init_state))
    out = _dense(((y, args, terms),), name=name, init_state=init_state, kw=kw)
    return _only_ys_differentiable(out)


@eqx.filter_custom_vjp
def _dense(diff, *, name, init_state, kw):
    return _run_dense(diff, init_state, kw)[0]


@_dense.def_fwd
def _dense_fwd(perturbed, diff, *, name, init_state, kw):
    out, interpolation = _run_dense(diff, init_state, kw)
    return out, (interpolation, _saved_ts(out[0]), _saved_ys(out[0]))


@_dense.def_bwd
def _dense_bwd(residuals, grad_out, perturbed, diff, *, name, init_state, kw):
    interpolation, ts, saved = residuals
    ((y, args, terms),) = diff
    params = (args, terms)
    (grad_ys,) = _materialise(_saved_ys(grad_out[0]), saved)
    # Interval i runs from the previous save time (t0 for the first) to ts[i]; a zero-length
    # first interval (when t0 itself is saved) is a no-op solve.
    starts = jnp.concatenate([jnp.asarray(kw["t0"], ts.dtype)[None], ts[:-1]])
    g0 = _zeros_params(params)
    if name == "interpolating":
        step = _interpolating_interval(kw, interpolation, params)
    else:
        step = _quadrature_interval(kw, interpolation, params, *name)
    a0 = jax.tree_util.tree_map(jnp.zeros_like, y)
    carry = (a0, g0, jnp.array(True))
    index = jnp.arange(ts.shape[0] - 1, -1, -1)

    def interval(c, i):
        t_hi, t_lo = ts[i], starts[i]
        grad_y = jax.tree_util.tree_map(lambda v: v[i], grad_ys)
        # A zero-length interval (t0 itself saved) is the identity: skip its solve.
        c = jax.lax.cond(
            t_hi > t_lo,
            lambda: step(c, t_hi, t_lo, grad_y)[0],
            lambda: (_tree_add(c[0], grad_y), c[1], c[2]),
        )
        return c, None

    (a, g, ok), _ = jax.lax.scan(interval, carry, index)
    g_args, g_terms = g
    return _poison(ok, ((a, g_args, g_terms),))


def _interpolating_interval(kw, interpolation, params):
    def augmented(t, state, _):
        a, _g = state
        g_y, g_params = _field_vjp(params, t, interpolation.evaluate(t), a)
        return _tree_neg((g_y, g_params))

    term = diffrax.ODETerm(augmented)

    def step(carry, t_hi, t_lo, grad_y):
        a, g, ok = carry
        state = (_tree_add(a, grad_y), g)
        sol = _backward_solve(kw, term, t_hi, t_lo, state, diffrax.SaveAt(t1=True))
        a, g = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
        return (a, g, ok & (sol.result == diffrax.RESULTS.successful)), None

    return step


def _quadrature_interval(kw, interpolation, params, subintervals, order, *tolerances):
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(order)  # on [-1, 1]

    def adjoint_only(t, a, _):
        return _tree_neg(_field_vjp(params, t, interpolation.evaluate(t), a)[0])

    if subintervals == "steps":
        return _steps_interval(
            kw, interpolation, params, adjoint_only, unit_nodes, unit_weights, tolerances
        )
    term = diffrax.ODETerm(adjoint_only)

    def step(carry, t_hi, t_lo, grad_y):
        a, g, ok = carry
        a = _tree_add(a, grad_y)
        sol = _backward_solve(
            kw, term, t_hi, t_lo, a, diffrax.SaveAt(t1=True, dense=True), tolerances
        )
        # composite Gauss–Legendre on [t_lo, t_hi]: g += ∫ aᵀ ∂f/∂θ dt
        edges = jnp.linspace(t_lo, t_hi, subintervals + 1)
        mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
        nodes = (mid[:, None] + half[:, None] * unit_nodes[None, :]).ravel()
        weights = (half[:, None] * unit_weights[None, :]).ravel()

        def integrand(t):
            return _field_vjp(params, t, interpolation.evaluate(t), sol.evaluate(t))[1]

        values = jax.vmap(integrand)(nodes)
        increment = jax.tree_util.tree_map(lambda v: jnp.tensordot(weights, v, axes=1), values)
        a_lo = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
        ok = ok & (sol.result == diffrax.RESULTS.successful)
        return (a_lo, _tree_add(g, increment), ok), None

    return step


def _steps_interval(kw, interpolation, params, adjoint_only, unit_nodes, unit_weights, tolerances):
    """Quadrature on the solves' steps, the adjoint solved in two halves, each in a time
    s = |t - its end| measured from the end of the interval it starts at.

    Why the halves: the cotangent a saved value injects at t_hi excites the adjoint's fast
    modes, a transient far shorter than the interval (1e-4 on Robertson, whose benchmark ends
    at t = 1e10, where float64 times are 2e-6 apart). Solved in t, the steps that transient
    needs would be below the spacing of the times themselves; solved in s = t_hi - t it starts
    at s = 0, where they are not. The second half (t_mid down to t_lo, in s = t - t_lo) keeps
    the same resolution at t_lo, where the forward solve had its own transient. Both halves are
    one `diffeqsolve` (a scan over (origin, sign) with t = origin + sign·s)."""

    def in_s(s, a, frame):
        origin, sign = frame
        return jax.tree_util.tree_map(lambda v: sign * v, adjoint_only(origin + sign * s, a, None))

    term = diffrax.ODETerm(in_s)
    solver, inner = _backward_settings(kw, tolerances)

    def step(carry, t_hi, t_lo, grad_y):
        a, g, ok = carry
        a = _tree_add(a, grad_y)
        t_mid = t_lo + (t_hi - t_lo) / 2
        one = jnp.ones_like(t_hi)
        # (origin, sign, s where the half starts, s where it ends)
        frames = jnp.stack([
            jnp.stack([t_hi, -one, 0 * one, t_hi - t_mid]),
            jnp.stack([t_lo, one, t_mid - t_lo, 0 * one]),
        ])  # fmt: skip

        def half(c, frame):
            a, g, ok = c
            origin, sign, s_start, s_end = frame
            dt0 = kw["dt0"]
            # the forward solve's step ends in s: the backward solve steps to each of them, so
            # no step jumps over a change of y(t) (a transient) that its own error estimate,
            # sampling the field at its step ends only, would not see
            forward_ends = sign * (interpolation.ts - origin)
            forward_ends = jnp.where(jnp.isfinite(forward_ends), forward_ends, jnp.inf)
            controller = diffrax.ClipStepSizeController(inner, step_ts=forward_ends)
            sol = diffrax.diffeqsolve(
                term,
                solver,
                s_start,
                s_end,
                None if dt0 is None else jnp.where(s_end > s_start, 1, -1) * jnp.abs(dt0),
                a,
                args=(origin, sign),
                saveat=diffrax.SaveAt(t1=True, dense=True),
                stepsize_controller=controller,
                max_steps=kw["max_steps"],
                throw=False,
            )

            def integrand(s):
                t = origin + sign * s
                return _field_vjp(params, t, interpolation.evaluate(t), sol.evaluate(s))[1]

            backward = sol.interpolation
            edges = (forward_ends, backward.direction * backward.ts)
            s_lo, s_hi = jnp.minimum(s_start, s_end), jnp.maximum(s_start, s_end)
            increment = _over_pieces(integrand, s_lo, s_hi, edges, unit_nodes, unit_weights)
            a_end = jax.tree_util.tree_map(lambda x: x[-1], sol.ys)
            ok = ok & (sol.result == diffrax.RESULTS.successful)
            return (a_end, _tree_add(g, increment), ok), None

        return jax.lax.scan(half, (a, g, ok), frames)

    return step


def _over_pieces(integrand, t_lo, t_hi, step_edges, unit_nodes, unit_weights):
    """∫ integrand over [t_lo, t_hi] by Gauss–Legendre on each piece between consecutive times
    of `step_edges` (arrays of step ends, padded with ±inf, as in a dense interpolation), the
    pieces in a loop: as many as the steps, not a fixed number."""
    dtype = jnp.result_type(t_lo)
    times = [jnp.stack([t_lo, t_hi])]
    times += [jnp.where(jnp.isfinite(e), e, t_hi).astype(dtype) for e in step_edges]
    edges = jnp.sort(jnp.clip(jnp.concatenate(times), t_lo, t_hi))
    count = jnp.sum(edges < t_hi)  # edges[count] = t_hi
    nodes, weights = jnp.asarray(unit_nodes, dtype), jnp.asarray(unit_weights, dtype)

    def piece(k, g):
        lo, hi = edges[k], edges[k + 1]
        half = (hi - lo) / 2
        values = jax.vmap(integrand)((hi + lo) / 2 + half * nodes)
        return _tree_add(
            g, jax.tree_util.tree_map(lambda v: half * jnp.tensordot(weights, v, axes=1), values)
        )

    zeros = eqx.filter_eval_shape(integrand, t_lo)
    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
    return jax.lax.fori_loop(0, count, piece, zeros)
