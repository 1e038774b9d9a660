"""Synthetic trajectories from the DiffEqFlux tutorials, solved to high precision with diffrax."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ..io.timeseries import TimeSeries
from ..solve.config import SolveConfig

SPIRAL_MATRIX = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def spiral_field(t, u, args):
    """The cubic spiral of the DiffEqFlux tutorial: du/dt = (u**3) @ A."""
    return (u**3) @ jnp.asarray(SPIRAL_MATRIX, dtype=u.dtype)


def lotka_volterra_field(t, u, args):
    """Lotka–Volterra: args = (alpha, beta, delta, gamma); u = (prey, predator)."""
    alpha, beta, delta, gamma = args
    x, y = u[0], u[1]
    return jnp.stack([alpha * x - beta * x * y, delta * x * y - gamma * y])


#: Robertson's reaction rates (k1, k2, k3) and initial state (the classic ROBER problem)
ROBERTSON_RATES = (0.04, 3e7, 1e4)
ROBERTSON_Y0 = (1.0, 0.0, 0.0)


def robertson_reactions(y, rates):
    """Robertson's three reaction rates r1 = k1·y1, r2 = k2·y2², r3 = k3·y2·y3 at state y."""
    k1, k2, k3 = rates
    return k1 * y[0], k2 * y[1] ** 2, k3 * y[1] * y[2]


def robertson_field(t, y, args):
    """Robertson's kinetics: args = (k1, k2, k3); dy/dt = (-r1 + r3, r1 - r2 - r3, r2)."""
    r1, r2, r3 = robertson_reactions(y, args)
    return jnp.stack([-r1 + r3, r1 - r2 - r3, r2])


def _reference_solve(
    field, ts, y0, args=None, *, solver="dopri8", rtol=1e-8, atol=1e-10
) -> np.ndarray:
    """A tight-tolerance (default dopri8, rtol 1e-8) solve in float64 where available; with the
    compilation cache on, its result is kept on disk (`compilation.exported.cached_array`),
    since tracing the solve costs most of a dataset's construction in every new process."""
    from ..compilation.exported import cached_array

    kwargs = {"solver": solver, "rtol": rtol, "atol": atol}
    return cached_array(_solve_reference, field, ts, y0, args, **kwargs)


def _solve_reference(field, ts, y0, args, *, solver, rtol, atol) -> np.ndarray:
    with jax.enable_x64(True):
        ts64 = jnp.asarray(ts, dtype=jnp.float64)
        config = SolveConfig(solver, rtol=rtol, atol=atol, max_steps=100_000, sensitivity="direct")
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


def robertson(
    n_points: int = 40,
    t0: float = 1e-5,
    t1: float = 1e5,
    rates=ROBERTSON_RATES,
    y0=ROBERTSON_Y0,
) -> TimeSeries:
    """Robertson's stiff chemical kinetics (ROBER) at `n_points` log-spaced times on [t0, t1].

    y1' = -k1·y1 + k3·y2·y3, y2' = k1·y1 - k3·y2·y3 - k2·y2², y3' = k2·y2², with k1 = 0.04,
    k2 = 3e7, k3 = 1e4 and y0 = (1, 0, 0) by default; y1 + y2 + y3 stays 1. The reference solve
    runs from t = 0 with the implicit `"kvaerno5"` at rtol 1e-10, atol 1e-14 (an explicit solver
    would need some 10^7 steps to reach t = 1e5). y2 stays below 4e-5: scale the misfit per
    species.

    Example:
        >>> import neuraldiffeq as nde
        >>> data = nde.datasets.robertson()
        >>> data.ts.shape, data.ys.shape
        ((40,), (40, 3))
        >>> round(float(data.ys[-1].sum()), 6)
        1.0
    """
    if not 0.0 < t0 < t1:
        raise ValueError(f"robertson needs 0 < t0 < t1 (log-spaced times), got t0={t0}, t1={t1}.")
    with jax.enable_x64(True):
        ts = np.asarray(jnp.logspace(np.log10(t0), np.log10(t1), n_points))
    solve_ts = np.concatenate([np.zeros(1), ts])  # from t = 0, saved from t0 on
    ys = _reference_solve(
        robertson_field, solve_ts, y0, rates, solver="kvaerno5", rtol=1e-10, atol=1e-14
    )[1:]
    return TimeSeries(ts, ys)


def _add_noise(ys: np.ndarray, noise: float, key) -> np.ndarray:
    if noise == 0.0:
        return ys
    if key is None:
        raise ValueError("noise > 0 needs key=jax.random.key(...) so the data are reproducible.")
    return ys + noise * np.asarray(jax.random.normal(key, ys.shape))
