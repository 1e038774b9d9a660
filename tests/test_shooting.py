"""Multiple shooting: DiffEqFlux's segment rule, reduction to single shooting, vmap, states."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq._checks import draw_minibatch
from neuraldiffeq.fitting.shooting import auto_group_size, segment_ranges


def julia_ranges(datasize, groupsize):
    """DiffEqFlux: [i:min(datasize, i + groupsize - 1) for i in 1:(groupsize - 1):(datasize - 1)],
    1-based inclusive, converted to 0-based inclusive (first, last)."""
    out = []
    i = 1
    while i <= datasize - 1:
        out.append((i - 1, min(datasize, i + groupsize - 1) - 1))
        i += groupsize - 1
    return out


@pytest.mark.parametrize(
    "n,g", [(30, 3), (30, 5), (7, 3), (6, 3), (10, 10), (11, 4), (2, 2), (100, 7), (21, 5)]
)
def test_segment_ranges_match_diffeqflux(n, g):
    ranges = segment_ranges(n, g)
    assert ranges == julia_ranges(n, g)
    assert ranges[0][0] == 0 and ranges[-1][1] == n - 1
    for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False):
        assert b == c  # consecutive segments share their end point


def test_segment_ranges_errors_and_auto():
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        segment_ranges(10, 1)
    with pytest.raises(ValueError, match="larger than the number of time points"):
        segment_ranges(10, 11)
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        nde.MultipleShooting(group_size=1)
    with pytest.raises(ValueError, match="continuity must be a non-negative"):
        nde.MultipleShooting(group_size=3, continuity=-1.0)
    assert auto_group_size(30) == 7 and len(segment_ranges(30, 7)) == 5


def spiral_model(seed=0, width=8):
    mlp = eqx.nn.MLP(2, 2, width, 1, activation=jnp.tanh, key=jax.random.key(seed))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))


def test_group_size_T_is_single_shooting():
    data = nde.datasets.spiral(n_points=12)
    model = spiral_model()
    single = nde.Trajectory()
    shoot = nde.MultipleShooting(group_size=12, continuity=100.0)
    a = float(single.loss(model, single.prepare(model, data), None))
    b = float(shoot.loss(model, shoot.prepare(model, data), None))
    assert b == a


def test_loss_matches_a_python_loop_reference():
    """The vmapped loss equals segment-by-segment solves + L1 continuity, also for a batch and a
    short last segment; and the loss contains one solver loop (vmap), not one per segment."""
    data = nde.datasets.spiral(n_points=11, t1=1.0)
    ys = np.stack([np.asarray(data.ys), 0.9 * np.asarray(data.ys)])  # (2, 11, 2)
    data = nde.TimeSeries(data.ts, ys)
    model = spiral_model(1)
    strategy = nde.MultipleShooting(group_size=4, continuity=50.0)
    prepared = strategy.prepare(model, data)
    got = float(strategy.loss(model, prepared, None))
    ranges = segment_ranges(11, 4)
    assert ranges[-1] == (9, 10)  # the short last segment is padded inside the strategy
    expected = 0.0
    for b in range(2):
        preds = []
        for a, e in ranges:
            pred = model(data.ts[a : e + 1], data.ys[b, a])
            expected += float(jnp.sum((pred - data.ys[b, a : e + 1]) ** 2))
            preds.append(pred)
        for p, q in zip(preds, preds[1:], strict=False):
            expected += 50.0 * float(jnp.sum(jnp.abs(p[-1] - q[0])))
    assert got == pytest.approx(expected, rel=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda: strategy.loss(model, prepared, None))())
    single = nde.Trajectory()
    single_jaxpr = str(
        jax.make_jaxpr(lambda: single.loss(model, single.prepare(model, data), None))()
    )
    # as many solver loops as one (vmapped) solve has, not one per segment
    assert jaxpr.count("while[") == single_jaxpr.count("while[") > 0


def test_true_field_gives_near_zero_loss_and_continuity_counts():
    data = nde.datasets.spiral(n_points=20, t1=5.0)
    strategy = nde.MultipleShooting(group_size=3, continuity=200.0)
    true = nde.NeuralODE(nde.datasets.synthetic.spiral_field, rtol=1e-6, atol=1e-8)
    prepared = strategy.prepare(true, data)
    # float32 round-off only: ~2e-5 of the data's sum of squares on a CPU, ~3e-5 on a GPU
    # (mostly the continuity term, 200 x the segments' 1e-6 jumps)
    scale = float(jnp.sum(data.ys**2))
    assert float(strategy.loss(true, prepared, None)) < 1e-4 * scale
    wrong = nde.NeuralODE(lambda t, y, a: -y)
    no_cont = nde.MultipleShooting(group_size=3, continuity=0.0)
    assert float(strategy.loss(wrong, prepared, None)) > float(no_cont.loss(wrong, prepared, None))


def test_fit_with_learned_segment_states():
    data = nde.datasets.spiral(n_points=13, t1=1.5)
    strategy = nde.MultipleShooting(group_size=4, continuity=10.0)
    wrapped = strategy.with_states(spiral_model(2), data)
    assert wrapped.states.shape == (1, 4, 2)
    np.testing.assert_allclose(wrapped.states[0], data.ys[::3][:4])
    # the states train (gradients reach them) and the wrapped model still solves like the model
    result = nde.fit(
        wrapped,
        data,
        strategy,
        optimizer=optax.adam(0.02),
        steps=30,
        steps_per_call=30,
        progress=False,
    )
    assert result.stages[0].best_loss < result.stages[0].first_loss
    assert not np.allclose(result.model.states, wrapped.states)
    out = eqx.filter_eval_shape(lambda m: m(data.ts, data.ys[0]), result.model)
    assert out.shape == (13, 2) and result.model.field is result.model.model.field
    with pytest.raises(ValueError, match="SegmentStates.states has shape"):
        other = nde.MultipleShooting(group_size=3)
        other.loss(wrapped, other.prepare(wrapped, data), None)


def test_masked_segment_start_is_interpolated():
    # One empty cell on a segment start (index 2 of 0-2, 2-4, 4-6) no longer stops the fit:
    # the start is interpolated between its neighbours, and the misfit still ignores it.
    data = nde.datasets.spiral(n_points=7)
    mask = np.ones((7, 2), bool)
    mask[2, 0] = False
    holey = nde.TimeSeries(data.ts, data.ys, mask)
    prepared = nde.MultipleShooting(group_size=3).prepare(spiral_model(0), holey)
    ys = np.asarray(data.ys)
    expected = (ys[1, 0] + ys[3, 0]) / 2  # uniform grid: the midpoint
    assert abs(float(prepared["y0"][0, 1, 0]) - expected) < 1e-6
    assert float(prepared["y0"][0, 1, 1]) == ys[2, 1]  # the observed component is kept
    assert abs(float(prepared["y0"][0, 1, 0]) - ys[2, 0]) > 1e-3  # not the hidden true value
    model = nde.NeuralODE(lambda t, y, args: -y)
    assert np.isfinite(float(nde.MultipleShooting(group_size=3).loss(model, prepared, None)))
    empty = np.ones((7, 2), bool)
    empty[:, 1] = False
    with pytest.raises(ValueError, match="state 1 of trajectory 0 has no observed value"):
        nde.MultipleShooting(group_size=3).prepare(
            spiral_model(0), nde.TimeSeries(data.ts, data.ys, empty)
        )


def test_minibatch_loss_is_the_full_loss_of_the_drawn_trajectories():
    # Three trajectories; a minibatch of two is exactly the full-batch loss of the two drawn.
    base = nde.datasets.spiral(n_points=11, t1=1.0)
    ys = np.stack([np.asarray(base.ys) * s for s in (1.0, 0.9, 1.1)])
    data = nde.TimeSeries(base.ts, ys)
    model = spiral_model(1)
    full = nde.MultipleShooting(group_size=4, continuity=50.0)
    mini = nde.MultipleShooting(group_size=4, continuity=50.0, batch_size=2)
    assert mini.stochastic and not full.stochastic
    key = jax.random.key(3)
    chosen = np.asarray(draw_minibatch(key, 3, 2, "test"))
    assert len(set(chosen.tolist())) == 2
    drawn = nde.TimeSeries(base.ts, ys[chosen])
    expected = float(full.loss(model, full.prepare(model, drawn), None))
    got = float(mini.loss(model, mini.prepare(model, data), key))
    assert got == pytest.approx(expected, rel=1e-5)
    # ...and fit trains through it
    result = nde.fit(model, data, mini, optimizer=optax.adam(1e-2), steps=5, progress=False)
    assert result.losses.shape == (5,) and np.all(np.isfinite(result.losses))


def test_minibatch_size_is_validated():
    data = nde.datasets.spiral(n_points=11, t1=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        nde.MultipleShooting(group_size=3, batch_size=0)
    with pytest.raises(ValueError, match="exceeds the 1 trajectories"):
        nde.MultipleShooting(group_size=3, batch_size=2).prepare(spiral_model(0), data)


@pytest.mark.long  # the three stages of "auto"
def test_missing_first_value_starts_from_the_next_observation_and_auto_runs():
    # An empty first cell (a CSV with a gap in its first row) no longer stops the "auto" preset:
    # every stage starts from the held-back next observation, and the misfit skips the gap.
    data = nde.datasets.spiral(n_points=12)
    mask = np.ones((12, 2), bool)
    mask[0, 1] = False
    holey = nde.TimeSeries(data.ts, data.ys.at[0, 1].set(123.0), mask)
    prepared = nde.Trajectory().prepare(spiral_model(0), holey)
    assert float(prepared.ys[0, 0, 1]) == float(data.ys[1, 1])  # not the 123 under the mask
    assert float(prepared.ys[0, 0, 0]) == float(data.ys[0, 0])  # the observed part is kept
    result = nde.fit(spiral_model(0), holey, "auto", steps=5, progress=False)
    assert np.all(np.isfinite(result.losses))
