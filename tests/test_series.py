"""`fitting.series.evaluate`: the after-fit predictions and loss from one solve are the ones
three separate solves give."""

import jax.numpy as jnp
import numpy as np

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
