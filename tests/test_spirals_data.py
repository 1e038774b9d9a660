"""nde.datasets.spirals: shapes, directions, windows, noise level, subsampling, validation."""

import jax
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.datasets.latent_spirals import spiral_curves


@pytest.fixture(scope="module")
def data():
    return nde.datasets.spirals(
        n_spirals=1000, n_points=100, noise=0.3, key=jax.random.key(0), n_obs=30
    )


def test_shapes_and_time_grid(data):
    assert data.data.ys.shape == (1000, 100, 2)
    assert data.clean.shape == (1000, 100, 2)
    assert data.clockwise.shape == (1000,)
    assert data.future.shape == (1000, 100, 2) and data.future_ts.shape == (100,)
    ts = np.asarray(data.data.ts)
    np.testing.assert_allclose(ts, np.linspace(0, 6 * np.pi, 1000)[:100], rtol=1e-6)
    assert np.all(np.asarray(data.future_ts) > ts[-1])


def test_subsampling_is_irregular_and_per_spiral(data):
    mask = np.asarray(data.data.mask)
    assert np.all(mask[..., 0] == mask[..., 1])  # both coordinates observed together
    assert np.all(mask[..., 0].sum(axis=1) == 30)
    assert len({tuple(np.flatnonzero(m)) for m in mask[:50, :, 0]}) == 50  # differs per spiral
    gaps = np.diff(np.flatnonzero(mask[0, :, 0]))
    assert gaps.min() != gaps.max()  # irregular
    full = nde.datasets.spirals(n_spirals=4, key=jax.random.key(0))
    assert full.data.mask is None


def test_directions_half_and_half_and_turning_the_right_way(data):
    assert 0.45 < data.clockwise.mean() < 0.55
    centre = np.where(data.clockwise[:, None], [-5.0, 0.0], [5.0, 0.0])[:, None]
    rel = data.clean - centre
    vel = np.diff(data.clean, axis=1)
    cross = rel[:, :-1, 0] * vel[..., 1] - rel[:, :-1, 1] * vel[..., 0]  # > 0: anticlockwise
    assert np.all(cross[data.clockwise] < 0)
    assert np.all(cross[~data.clockwise] > 0)
    # Archimedean: the radius grows linearly in the angle, r = 0.3 * theta
    theta, cw, ccw = spiral_curves()
    np.testing.assert_allclose(np.hypot(ccw[:, 0] - 5, ccw[:, 1]), 0.3 * theta, atol=1e-9)
    np.testing.assert_allclose(np.hypot(cw[:, 0] + 5, cw[:, 1]), 0.3 * theta, atol=1e-9)


def test_windows_are_random_consecutive_pieces_of_the_curves(data):
    _, cw, ccw = spiral_curves()
    starts = []
    for i in range(20):
        curve = cw if data.clockwise[i] else ccw
        start = int(np.argmin(np.sum((curve - data.clean[i, 0]) ** 2, axis=1)))
        np.testing.assert_allclose(data.clean[i], curve[start : start + 100], atol=1e-6)
        np.testing.assert_allclose(data.future[i], curve[start + 100 : start + 200], atol=1e-6)
        assert 100 <= start <= 800
        starts.append(start)
    assert len(set(starts)) > 15


def test_noise_level(data):
    mask = np.asarray(data.data.mask)
    resid = (np.asarray(data.data.ys) - data.clean)[mask]
    assert abs(resid.std() - 0.3) < 0.01  # 60 000 residuals: standard error ~ 0.001
    assert abs(resid.mean()) < 0.01
    clean = nde.datasets.spirals(n_spirals=3, noise=0.0, key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(clean.data.ys), clean.clean, atol=1e-6)


def test_seeded():
    a = nde.datasets.spirals(n_spirals=5, n_obs=10, key=jax.random.key(3))
    b = nde.datasets.spirals(n_spirals=5, n_obs=10, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(a.data.ys), np.asarray(b.data.ys))
    np.testing.assert_array_equal(np.asarray(a.data.mask), np.asarray(b.data.mask))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"key": None}, "key"),
        ({"n_obs": 101}, "n_obs"),
        ({"n_obs": 1}, "n_obs"),
        ({"noise": -1.0}, "noise"),
        ({"n_points": 500}, "n_total"),
        ({"n_spirals": 0}, "n_spirals"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"n_spirals": 4, "key": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        nde.datasets.spirals(**args)
