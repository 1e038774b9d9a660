"""The stochastic Lorenz attractor of Li et al. 2020 (section 7.2), torchsde's latent SDE data."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ..io.timeseries import TimeSeries
from ..solve.config import SolveConfig

#: Drift coefficients (sigma, rho, beta) and multiplicative noise scales of the paper's set.
LORENZ_DRIFT = (10.0, 28.0, 8.0 / 3.0)
LORENZ_NOISE = (0.1, 0.28, 0.3)


def _drift(t, x, args):
    a1, a2, a3 = LORENZ_DRIFT
    return jnp.stack([a1 * (x[1] - x[0]), a2 * x[0] - x[1] - x[0] * x[2], x[0] * x[1] - a3 * x[2]])


def _diffusion(t, x, args):
    import lineax as lx

    return lx.DiagonalLinearOperator(jnp.asarray(LORENZ_NOISE, x.dtype) * x)


def stochastic_lorenz(
    n_series: int = 1024,
    *,
    t0: float = 0.0,
    t1: float = 2.0,
    n_obs: int = 100,
    noise_std: float = 0.01,
    dt: float = 1e-3,
    key: jax.Array,
) -> TimeSeries:
    """Paths of the stochastic Lorenz system, as torchsde's `latent_sde_lorenz.py` makes them.

    dx = a(x) dt + diag(b·x) dW (Itô) with the Lorenz drift (σ, ρ, β) = (10, 28, 8/3) and
    b = (0.1, 0.28, 0.3), from x(t0) ~ N(0, I), solved by Euler–Maruyama with steps `dt` and
    observed at `n_obs` equally spaced times on [t0, t1]; then normalised (each coordinate by the
    mean and standard deviation over all series and times) and observed with Gaussian noise of
    standard deviation `noise_std`. Returns a `TimeSeries` with ys of shape (n_series, n_obs, 3).

    Example:
        >>> import jax, neuraldiffeq as nde
        >>> data = nde.datasets.stochastic_lorenz(8, n_obs=20, key=jax.random.key(0))
        >>> data.ys.shape
        (8, 20, 3)
    """
    for name, value in (("n_series", n_series), ("n_obs", n_obs)):
        if isinstance(value, bool) or not (isinstance(value, int | np.integer) and value >= 2):
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
    if not t1 > t0:
        raise ValueError(f"t1 must be after t0, got t0={t0}, t1={t1}.")
    k0, k_bm, k_noise = jax.random.split(key, 3)
    ts = jnp.linspace(t0, t1, n_obs)
    config = SolveConfig("euler", dt0=dt, max_steps=None, sensitivity="direct")

    def one(x0, k):
        bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt / 4, shape=(3,), key=k)
        terms = diffrax.MultiTerm(diffrax.ODETerm(_drift), diffrax.ControlTerm(_diffusion, bm))
        return config.diffeqsolve(terms, t0, t1, x0, saveat=diffrax.SaveAt(ts=ts), throw=True).ys

    x0 = jax.random.normal(k0, (n_series, 3))
    xs = np.asarray(jax.jit(jax.vmap(one))(x0, jax.random.split(k_bm, n_series)))
    xs = (xs - xs.mean(axis=(0, 1))) / xs.std(axis=(0, 1), ddof=1)
    xs = xs + noise_std * np.asarray(jax.random.normal(k_noise, xs.shape))
    return TimeSeries(np.asarray(ts), xs)
