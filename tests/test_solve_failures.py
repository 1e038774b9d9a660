"""A failed solve says why outside compiled code and is `inf` inside it, in every model.

Called directly, a model whose solve fails raises `nde.SolveError` (a `RuntimeError`) naming the
cause and the fix; under `jax.jit` the values are `inf` and `model.solve(...)` returns the result
code. `solver="auto"` gives the implicit solver it picks room to finish a stiff problem.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import neuraldiffeq as nde
from neuraldiffeq.solve import implicit_solver
from neuraldiffeq.solve.config import DEFAULT_MAX_STEPS, STIFF_MAX_STEPS

# The Oregonator (Hairer & Wanner, Solving ODEs II, OREGO): stiff, with relaxation spikes.
OREGO_TS = np.linspace(0.0, 360.0, 13)
OREGO_Y0 = np.array([1.0, 2.0, 3.0])


def oregonator(t, y, args):
    y1, y2, y3 = y[0], y[1], y[2]
    return jnp.stack(
        [
            77.27 * (y2 + y1 * (1 - 8.375e-6 * y1 - y2)),
            (y3 - (1 + y1) * y2) / 77.27,
            0.161 * (y1 - y3),
        ]
    )


def _oregonator_np(t, y):
    y1, y2, y3 = y
    return [
        77.27 * (y2 + y1 * (1 - 8.375e-6 * y1 - y2)),
        (y3 - (1 + y1) * y2) / 77.27,
        0.161 * (y1 - y3),
    ]


def _oregonator_jac_np(t, y):
    y1, y2, _ = y
    return [
        [77.27 * (1 - 2 * 8.375e-6 * y1 - y2), 77.27 * (1 - y1), 0.0],
        [-y2 / 77.27, -(1 + y1) / 77.27, 1 / 77.27],
        [0.161, 0.0, -0.161],
    ]


def test_auto_gives_the_implicit_solver_room_and_matches_a_tight_reference(x64):
    # Before: the default max_steps (4096) stopped Kvaerno5 and the call returned inf silently.
    model = nde.NeuralODE(oregonator, solver="auto", rtol=1e-8, atol=1e-8)
    assert model.max_steps == "auto"
    resolved = model.resolve_solver(OREGO_TS, OREGO_Y0)
    assert type(resolved.solver).__name__ == "Radau5"  # small and stiff at rtol <= 1e-5
    assert resolved.max_steps == STIFF_MAX_STEPS
    ys = np.asarray(model(OREGO_TS, OREGO_Y0))
    # LSODA (ODEPACK's stiff BDF, compiled) at 1e-12: within 4e-10 of scipy's Radau at 1e-12, in
    # 0.1 CPU s where Radau's Python steps take 3 s at 1e-11
    ref = scipy.integrate.solve_ivp(
        _oregonator_np,
        (OREGO_TS[0], OREGO_TS[-1]),
        OREGO_Y0,
        method="LSODA",
        rtol=1e-12,
        atol=1e-12,
        jac=_oregonator_jac_np,
        t_eval=OREGO_TS,
    )
    assert ref.success
    relative = np.abs(ys - ref.y.T) / np.abs(ref.y.T)
    # the bound; the float64 solve at 1e-8 is deterministic and stays about 25% under it
    assert relative.max() <= 1e-6, relative.max()


def test_auto_keeps_a_given_max_steps_and_says_so(x64):
    model = nde.NeuralODE(oregonator, solver="auto", rtol=1e-8, atol=1e-8, max_steps=1000)
    with pytest.raises(nde.SolveError, match="max_steps=1000") as info:
        model(OREGO_TS, OREGO_Y0)
    error = info.value
    assert isinstance(error, RuntimeError)
    assert error.reason == "max_steps_reached" and error.stats["max_steps"] == 1000
    assert error.model == "NeuralODE"
    message = str(error)
    assert "Radau5" in message and "a max_steps you set is kept as given" in message
    assert f"max_steps to {STIFF_MAX_STEPS}" in message

    # Compiled: the inf contract, and the result code through model.solve.
    resolved = model.resolve_solver(OREGO_TS, OREGO_Y0)
    assert resolved.max_steps == 1000  # honoured, not raised
    ys, result = eqx.filter_jit(
        lambda m: (m(OREGO_TS, OREGO_Y0), m.solve(OREGO_TS, OREGO_Y0).result)
    )(resolved)
    assert np.all(np.isinf(np.asarray(ys[-1])))
    assert bool(result == diffrax.RESULTS.max_steps_reached)


def test_explicit_solver_on_a_stiff_problem_says_to_try_an_implicit_one():
    # max_steps left out: the default, named in the message with a larger value to try
    model = nde.NeuralODE(lambda t, y, args: -1e6 * y, solver="tsit5")
    with pytest.raises(nde.SolveError, match=f"max_steps={DEFAULT_MAX_STEPS} ") as info:
        model(jnp.array([0.0, 1.0]), jnp.ones(1))
    message = str(info.value)
    assert "Tsit5" in message and "solver='auto'" in message and "solver='kvaerno5'" in message
    assert f"max_steps={4 * DEFAULT_MAX_STEPS}" in message


def test_step_size_collapse_says_so():
    # y = sqrt(1 - t): the slope is unbounded at t = 1, so the steps shrink without end there.
    model = nde.NeuralODE(lambda t, y, args: -0.5 / y, solver="tsit5", max_steps=1024)
    with pytest.raises(nde.SolveError, match="the step size collapsed") as info:
        model(jnp.array([0.0, 2.0]), jnp.ones(1))
    assert "solver='kvaerno5'" in str(info.value) and "solver='auto'" in str(info.value)


def test_newton_failure_names_the_tolerances():
    # Constant steps far too long for y' = -1e4 y^3 from y = 10: the Newton iteration diverges.
    solver = implicit_solver("kvaerno5", newton_rtol=1e-6, newton_atol=1e-6)
    model = nde.NeuralODE(lambda t, y, args: -1e4 * y**3, solver=solver, dt0=0.5)
    with pytest.raises(nde.SolveError, match="Newton iteration of the implicit solver") as info:
        model(jnp.array([0.0, 1.0]), jnp.array([10.0]))
    assert info.value.reason == "nonlinear_divergence"
    assert "dt0=0.5" in str(info.value) and "newton_rtol" in str(info.value)
    sol = model.solve(jnp.array([0.0, 1.0]), jnp.array([10.0]))  # no raise: the result says it
    assert bool(sol.result == diffrax.RESULTS.nonlinear_divergence)


def test_solve_raises_only_when_asked():
    model = nde.NeuralODE(lambda t, y, args: -1e4 * y, max_steps=16)
    ts, y0 = jnp.array([0.0, 1.0]), jnp.ones(1)
    sol = model.solve(ts, y0)
    assert int(sol.stats["num_steps"]) == 16
    with pytest.raises(nde.SolveError, match="max_steps=16 "):
        model.solve(ts, y0, throw=True)
    with pytest.raises(Exception, match="maximum number of solver steps"):  # diffrax's, compiled
        jax.block_until_ready(jax.jit(lambda y: model.solve(ts, y, throw=True).ys)(y0))


def _ode_field(t, y, args):
    return -1e4 * y


def _families():
    """(name, call) for every model family; each call solves a problem that needs far more steps
    than its max_steps allows, so every solve fails by max_steps."""
    key = jax.random.key(0)
    ts, y0 = jnp.linspace(0.0, 1.0, 3), jnp.ones(2)
    few = dict(max_steps=4)
    cases = {
        "NeuralODE": lambda: nde.NeuralODE(_ode_field, **few)(ts, y0),
        "NeuralSDE": lambda: nde.NeuralSDE(
            lambda t, y, a: -y, lambda t, y, a: 0.1 * y, dt0=0.01, **few
        )(ts, y0, key),
        "NeuralDDE": lambda: nde.NeuralDDE(
            lambda t, y, yl, a: -1e4 * yl[0], [0.5], autonomous=False, **few
        )(ts, y0),
        "solve_dde": lambda: nde.solve_dde(
            lambda t, y, yl, a: -1e4 * yl[0], y0, [0.5], 0.0, 1.0, **few
        ),
        "NeuralODEMM": lambda: nde.NeuralODEMM(_ode_field, [1.0, 1.0], **few)(ts, y0),
        "NeuralCDE": lambda: _cde(key, few),
        "FFJORD": lambda: nde.FFJORD(
            nde.ConcatSquashMLP(2, (4,), key=key), trace="exact", rtol=1e-12, atol=1e-12, **few
        ).log_prob(jnp.ones((3, 2))),
        "ODEBlock": lambda: nde.ODEBlock(_ode_field, **few)(y0),
        "LatentSDE": lambda: nde.LatentSDE(
            2, 3, context_size=4, hidden_size=4, key=key, dt0=0.01, **few
        ).sample_prior(ts, key=key),
        "HamiltonianNN": lambda: nde.HamiltonianNN(lambda y: 5e3 * y @ y, **few)(ts, y0),
        "SecondOrderNeuralODE": lambda: nde.SecondOrderNeuralODE(lambda y: -1e8 * y[:1], **few)(
            ts, y0
        ),
    }
    return cases


def _cde(key, few):
    model = nde.NeuralCDE(1, 2, 1, key=key, rtol=1e-12, atol=1e-12, **few)
    xs = np.sin(20 * np.linspace(0, 1, 12))[:, None]
    return model(model.control(np.linspace(0, 1, 12), xs))


#: Families with a solve path of their own run by default (DDE loop, Radau IIA, CDE, flow); the
#: others (NeuralODE's path, or diffrax's directly, as every family here) in the long tier.
DEFAULT_TIER = {"NeuralDDE", "NeuralODEMM", "NeuralCDE", "FFJORD"}


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(name, marks=() if name in DEFAULT_TIER else pytest.mark.long)
        for name in sorted(_families())
    ],
)
def test_every_model_raises_the_same_error(family):
    with pytest.raises(nde.SolveError, match=r": the solve failed: it reached max_steps=4 ") as e:
        _families()[family]()
    assert e.value.reason == "max_steps_reached"
    assert "Under jax.jit" in str(e.value)


def test_a_batch_solved_per_series_raises_once_and_is_inf_per_series_compiled():
    # Series with their own times are solved one by one under vmap; the error counts failures.
    model = nde.NeuralCDE(1, 2, 1, key=jax.random.key(0), max_steps=16)
    ts = np.stack([np.linspace(0, 1, 12), np.linspace(0, 2, 12)])
    xs = np.stack([100 * np.sin(20 * ts[0]), np.zeros(12)])[..., None]  # the second: constant
    control = model.control(ts, xs)
    assert not control.shared_times
    with pytest.raises(nde.SolveError, match="failed in 1 of 2 solves of the batch"):
        model(control)
    out = np.asarray(eqx.filter_jit(lambda m, c: m.hidden(c))(model, control))
    assert np.all(np.isinf(out[0])) and np.all(np.isfinite(out[1]))


def test_compiled_failure_is_inf_in_every_model_family():
    # The same failure under jit: inf (log-densities -inf), never an exception.
    key = jax.random.key(0)
    ts, y0 = jnp.linspace(0.0, 1.0, 3), jnp.ones(2)
    node = nde.NeuralODE(_ode_field, max_steps=4)
    ys = eqx.filter_jit(lambda m: m(ts, y0))(node)
    assert np.all(np.isinf(np.asarray(ys[1:])))
    flow = nde.FFJORD(
        nde.ConcatSquashMLP(2, (4,), key=key), trace="exact", rtol=1e-12, atol=1e-12, max_steps=4
    )
    logp = eqx.filter_jit(lambda f: f.log_prob(jnp.ones((3, 2))))(flow)
    assert np.all(np.asarray(logp) == -np.inf)
