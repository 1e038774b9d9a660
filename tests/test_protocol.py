"""The strategy protocol: prepare(model, data) then loss(model, prepared, key).

Shape checks before compiling, args reaching the field in every time-series strategy, the
methods a model exposes to strategies, and the helpers every strategy shares.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq._checks import SORT_LIMIT, check_batch_size, count_nfe, draw_minibatch

# -- a custom strategy plugs into fit and sees the model -------------------------------------------


class Params(eqx.Module):
    w: jax.Array


class TowardsData(nde.AbstractStrategy):
    """loss = ||w - data||^2; prepare refuses data whose size differs from the model's `w`."""

    def prepare(self, model, data):
        data = jnp.asarray(data)
        if data.shape != model.w.shape:
            raise ValueError(f"data {data.shape} does not match w {model.w.shape}")
        return data

    def loss(self, model, target, key):
        return jnp.sum((model.w - target) ** 2)


def test_a_custom_strategy_sees_the_model_in_prepare_and_trains():
    target = jnp.array([1.0, -2.0])
    result = nde.fit(
        Params(jnp.zeros(2)),
        target,
        TowardsData(),
        optimizer=optax.adam(0.1),
        steps=200,
        progress=False,
    )
    np.testing.assert_allclose(result.model.w, target, atol=1e-2)
    # prepare ran with the model: a mismatch is refused before any step
    with pytest.raises(ValueError, match=r"data \(3,\) does not match w \(2,\)"):
        nde.fit(Params(jnp.zeros(2)), jnp.zeros(3), TowardsData(), steps=1, progress=False)


# -- args reach the field in every strategy --------------------------------------------------------


def decay_field(t, y, args):
    return -args["rate"] * y


def decay_data(rate=2.0, n=25):
    ts = jnp.linspace(0.0, 1.0, n)
    ys = jnp.stack([jnp.exp(-rate * ts), 0.5 * jnp.exp(-rate * ts)], -1)
    return nde.TimeSeries(ts, ys)


@pytest.mark.parametrize(
    "make",
    [
        lambda args: nde.Trajectory(args=args),
        lambda args: nde.MultipleShooting(group_size=5, continuity=1.0, args=args),
        lambda args: nde.Collocation(bandwidth=0.3, args=args),
    ],
    ids=["Trajectory", "MultipleShooting", "Collocation"],
)
def test_args_reach_the_field(make):
    data = decay_data(rate=2.0)
    model = nde.NeuralODE(decay_field, rtol=1e-7, atol=1e-9)
    right, wrong = make({"rate": jnp.array(2.0)}), make({"rate": jnp.array(0.5)})
    loss_right = float(right.loss(model, right.prepare(model, data), None))
    loss_wrong = float(wrong.loss(model, wrong.prepare(model, data), None))
    # the data decay at rate 2: the args with rate 2 explain them, rate 0.5 does not
    assert loss_right < 1e-2 * loss_wrong, (loss_right, loss_wrong)
    assert loss_wrong > 0.1


def test_trajectory_args_train_through_fit():
    """A parameter held in args is not trained, the field's own parameters are: the rate is
    split between a trained scale and a fixed factor passed in args."""

    class Scaled(eqx.Module):
        scale: jax.Array

        def __call__(self, t, y, args):
            return -self.scale * args * y

    data = decay_data(rate=2.0, n=10)
    model = nde.NeuralODE(Scaled(jnp.array(0.5)), rtol=1e-6, atol=1e-8)
    result = nde.fit(
        model,
        data,
        nde.Trajectory(args=jnp.array(4.0)),
        optimizer=optax.adam(0.05),
        steps=200,
        steps_per_call=50,
        progress=False,
    )
    # rate 2 = scale * 4: the trained scale is 0.5 only if the fixed factor 4 reached the field
    assert abs(float(result.model.field.scale) - 0.5) < 0.05


# -- shapes checked before compiling ---------------------------------------------------------------


