"""`fitting.series.evaluate`: the after-fit predictions and loss from one solve are the ones
three separate solves give."""

import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.fitting.series import evaluate
from neuraldiffeq.fitting.strategies import batch_solve


def test_one_solve_gives_the_dense_curve_the_observed_values_and_the_loss():
    ts = np.array([0.0, 0.3, 0.35, 1.1, 1.7, 2.0])
    ys = (
        np.stack([np.cos(ts), np.sin(ts)], -1)[None].repeat(2, 0)
        * np.array([1.0, 0.5])[:, None, None]
    )
    mask = np.ones(ys.shape, bool)
    mask[1, 0, 0] = False  # a series whose first value is missing: Trajectory interpolates it
    mask[0, 3, 1] = False
    model = nde.NeuralODE(lambda t, y, args: jnp.stack([y[1], -y[0]]) - 0.1 * y)
    fitted = nde.TimeSeries(ts[:4], ys[:, :4], mask[:, :4])  # the last two held out
    prepared = nde.Trajectory().prepare(model, fitted)
    # a dense grid that shares its ends with the data and has a point 1e-9 from an observed time
    dense = np.sort(np.append(np.linspace(0.0, 2.0, 30), 0.35 + 1e-9))

    (at_dense, at_obs), loss = evaluate(model, dense, ts, prepared)

    y0s = prepared.ys[:, 0]
    assert at_dense.shape == (2, 31, 2) and at_obs.shape == (2, 6, 2)
    np.testing.assert_allclose(
        at_dense, batch_solve(model, jnp.asarray(dense), y0s), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        at_obs, batch_solve(model, jnp.asarray(ts), y0s), rtol=1e-5, atol=1e-6
    )
    expected = nde.Trajectory().loss(model, prepared, None)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    assert float(loss) > 1e-3  # the field is not the data's: the comparison is not vacuous


def _compiled_evaluations(records):
    return [
        r.threadName
        for r in records
        if r.getMessage().startswith("Finished XLA compilation of jit(_solve_and_score)")
    ]


# long tier: a whole fit_series (three stages) in a thread-watching program count; the default
# run checks the same background build on `fit` (test_fit's also_build test)
@pytest.mark.long
def test_the_evaluation_compiled_while_fitting_is_the_program_that_runs(caplog):
    # fit_series compiles its after-fit evaluation in the background while the last stage
    # trains; the call after the fit finds that program (no compile on the calling thread) and
    # gives what compiling it afresh on the calling thread gives, bit for bit
    import equinox as eqx
    import jax
    import optax

    from neuraldiffeq.fitting.series import fit_series

    ts = np.linspace(0.0, 2.0, 9)
    data = nde.TimeSeries(ts, np.stack([np.cos(ts), -np.sin(ts)], -1))
    weights = eqx.nn.Linear(2, 2, use_bias=False, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(weights), "tsit5")
    stages = [nde.Stage(nde.Trajectory(), optax.adam(0.05), steps=2, steps_per_call=2)]
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        fitted = fit_series(data, model, stages, progress=False)
    built = _compiled_evaluations(caplog.records)
    assert len(built) == 1 and built[0] != "MainThread", built

    caplog.clear()
    jax.clear_caches()  # compiled afresh, on this thread
    norm = fitted.normaliser
    prepared = nde.Trajectory().prepare(fitted.model, norm.forward(data))
    dense = norm.times(np.linspace(0.0, 2.0, 400))
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        (_, at_obs), loss = evaluate(fitted.model, dense, norm.times(ts), prepared)
    assert _compiled_evaluations(caplog.records) == ["MainThread"]
    np.testing.assert_array_equal(norm.states_back(at_obs), fitted.predictions)
    assert float(loss) == fitted.metrics["trajectory_loss_normalised"] > 0
