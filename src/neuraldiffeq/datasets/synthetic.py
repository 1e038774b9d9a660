"""Synthetic trajectories from the DiffEqFlux tutorials, solved to high precision with diffrax."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ..data import TimeSeries
from ..solve_config import SolveConfig

SPIRAL_MATRIX = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def spiral_field(t, u, args):
    """The cubic spiral of the DiffEqFlux tutorial: du/dt = (u**3) @ A."""
    return (u**3) @ jnp.asarray(SPIRAL_MATRIX, dtype=u.dtype)


def lotka_volterra_field(t, u, args):
    """Lotka–Volterra: args = (alpha, beta, delta, gamma); u = (prey, predator)."""
    alpha, beta, delta, gamma = args
    x, y = u[0], u[1]
    return jnp.stack([alpha * x - beta * x * y, delta * x * y - gamma * y])


def _reference_solve(field, ts, y0, args=None) -> np.ndarray:
    """A tight-tolerance (rtol 1e-8) solve in float64 where available."""
    with jax.enable_x64(True):
        ts64 = jnp.asarray(ts, dtype=jnp.float64)
        config = SolveConfig(
            "dopri8", rtol=1e-8, atol=1e-10, max_steps=100_000, sensitivity="direct"
        )
        sol = config.diffeqsolve(
            diffrax.ODETerm(field),
            ts64[0],
            ts64[-1],
            jnp.asarray(y0, dtype=jnp.float64),
            args=None if args is None else jnp.asarray(args, dtype=jnp.float64),
            saveat=diffrax.SaveAt(ts=ts64),
            throw=True,
        )
        return np.asarray(sol.ys)


def spiral(
    n_points: int = 30, t1: float = 1.5, u0=(2.0, 0.0), noise: float = 0.0, key=None
) -> TimeSeries:
    """The DiffEqFlux neural ODE tutorial spiral: u0 = [2, 0], du = (u**3) A.

    A = [[-0.1, 2], [-2, -0.1]].

    `n_points` equally spaced points on [0, t1] from a reference solve at rtol 1e-8; optional
    Gaussian observation noise of standard deviation `noise` (needs `key`).

    Example:
        >>> import neuraldiffeq as nde
        >>> data = nde.datasets.spiral()
        >>> data.ts.shape, data.ys.shape
        ((30,), (30, 2))
    """
    ts = np.linspace(0.0, t1, n_points)
    ys = _reference_solve(spiral_field, ts, u0)
    return TimeSeries(ts, _add_noise(ys, noise, key))


def lotka_volterra(
    n_points: int = 100,
    t1: float = 10.0,
    u0=(1.0, 1.0),
    params=(1.5, 1.0, 3.0, 1.0),
    noise: float = 0.0,
    key=None,
) -> TimeSeries:
    """Lotka–Volterra prey–predator data (the DiffEqFlux/SciML defaults: α=1.5, β=1, δ=3, γ=1).

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.datasets.lotka_volterra(n_points=50).ys.shape
        (50, 2)
    """
    ts = np.linspace(0.0, t1, n_points)
    ys = _reference_solve(lotka_volterra_field, ts, u0, params)
    return TimeSeries(ts, _add_noise(ys, noise, key))


def _add_noise(ys: np.ndarray, noise: float, key) -> np.ndarray:
    if noise == 0.0:
        return ys
    if key is None:
        raise ValueError("noise > 0 needs key=jax.random.key(...) so the data are reproducible.")
    return ys + noise * np.asarray(jax.random.normal(key, ys.shape))
