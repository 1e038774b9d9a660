"""FFJORD's toy 2-D densities: shapes, seeding, and the geometry of each definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import neuraldiffeq as nde


@pytest.mark.parametrize("name", nde.datasets.TOY_2D)
def test_shapes_seeding_and_finiteness(name):
    a = nde.datasets.toy_2d(name, 1001, jax.random.key(0))  # odd n: every generator returns n
    b = nde.datasets.toy_2d(name, 1001, jax.random.key(0))
    c = nde.datasets.toy_2d(name, 1001, jax.random.key(1))
    assert a.shape == (1001, 2) and a.dtype == jnp.float32
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # All of FFJORD's toy sets live in roughly [-4, 4]^2 and are centred near the origin.
    assert np.abs(np.asarray(a)).max() < 6.0
    assert np.linalg.norm(np.asarray(a).mean(0)) < 0.6


def test_8gaussians_entropy_matches_the_generator():
    """Monte Carlo cross-entropy under the true mixture is the issue's ≈ 2.833 nats."""
    x = np.asarray(nde.datasets.toy_2d("8gaussians", 40_000, jax.random.key(3)), np.float64)
    s = 1 / np.sqrt(2)
    centers = 4 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    centers /= 1.414
    sigma = 0.5 / 1.414
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    logp = logsumexp(-0.5 * d2 / sigma**2, axis=1) - np.log(8) - np.log(2 * np.pi * sigma**2)
    assert abs(-logp.mean() - 2.833) < 0.02


def test_checkerboard_is_uniform_on_the_black_squares():
    x = np.asarray(nde.datasets.toy_2d("checkerboard", 20_000, jax.random.key(4)))
    assert np.all(np.abs(x) <= 4.0)
    parity = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert np.all(parity == 0)  # 8 of the 16 2x2 squares: density 1/32, entropy log 32
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=4, range=[[-4, 4], [-4, 4]])[0]
    occupied = counts[counts > 0]
    assert len(occupied) == 8 and occupied.min() > 0.8 * occupied.mean()


def test_rings_and_circles_radii():
    rings = np.asarray(nde.datasets.toy_2d("rings", 4000, jax.random.key(5)))
    radii = np.linalg.norm(rings, axis=1)
    for r in (0.75, 1.5, 2.25, 3.0):
        assert np.sum(np.abs(radii - r) < 0.3) > 800
    circles = np.asarray(nde.datasets.toy_2d("circles", 4000, jax.random.key(6)))
    radii = np.linalg.norm(circles, axis=1)
    assert np.sum(np.abs(radii - 3.0) < 0.5) > 1800 and np.sum(np.abs(radii - 1.5) < 0.5) > 1800


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown toy density"):
        nde.datasets.toy_2d("9gaussians", 10, jax.random.key(0))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        nde.datasets.toy_2d("moons", 0, jax.random.key(0))
    with pytest.raises(ValueError, match="key must be"):
        nde.datasets.toy_2d("moons", 10, 0)