def mlp_model(dim=2):
    mlp = eqx.nn.MLP(dim, dim, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    return nde.NeuralODE(nde.autonomous(mlp))


def three_d_data():
    data = nde.datasets.spiral(n_points=10)
    return nde.TimeSeries(data.ts, jnp.concatenate([data.ys, data.ys[:, :1]], -1))


STRATEGIES = [
    nde.Trajectory(),
    nde.MultipleShooting(group_size=4),
    nde.Collocation(),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
def test_data_of_another_dimension_is_refused_naming_both_shapes(strategy):
    with pytest.raises(ValueError, match=r"state of shape \(3,\)") as info:
        strategy.prepare(mlp_model(2), three_d_data())
    assert "(2,)" in str(info.value)  # the model's size, from the underlying error
    assert len(str(info.value).splitlines()) <= 2


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(
    "field, shape",
    [(lambda t, y, a: jnp.sum(y), r"\(\)"), (lambda t, y, a: jnp.ones(3), r"\(3,\)")],
    ids=["scalar", "wrong-size"],
)
def test_field_output_must_have_the_state_shape(strategy, field, shape):
    data = nde.datasets.spiral(n_points=10)
    with pytest.raises(ValueError, match=rf"returns shape {shape} for a state of shape \(2,\)"):
        strategy.prepare(nde.NeuralODE(field), data)


def test_fit_refuses_before_compiling_or_training():
    # fit prepares every stage with the model before the first step: the error is the short
    # ValueError of the stage that cannot run, and no stage has trained
    with pytest.raises(ValueError, match=r"MultipleShooting: the model's vector field fails"):
        nde.fit(mlp_model(2), three_d_data(), "auto", steps=2, progress=False)
    data = nde.datasets.spiral(n_points=10)
    dde = nde.NeuralDDE(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), lags=[0.5])
    trained = []
    stages = [
        nde.Stage(nde.Trajectory(), optax.adam(0.01), 2),
        nde.Stage(nde.Collocation(), optax.adam(0.01), 2),  # a DDE has no vector_field
    ]
    with pytest.raises(ValueError, match="vector_field"):
        nde.fit(dde, data, stages, callback=lambda *a: trained.append(a), progress=False)
    assert trained == []


def test_models_without_a_vector_field_are_checked_through_their_call():
    dde = nde.NeuralDDE(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), lags=[0.5])
    with pytest.raises(ValueError, match=r"model fails on the data's times \(10,\) and state"):
        nde.Trajectory().prepare(dde, three_d_data())
    augmented = nde.AugmentedNeuralODE(mlp_model(3), augment_dim=1)  # returns (T, 3) for D=2
    with pytest.raises(ValueError, match=r"returns shape \(10, 3\).*data have shape \(10, 2\)"):
        nde.Trajectory().prepare(augmented, nde.datasets.spiral(n_points=10))


def test_wrapped_models_expose_what_the_wrapped_model_has():
    data = nde.datasets.spiral(n_points=10)
    shooting = nde.MultipleShooting(group_size=4)
    dde = nde.NeuralDDE(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), lags=[0.5])
    wrapped_dde = shooting.with_states(dde, data)
    nde.Trajectory().prepare(wrapped_dde, data)  # no vector field to check: the call is checked
    with pytest.raises(ValueError, match="vector_field"):
        nde.Collocation().prepare(wrapped_dde, data)
    wrapped_ode = shooting.with_states(nde.NeuralODE(decay_field), data)
    collocation = nde.Collocation(args={"rate": jnp.array(1.0)})
    assert float(collocation.loss(wrapped_ode, collocation.prepare(wrapped_ode, data), None)) > 0


def test_strategies_refuse_models_without_the_method_they_need():
    data = nde.datasets.spiral(n_points=10)
    dde = nde.NeuralDDE(eqx.nn.MLP(4, 2, 8, 1, key=jax.random.key(0)), lags=[0.5])
    with pytest.raises(ValueError, match="vector_field"):
        nde.Collocation().prepare(dde, data)
    with pytest.raises(ValueError, match="elbo"):
        nde.ELBO().prepare(mlp_model(), data)
    with pytest.raises(ValueError, match="sample"):
        nde.MomentMatching().prepare(mlp_model(), data)
    with pytest.raises(ValueError, match="log_prob"):
        nde.MaximumLikelihood().prepare(mlp_model(), np.zeros((4, 2)))


def test_elbo_and_likelihood_check_the_data_dimension():
    latent = nde.LatentODE(4, 2, key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"ELBO: LatentODE.elbo fails on data of shape \(10, 3\)"):
        nde.ELBO().prepare(latent, three_d_data())
    flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(1)), trace="exact")
    with pytest.raises(ValueError, match=r"samples of shape \(3,\)"):
        nde.MaximumLikelihood().prepare(flow, np.zeros((5, 3)))


# -- what a model exposes to strategies ------------------------------------------------------------


class Echo(eqx.Module):
    """A model that repeats its initial state; `with_past` makes it replay the observed past."""

    past: jax.Array | None = None
    past_ts: jax.Array | None = None

    def __call__(self, ts, y0):
        if self.past is None:
            return jnp.broadcast_to(y0, (ts.shape[0], *y0.shape))
        return jax.vmap(lambda y: jnp.interp(ts, self.past_ts, y), in_axes=1, out_axes=1)(self.past)

    def with_past(self, ts, ys):
        return Echo(ys, ts)


class EchoWithoutPast(eqx.Module):
    def __call__(self, ts, y0):
        return jnp.broadcast_to(y0, (ts.shape[0], *y0.shape))


