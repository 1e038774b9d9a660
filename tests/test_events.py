"""Hybrid models: events (terminating and jumping, several conditions with directions), scheduled
jumps, exogenous inputs, gradients through event times, strategies, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde

pytestmark = pytest.mark.usefixtures("x64_module")  # float64 throughout

G, E, H0, T1 = 9.81, 0.8, 10.0, 10.0
TOL = dict(rtol=1e-8, atol=1e-8)


def bounce_times(g, e, n):
    """Closed-form bounce times of a ball dropped from H0 with restitution e."""
    t, v, out = np.sqrt(2 * H0 / g), np.sqrt(2 * H0 * g), []
    out.append(t)
    for _ in range(n - 1):
        v *= e
        t += 2 * v / g
        out.append(t)
    return np.array(out)


def final_height(p, n, t_end=T1):
    """Closed-form height at t_end after n bounces (jax.grad of it is the reference)."""
    g, e = p
    t, v = jnp.sqrt(2 * H0 / g), jnp.sqrt(2 * H0 * g)
    for _ in range(n - 1):
        v = e * v
        t = t + 2 * v / g
    v = e * v
    s = t_end - t
    return v * s - 0.5 * g * s * s


class Restitution(eqx.Module):
    """A jump with a trainable coefficient: v <- -e v."""

    e: jax.Array

    def __call__(self, t, y, args):
        return jnp.array([y[0], -self.e * y[1]])


class Fall(eqx.Module):
    """Free fall with a trainable g (a module, so every sensitivity sees g as an input)."""

    g: jax.Array

    def __call__(self, t, y, args):
        return jnp.stack([y[1], -self.g + 0 * y[0]])


def ball(p, sensitivity=None, max_events=20):
    sensitivity = nde.Direct() if sensitivity is None else sensitivity
    bounce = nde.Event(lambda t, y, args: y[0], direction="down", jump=Restitution(p[1]))
    field = Fall(p[0])
    return nde.HybridODE(
        field, bounce, max_events=max_events, solver="tsit5", sensitivity=sensitivity, **TOL
    )


TS = jnp.linspace(0.0, T1, 21)
Y0 = jnp.array([H0, 0.0])


# Forward in the long tier (with the rest of the events' sensitivity matrix): the default run
# checks the event times and one sensitivity's gradient against the closed form
@pytest.mark.parametrize(
    "sensitivity",
    [nde.Direct(), pytest.param(nde.Forward(), marks=pytest.mark.long)],
    ids=["Direct", "Forward"],
)
def test_bouncing_ball_times_and_gradient(sensitivity):
    p = jnp.array([G, E])

    def run(p):
        sol = ball(p, sensitivity).solve(TS, Y0, throw=False)
        return sol.ys[-1, 0], sol.event_ts

    # one compiled program gives the event times, the final height and its gradient
    (height, event_ts), grad = jax.jit(jax.value_and_grad(run, has_aux=True))(p)
    assert np.max(np.abs(np.asarray(event_ts[:6]) - bounce_times(G, E, 6))) < 1e-7
    n = int(np.searchsorted(bounce_times(G, E, 60), T1))  # bounces before T1
    assert abs(float(height) - float(final_height(p, n))) < 1e-7
    want = jax.grad(final_height)(p, n)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=0, atol=1e-6)


def test_values_after_the_last_event_use_the_jumped_state():
    sol = ball(jnp.array([G, E])).solve(TS, Y0)
    t = np.asarray(TS)
    bounces = bounce_times(G, E, 10)
    i = int(np.searchsorted(t, bounces[0]))  # first saved time after the first bounce
    # between the first and second bounce: rising from the floor at speed e * sqrt(2 g H0)
    s = t[i] - bounces[0]
    v = E * np.sqrt(2 * G * H0)
    np.testing.assert_allclose(np.asarray(sol.ys[i]), [v * s - G * s**2 / 2, v - G * s], atol=1e-7)


def test_terminating_event_ends_the_solve():
    stop = nde.Event(lambda t, y, args: y[0] - 0.5)
    model = nde.HybridODE(lambda t, y, args: -y, events=stop, **TOL)
    sol = model.solve(jnp.linspace(0.0, 1.0, 5), jnp.ones(1))
    assert abs(float(sol.event_ts[0]) - np.log(2)) < 1e-8
    assert int(sol.n_events) == 1 and int(sol.event_index[0]) == 0
    ys = np.asarray(sol.ys[:, 0])
    np.testing.assert_allclose(ys[:3], np.exp(-np.array([0.0, 0.25, 0.5])), rtol=1e-7)
    assert np.all(np.isinf(ys[3:]))
    # d t*/d k for y' = -k y, y(t*) = 1/2: t* = log 2 / k, so -log 2 at k = 1
    model_k = nde.HybridODE(lambda t, y, k: -k * y, events=stop, **TOL)
    ts = jnp.linspace(0.0, 1.0, 5)
    dt = jax.jit(jax.grad(lambda k: model_k.solve(ts, jnp.ones(1), k, throw=False).event_ts[0]))
    assert abs(float(dt(1.0)) + np.log(2)) < 1e-6


def test_several_conditions_and_directions():
    # y = sin t: upward crossings of 0.5 at pi/6 + 2 pi k; downward of -0.5 at 7 pi/6 + 2 pi k.
    # The jumps are the identity, so the solution stays sin t and the events are just recorded.
    field = lambda t, y, args: jnp.array([y[1], -y[0]])  # noqa: E731
    keep = lambda t, y, args: y  # noqa: E731
    up = nde.Event(lambda t, y, args: y[0] - 0.5, direction="up", jump=keep)
    down = nde.Event(lambda t, y, args: y[0] + 0.5, direction="down", jump=keep)
    model = nde.HybridODE(field, [up, down], max_events=8, **TOL)
    sol = model.solve(jnp.linspace(0.0, 8.0, 9), jnp.array([0.0, 1.0]))
    want = [np.pi / 6, 7 * np.pi / 6, np.pi / 6 + 2 * np.pi]  # the next is after t = 8
    assert int(sol.n_events) == 3
    np.testing.assert_allclose(np.asarray(sol.event_ts[:3]), want, atol=1e-7)
    assert np.asarray(sol.event_index[:4]).tolist() == [0, 1, 0, -1]
    np.testing.assert_allclose(np.asarray(sol.ys[:, 0]), np.sin(np.arange(9.0)), atol=1e-7)


def test_more_events_than_the_bound_is_reported():
    model = ball(jnp.array([G, E]), max_events=3)
    with pytest.raises(RuntimeError, match="more than max_events=3"):
        model.solve(TS, Y0)
    ys = jax.jit(lambda y0: model(TS, y0))(Y0)  # compiled: the failure value, not a loop
    assert np.all(np.isinf(np.asarray(ys)))


def test_scheduled_doses_values_and_gradients():
    # y' = -k y with doses a_j at t_j: y(T) = y0 e^{-kT} + sum_j a_j e^{-k (T - t_j)}
    k, times, y0 = 0.3, np.array([1.0, 2.5, 4.0]), 1.0
    ts = jnp.linspace(0.0, 5.0, 11)

    def run(amounts, y0):
        model = nde.HybridODE(lambda t, y, args: -k * y, schedule=nde.Schedule(times, amounts))
        return model(ts, y0, None)

    amounts = jnp.array([[2.0], [1.0], [0.5]])

    def last(amounts):
        ys = run(amounts, jnp.array([y0]))
        return ys[-1, 0], ys

    # one compiled program gives the values and the gradient of the last one
    (_, ys), grad = jax.jit(jax.value_and_grad(last, has_aux=True))(amounts)
    t = np.asarray(ts)
    want = y0 * np.exp(-k * t) + sum(
        float(a) * np.exp(-k * (t - tj)) * (t >= tj)
        for a, tj in zip(amounts[:, 0], times, strict=True)
    )
    np.testing.assert_allclose(np.asarray(ys[:, 0]), want, rtol=1e-5)  # default tolerances
    np.testing.assert_allclose(np.asarray(grad[:, 0]), np.exp(-k * (5.0 - times)), rtol=1e-5)


def test_schedule_into_one_component_and_per_series_via_exogenous():
    field = lambda t, y, args: jnp.array([-y[0], y[0] - 0.5 * y[1]])  # noqa: E731
    model = nde.HybridODE(field, **TOL)
    ts = jnp.linspace(0.0, 6.0, 13)
    one = nde.Exogenous(schedule=nde.Schedule([2.0, 4.0], [1.0, 3.0], into=0))
    ys = model(ts, jnp.zeros(2), one)
    # compartment 0: the doses decaying at rate 1
    t = np.asarray(ts)
    want0 = np.exp(-(t - 2.0)) * (t >= 2.0) + 3 * np.exp(-(t - 4.0)) * (t >= 4.0)
    np.testing.assert_allclose(np.asarray(ys[:, 0]), want0, atol=1e-7)


def test_exogenous_input_reaches_the_field():
    # y' = u(t) - y with u(t) = t (linear, exact on the knots): y = t - 1 + e^{-t} from y0 = 0
    knots = np.linspace(0.0, 3.0, 7)
    u = nde.interpolation_coeffs(knots, knots[:, None], kind="linear", time_channel=False)
    model = nde.HybridODE(lambda t, y, u, args: u - y, inputs=u, **TOL)
    ts = jnp.linspace(0.0, 3.0, 4)
    ys = model(ts, jnp.zeros(1))
    t = np.asarray(ts)
    np.testing.assert_allclose(np.asarray(ys[:, 0]), t - 1 + np.exp(-t), atol=1e-7)
    with pytest.raises(ValueError, match="inputs cover"):
        model(jnp.linspace(0.0, 4.0, 4), jnp.zeros(1))


def test_bad_input_is_refused_before_compiling():
    field = lambda t, y, args: -y  # noqa: E731
    ts, y0 = jnp.linspace(0.0, 1.0, 3), jnp.ones(2)
    vector = nde.Event(lambda t, y, args: y)  # shape (2,), not a scalar
    with pytest.raises(ValueError, match=r"events\[0\].condition returns shape \(2,\)"):
        nde.HybridODE(field, vector).solve(ts, y0)
    grows = nde.Event(lambda t, y, args: y[0], jump=lambda t, y, args: jnp.concatenate([y, y]))
    with pytest.raises(ValueError, match=r"events\[0\].jump returns shape \(4,\)"):
        nde.HybridODE(field, grows).solve(ts, y0)
    with pytest.raises(ValueError, match="strictly increasing"):
        nde.Schedule([1.0, 0.5], [1.0, 1.0], into=0)
    outside = nde.HybridODE(field, schedule=nde.Schedule([0.5, 2.0], [1.0, 1.0], into=0))
    with pytest.raises(ValueError, match="outside the span"):
        outside.solve(ts, y0)
    with pytest.raises(ValueError, match="max_events must be a positive integer"):
        nde.HybridODE(field, vector, max_events=0)
    with pytest.raises(ValueError, match="direction must be"):
        nde.Event(lambda t, y, args: y[0], direction="sideways")
    with pytest.raises(ValueError, match="solver='auto'"):
        nde.HybridODE(field, solver="auto")


@pytest.mark.long  # a whole fit: the long tier keeps the default run within its time
def test_strategies_fit_a_hybrid_model_and_collocation_refuses():
    data = nde.TimeSeries(TS, ball(jnp.array([G, E]))(TS, Y0)[None])
    model = ball(jnp.array([9.6, 0.78]), max_events=12)  # not Zeno before t = 10
    for strategy in (nde.Trajectory(), nde.MultipleShooting(group_size=6)):
        prepared = strategy.prepare(model, data)
        step = eqx.filter_jit(eqx.filter_value_and_grad(strategy.loss))
        loss, grads = step(model, prepared, None)
        assert np.isfinite(float(loss)) and float(loss) > 0
        g_e = jax.tree_util.tree_leaves(eqx.filter(grads.events, eqx.is_inexact_array))
        assert any(float(jnp.abs(x).sum()) > 0 for x in g_e)  # the restitution is trained
    with pytest.raises(ValueError, match="Collocation.*HybridODE has none"):
        nde.Collocation().prepare(model, data)


# the default run's fit through per-patient schedules (nde.PerSeries); the dosing demo's fits,
# six patients with a network and L-BFGS, are in the long tier
def test_per_series_schedules_fit():
    # two patients, each their own doses; the shared elimination rate is recovered
    ts = jnp.linspace(0.0, 6.0, 13)
    times = jnp.array([[1.0, 3.0], [2.0, 4.0]])
    amounts = jnp.array([[1.0, 2.0], [2.0, 0.5]])

    class Rate(eqx.Module):
        k: jax.Array

        def __call__(self, t, y, args):
            return -self.k * y

    def model_of(k):
        return nde.HybridODE(Rate(jnp.array(k)), sensitivity=nde.Direct(), rtol=1e-6, atol=1e-8)

    per = nde.PerSeries(nde.Exogenous(schedule=nde.Schedule(times, amounts, into=0)))
    truth = model_of(0.4)
    ys = jnp.stack([truth(ts, jnp.ones(1), per.series(i)) for i in range(2)])
    data = nde.TimeSeries(ts, ys)
    result = nde.fit(
        model_of(0.2),
        data,
        nde.Trajectory(args=per),
        optimizer=optax.adam(0.05),
        steps=60,
        progress=False,
    )
    assert abs(float(result.model.field.k) - 0.4) < 0.02


@pytest.mark.long  # a whole fit: the long tier keeps the default run within its time
def test_demo_bouncing_ball_recovers_g_and_restitution(tmp_path):
    import json

    from neuraldiffeq.cli import main

    out = tmp_path / "ball"
    argv = ["demo", "bouncing-ball", "--points", "41", "--steps", "90", "--lbfgs-steps", "10"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert {"fit.png", "metrics.json", "model.eqx"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    # the 1% each (measured: 2e-3 and 1e-3 with the demo's defaults)
    assert metrics["relative_errors"]["g"] < 0.01 and metrics["relative_errors"]["e"] < 0.01
    assert len(metrics["bounce_times"]) == len(metrics["true_bounce_times"]) >= 4


#: The demo's start (the test's own) and three others, for tests/margins.py.
BALL_STARTS = [(9.0, 0.75, 0), (10.5, 0.85, 1), (9.4, 0.7, 2), (10.2, 0.82, 3)]


def closed_form_heights(ts, g, e):
    """Heights of the ball dropped from H0 at rest, in closed form (numpy), at times `ts`."""
    bounces = bounce_times(g, e, 60)
    out = []
    for t in np.asarray(ts):
        n = int(np.searchsorted(bounces, t))  # bounces before t
        if n == 0:
            out.append(H0 - 0.5 * g * t * t)
            continue
        s, v = t - bounces[n - 1], np.sqrt(2 * H0 * g) * e**n
        out.append(v * s - 0.5 * g * s * s)
    return np.array(out)


def short_ball_fit(g0=9.0, e0=0.75, seed=0):
    """The bouncing-ball demo's fit (its model, loss and Adam), reduced: 21 heights with 5 cm of
    noise over 8 s (four bounces; the true heights in closed form rather than from a solve),
    Adam alone for 120 steps. Relative errors of g and e."""
    from neuraldiffeq.demos import bouncing_ball as demo

    ts = np.linspace(0.0, 8.0, 21)
    ys = np.zeros((21, 2))  # the velocity is not observed (the demo's misfit ignores it)
    ys[:, 0] = closed_form_heights(ts, demo.TRUE_G, demo.TRUE_E)
    ys[1:, 0] += 0.05 * np.random.default_rng(seed).standard_normal(20)
    with jax.enable_x64(True):
        data = nde.TimeSeries(ts, ys)
        model = demo.fit_ball(data, 120, 0, g=g0, e=e0).model
        g, e = float(model.field.g), float(model.events[0].jump.e)
    return {"g": abs(g / demo.TRUE_G - 1), "e": abs(e / demo.TRUE_E - 1)}


# long tier: a fit through events (about 5.5 CPU s); the default run checks the bounce times
# and the gradient in g and e against the closed form (test_bouncing_ball_times_and_gradient)
# and fits a hybrid model in test_per_series_schedules_fit
@pytest.mark.long
def test_demo_bouncing_ball_short_recovers_g_and_restitution():
    errors = short_ball_fit(*BALL_STARTS[0])
    assert errors["g"] < 0.01 and errors["e"] < 0.01  # the 1% each


#: (network and noise seed) of the dosing test and three others, for tests/margins.py.
DOSING_SEEDS = [0, 1, 2, 3]


def short_dosing_fit(seed=0):
    """The dosing demo's fit (its six patients, model and L-BFGS), reduced: L-BFGS alone for 40
    steps. The relative error of ka and of the elimination curve (at its peak)."""
    from neuraldiffeq.demos import dosing as demo

    with jax.enable_x64(True):
        data, doses = demo.problem(13, 0.03, seed)
        model = demo.fit_dosing(data, doses, seed, 0, 40).model
        ka = float(jnp.exp(model.field.log_ka))
        curve = demo.elimination_curves(model, data)[3]
    return {"ka": abs(ka / demo.KA - 1), "curve": curve}


# long tier: tracing and compiling the demo's L-BFGS step costs about 17 CPU s; the default run
# fits per-patient schedules in test_per_series_schedules_fit and checks scheduled doses' values
# and gradients in test_scheduled_doses_values_and_gradients
@pytest.mark.long
def test_demo_dosing_short_recovers_the_absorption_rate():
    errors = short_dosing_fit(DOSING_SEEDS[0])
    assert errors["ka"] < 0.05  # the 5%
    assert errors["curve"] < 0.1


def test_auto_preset_puts_no_collocation_stage_before_a_hybrid_model():
    dense = nde.datasets.spiral(n_points=200)  # smooth enough for collocation to go first
    plain = nde.PRESETS["auto"](data=dense, lbfgs_steps=0, model=nde.NeuralODE(lambda t, y, a: -y))
    hybrid = nde.PRESETS["auto"](data=dense, lbfgs_steps=0, model=nde.HybridODE(lambda t, y, a: -y))
    assert [type(s.strategy).__name__ for s in plain][0] == "Collocation"
    assert [type(s.strategy).__name__ for s in hybrid] == ["MultipleShooting", "Trajectory"]


@pytest.mark.long  # a whole fit: the long tier keeps the default run within its time
def test_demo_dosing_recovers_the_absorption_rate(tmp_path):
    import json

    from neuraldiffeq.cli import main

    out = tmp_path / "dosing"
    argv = ["demo", "dosing", "--steps", "150", "--lbfgs-steps", "30"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ka_relative_error"] < 0.05  # the 5%
    assert metrics["elimination_curve_error"] < 0.1
