"""`nde.failure_policy` alone, in a hand-written optax loop: what `fit` does with a failed step.

A failed step (non-finite loss or gradient) is skipped and counted, the parameters step back
halfway towards the last ones that solved, the inner optimizer's state restarts there, and
`check_failures` raises `FitFailure` with fit's message once failures persist.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde

TARGET = jnp.array([1.0, -2.0, 3.0])


def loss(w):
    return jnp.sum((w - TARGET) ** 2)


def make_step(optimizer):
    @jax.jit
    def step(w, state, fail):
        value, grad = jax.value_and_grad(loss)(w)
        grad = jnp.where(fail, jnp.nan, grad)  # a solver failure: NaN gradient
        updates, state = optimizer.update(grad, state, w, value=value)
        return optax.apply_updates(w, updates), state, value

    return step


def test_a_failed_step_steps_back_halfway_restarts_and_is_counted():
    optimizer = nde.failure_policy(optax.adam(0.1))
    step = make_step(optimizer)
    w = jnp.zeros(3)
    state = optimizer.init(w)
    for _ in range(3):  # three good steps: adam moves and its moments fill
        good, w, state, _ = w, *step(w, state, False)
    assert int(state.inner_state[0].count) == 3
    before = w
    w, state, _ = step(w, state, True)
    np.testing.assert_allclose(w, before + 0.5 * (good - before), rtol=1e-6)  # halfway back
    assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
    assert not bool(state.last_finite)
    fresh = optax.adam(0.1).init(w)  # the inner state restarted at the new parameters
    for restarted, new in zip(
        jax.tree.leaves(state.inner_state), jax.tree.leaves(fresh), strict=True
    ):
        np.testing.assert_array_equal(restarted, new)
    np.testing.assert_array_equal(state.last_good, good)  # still the last that solved
    # a second failure in a row steps back again from where the first left the parameters
    again, state, _ = step(w, state, True)
    np.testing.assert_allclose(again, w + 0.5 * (good - w), rtol=1e-6)
    assert int(state.notfinite_count) == 2 and int(state.total_notfinite) == 2
    w, state, _ = step(again, state, False)  # a step that solves resets the run of failures
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 2
    assert bool(state.last_finite)


def test_a_non_finite_loss_with_a_finite_gradient_counts_too():
    optimizer = nde.failure_policy(optax.sgd(0.1), step_back=1.0)
    w = jnp.array([1.0, 2.0])
    state = optimizer.init(w)
    updates, state = optimizer.update(jnp.ones(2), state, w, value=jnp.inf)
    np.testing.assert_array_equal(updates, jnp.zeros(2))  # step_back=1: back to the last good
    assert int(state.total_notfinite) == 1
    updates, state = optimizer.update(jnp.ones(2), state, w)  # no value: the gradient decides
    np.testing.assert_allclose(updates, -0.1 * jnp.ones(2))
    assert int(state.notfinite_count) == 0


def test_a_hand_written_loop_converges_through_failures():
    optimizer = nde.failure_policy(optax.adam(0.1))
    step = make_step(optimizer)
    fails = np.random.default_rng(0).random(300) < 0.3
    w = jnp.zeros(3)
    state = optimizer.init(w)
    for fail in fails:
        w, state, _ = step(w, state, bool(fail))
        nde.check_failures(state)  # 50 in a row would raise; a few never do
    assert int(state.total_notfinite) == int(fails.sum())
    np.testing.assert_allclose(w, TARGET, atol=0.05)


def test_lbfgs_gets_its_extra_arguments_through_the_wrapper():
    optimizer = nde.failure_policy(optax.lbfgs())
    w = jnp.zeros(3)
    state = optimizer.init(w)

    @jax.jit
    def step(w, state):
        value, grad = jax.value_and_grad(loss)(w)
        updates, state = optimizer.update(grad, state, w, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(w, updates), state

    for _ in range(10):
        w, state = step(w, state)
    np.testing.assert_allclose(w, TARGET, atol=1e-4)


def test_persistent_failures_raise_fits_message():
    optimizer = nde.failure_policy(optax.adam(0.1))
    step = make_step(optimizer)
    w = jnp.zeros(3)
    state = optimizer.init(w)
    calls = 0
    with pytest.raises(nde.FitFailure) as info:
        for _ in range(100):
            w, state, _ = step(w, state, True)
            calls += 1
            nde.check_failures(state, max_failures=10, strategy="Quadratic")
    assert calls == 10 and info.value.result is None
    assert str(info.value) == (
        "10 consecutive steps of Quadratic had a non-finite loss or gradient, so the solver is "
        "failing on this model. Try a stiff solver (solver='kvaerno5'), looser tolerances or a "
        "larger max_steps, a smaller learning rate, or a smaller initialisation of the network."
    )


class Params(eqx.Module):
    w: jax.Array


class Failing(nde.AbstractStrategy):
    """loss = ||w - target||^2; NaN on steps whose key says so (a simulated solver failure)."""

    fail_rate: float = 0.0

    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        value = jnp.sum((model.w - target) ** 2)
        return jnp.where(jax.random.uniform(key) < self.fail_rate, jnp.nan, value)


def test_fit_raises_the_same_message_with_the_best_model():
    with pytest.raises(nde.FitFailure) as info:
        nde.fit(
            Params(jnp.zeros(3)),
            TARGET,
            Failing(fail_rate=1.0),
            optimizer=optax.adam(0.1),
            steps=30,
            max_failures=10,
            progress=False,
        )
    assert str(info.value) == (
        "10 consecutive steps of Failing had a non-finite loss or gradient, so the solver is "
        "failing on this model. Try a stiff solver (solver='kvaerno5'), looser tolerances or a "
        "larger max_steps, a smaller learning rate, or a smaller initialisation of the network. "
        "The best model so far is in error.result."
    )
    assert info.value.result.skipped == 10


def test_fit_is_the_hand_written_loop_with_the_wrapper():
    # fit's step is the wrapped optimizer's step: the same keys give the same losses
    strategy, steps = Failing(fail_rate=0.3), 40
    with pytest.warns(UserWarning, match="were skipped"):
        result = nde.fit(
            Params(jnp.zeros(3)),
            TARGET,
            strategy,
            optimizer=optax.adam(0.1),
            steps=steps,
            steps_per_call=1,
            progress=False,
        )
    optimizer = nde.failure_policy(optax.adam(0.1))
    key = jax.random.split(jax.random.key(0))[1]  # fit's first stage key
    w = jnp.zeros(3)
    state, losses = optimizer.init(w), []

    @jax.jit
    def step(w, state, key):
        value, grad = jax.value_and_grad(lambda w: strategy.loss(Params(w), TARGET, key))(w)
        updates, state = optimizer.update(grad, state, w, value=value)
        return optax.apply_updates(w, updates), state, value

    for _ in range(steps):
        key, step_key = jax.random.split(key)
        w, state, value = step(w, state, step_key)
        losses.append(float(value))
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    assert result.skipped == int(state.total_notfinite) > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: nde.failure_policy("adam"), "optimizer must be an optax optimizer"),
        (lambda: nde.failure_policy(optax.adam(0.1), step_back=0.0), "step_back must be"),
        (lambda: nde.failure_policy(optax.adam(0.1), step_back=1.5), "step_back must be"),
        (lambda: nde.check_failures(3, max_failures=0), "max_failures must be a positive"),
        (lambda: nde.check_failures(3, max_failures=True), "max_failures must be a positive"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_update_without_params_is_refused():
    optimizer = nde.failure_policy(optax.adam(0.1))
    state = optimizer.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="needs the parameters"):
        optimizer.update(jnp.ones(2), state)
