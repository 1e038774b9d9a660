"""The latent-ODE spirals of Chen et al. (2018), section 5.1: two directions, noisy, irregular."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from ..io.timeseries import TimeSeries


class Spirals(NamedTuple):
    """What `spirals` returns.

    Attributes:
        data: the noisy observations, `TimeSeries(ts (T,), ys (B, T, 2), mask)`; `mask` marks
            the `n_obs` observed points of each spiral (None when all `n_points` are observed).
        clean: the noise-free spirals on the same window, `(B, T, 2)` (the RMSE reference).
        clockwise: `(B,)` bool, the direction of each spiral.
        future_ts: `(n_future,)` times just after the window (for extrapolation).
        future: noise-free continuation of each spiral at `future_ts`, `(B, n_future, 2)`.
    """

    data: TimeSeries
    clean: np.ndarray
    clockwise: np.ndarray
    future_ts: np.ndarray
    future: np.ndarray


def spiral_curves(n_total: int = 1000, t1: float = 6 * np.pi, a: float = 0.0, b: float = 0.3):
    """The two underlying Archimedean spirals r = a + b θ on θ ∈ [0, t1], `(n_total, 2)` each.

    Counter-clockwise: centred at (5, 0), θ = t. Clockwise: its mirror image in the x-axis,
    centred at (-5, 0), so it turns the other way at the same speed.
    """
    theta = np.linspace(0.0, t1, n_total)
    r = a + b * theta
    ccw = np.stack([r * np.cos(theta) + 5.0, r * np.sin(theta)], axis=-1)
    cw = np.stack([r * np.cos(theta) - 5.0, -r * np.sin(theta)], axis=-1)
    return theta, cw, ccw


def spirals(
    n_spirals: int = 1000,
    n_points: int = 100,
    noise: float = 0.3,
    key: jax.Array | None = None,
    *,
    n_obs: int | None = None,
    n_total: int = 1000,
    n_future: int | None = None,
    t1: float = 6 * np.pi,
    a: float = 0.0,
    b: float = 0.3,
) -> Spirals:
    """Noisy windows of clockwise and counter-clockwise spirals (the paper's latent-ODE data).

    As in the paper's code: two Archimedean spirals r = a + b θ are sampled at `n_total` equally
    spaced times on [0, t1] (6π); each of the `n_spirals` examples picks a direction at random
    (probability ½ each) and a random window of `n_points` consecutive samples, starting at index
    n_points ≤ i0 ≤ n_total - n_points - n_future (so that `n_future` points after the window
    exist for extrapolation), and adds Gaussian noise of standard deviation `noise`. All windows
    share the time grid `ts = t_grid[:n_points]` (times relative to the window's start).

    `n_obs` (≤ `n_points`) subsamples each spiral: `n_obs` of its points, chosen uniformly at
    random and independently per spiral, are observed (`data.mask`), making the series irregular.
    `n_future` (default `n_points`) noise-free points after each window are returned for
    extrapolation.

    Example:
        >>> import jax, neuraldiffeq as nde
        >>> s = nde.datasets.spirals(n_spirals=8, n_obs=30, key=jax.random.key(0))
        >>> s.data.ys.shape, int(s.data.mask[0, :, 0].sum()), s.clean.shape
        ((8, 100, 2), 30, (8, 100, 2))
    """
    for name, value in (("n_spirals", n_spirals), ("n_points", n_points), ("n_total", n_total)):
        if not (isinstance(value, int | np.integer) and value > 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}.")
    n_future = n_points if n_future is None else n_future
    if not (isinstance(n_future, int | np.integer) and n_future >= 0):
        raise ValueError(f"n_future must be None or a non-negative integer, got {n_future!r}.")
    if 2 * n_points + n_future >= n_total:
        raise ValueError(
            f"n_total ({n_total}) must exceed 2 * n_points + n_future ({2 * n_points + n_future}) "
            "so that random windows (with room to extrapolate) fit in the trajectory; raise "
            "n_total or lower n_points / n_future."
        )
    if n_obs is not None and not (isinstance(n_obs, int | np.integer) and 2 <= n_obs <= n_points):
        raise ValueError(
            f"n_obs must be None or an integer in [2, n_points={n_points}], got {n_obs!r}."
        )
    if not (np.isscalar(noise) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a non-negative number, got {noise!r}.")
    if key is None:
        raise ValueError("spirals needs key=jax.random.key(...) so that the data are reproducible.")

    grid, cw, ccw = spiral_curves(n_total, t1, a, b)
    k_dir, k_start, k_noise, k_obs = jax.random.split(key, 4)
    clockwise = np.asarray(jax.random.bernoulli(k_dir, 0.5, (n_spirals,)))
    starts = np.asarray(
        jax.random.randint(k_start, (n_spirals,), n_points, n_total - n_points - n_future + 1)
    )
    curves = np.where(clockwise[:, None, None], cw[None], ccw[None])  # (B, n_total, 2)
    window = starts[:, None] + np.arange(n_points)[None]
    clean = np.take_along_axis(curves, window[..., None], axis=1)
    future_idx = starts[:, None] + n_points + np.arange(n_future)[None]
    future = np.take_along_axis(curves, future_idx[..., None], axis=1)
    ys = clean + noise * np.asarray(jax.random.normal(k_noise, clean.shape))
    ts = grid[:n_points] - grid[0]
    future_ts = grid[n_points : n_points + n_future] - grid[0]

    mask = None
    if n_obs is not None and n_obs < n_points:
        # The n_obs smallest of per-point uniforms: a uniform random subset, independent per spiral.
        scores = np.asarray(jax.random.uniform(k_obs, (n_spirals, n_points)))
        chosen = np.argsort(scores, axis=1)[:, :n_obs]
        observed = np.zeros((n_spirals, n_points), dtype=bool)
        np.put_along_axis(observed, chosen, True, axis=1)
        mask = np.repeat(observed[..., None], 2, axis=-1)
    return Spirals(TimeSeries(ts, ys, mask), clean, clockwise, future_ts, future)