def test_multiple_shooting_uses_the_models_with_past_method():
    data = nde.datasets.spiral(n_points=13)
    strategy = nde.MultipleShooting(group_size=4, continuity=0.0)
    replay = float(strategy.loss(Echo(), strategy.prepare(Echo(), data), None))
    constant = float(
        strategy.loss(EchoWithoutPast(), strategy.prepare(EchoWithoutPast(), data), None)
    )
    assert replay < 1e-8 < 1.0 < constant  # replaying the data is exact, holding y0 is not
    mask = np.ones(data.ys.shape, bool)
    mask[5] = False  # not a segment start
    holey = nde.TimeSeries(data.ts, data.ys, mask)
    with pytest.raises(ValueError, match="fully observed"):
        strategy.prepare(Echo(), holey)
    strategy.prepare(EchoWithoutPast(), holey)  # a model without a past does not need it


# -- the shared helpers ----------------------------------------------------------------------------


def test_batch_size_has_one_rule_and_one_message():
    messages = set()
    for make in (
        lambda b: nde.Trajectory(batch_size=b),
        lambda b: nde.MultipleShooting(group_size=3, batch_size=b),
        lambda b: nde.ELBO(batch_size=b),
        lambda b: nde.MaximumLikelihood(batch_size=b),
    ):
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="batch_size must be None") as info:
                make(bad)
            messages.add(str(info.value).replace(repr(bad), "X"))
    assert len(messages) == 1, messages
    assert check_batch_size(None) is None and check_batch_size(np.int64(3)) == 3
    # too large for the data: one message too
    data = nde.datasets.spiral(n_points=10)
    model = mlp_model()
    for strategy in (
        nde.Trajectory(batch_size=2),
        nde.MultipleShooting(group_size=3, batch_size=2),
    ):
        with pytest.raises(ValueError, match="batch_size 2 exceeds the 1 trajectories"):
            strategy.prepare(model, data)


@pytest.mark.parametrize("n", [10, SORT_LIMIT + 10], ids=["permutation", "floyd"])
def test_minibatches_are_drawn_uniformly_without_replacement(n):
    size = 7
    draws = np.asarray(
        jax.jit(jax.vmap(lambda k: draw_minibatch(k, n, size, "test")))(
            jax.random.split(jax.random.key(0), 4000)
        )
    )
    assert draws.min() >= 0 and draws.max() < n
    assert all(len(set(row)) == size for row in draws.tolist())  # no example twice
    # every example equally likely: 10 bins of indices, each expected 4000 * 7 / 10 = 2800
    counts = np.bincount(draws.ravel() * 10 // n, minlength=10)
    np.testing.assert_allclose(counts, 2800, rtol=0.1)  # binomial spread ~1.8%: margin > 5x
    with pytest.raises(ValueError, match="needs a PRNG key"):
        draw_minibatch(None, n, 3, "Trajectory")


@pytest.mark.parametrize(
    "solver",
    [
        diffrax.Tsit5(),
        diffrax.Dopri5(),
        diffrax.Dopri8(),
        diffrax.Bosh3(),
        diffrax.Heun(),
        diffrax.Midpoint(),
        diffrax.Euler(),
    ],
    ids=lambda s: type(s).__name__,
)
def test_nfe_count_matches_the_evaluations_the_solver_makes(solver):
    calls = []

    def field(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -y

    adaptive = not isinstance(solver, diffrax.Euler | diffrax.Midpoint)
    controller = (
        diffrax.PIDController(rtol=1e-4, atol=1e-6) if adaptive else diffrax.ConstantStepSize()
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        0.0,
        1.0,
        0.1 if not adaptive else None,
        jnp.ones(2),
        stepsize_controller=controller,
    )
    jax.block_until_ready(sol.ys)
    assert int(count_nfe(solver, sol.stats["num_steps"])) == len(calls) > 0


def test_nfe_of_implicit_solvers_is_refused_not_guessed():
    with pytest.raises(ValueError, match="not fixed"):
        count_nfe(diffrax.Kvaerno5(), 3)


# -- presets honour fit's keywords -----------------------------------------------------------------


def test_presets_honour_steps_per_call_and_stage_lists_refuse_it():
    data = nde.datasets.spiral(n_points=30)
    calls = []
    result = nde.fit(
        mlp_model(),
        data,
        "collocation",  # fuses all its steps into one call unless told otherwise
        steps=20,
        steps_per_call=5,
        callback=lambda step, loss, model: calls.append(step),
        progress=False,
    )
    assert len(result.losses) == 20
    assert calls == [5, 10, 15, 20]
    with pytest.raises(ValueError, match="steps_per_call"):
        nde.fit(
            mlp_model(),
            data,
            [nde.Stage(nde.Trajectory(), optax.adam(0.1), 3)],
            steps_per_call=2,
            progress=False,
        )
    with pytest.raises(ValueError, match="steps_per_call must be a positive integer"):
        nde.fit(mlp_model(), data, "trajectory", steps_per_call=0, progress=False)
