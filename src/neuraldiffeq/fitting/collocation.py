"""Two-stage collocation: smooth the data once, then fit the vector field to the smoothed slopes.

Stage one (`collocate`) estimates, at every observation time t_i, the state u(t_i) by a
kernel-weighted local-linear regression and its derivative du/dt(t_i) by a kernel-weighted
local-quadratic regression (Liang & Wu 2008; DiffEqFlux's `collocate_data`). Stage two
(`Collocation`, a fitting strategy) minimises sum_i ||du_hat_i - f(t_i, u_hat_i)||^2: no ODE is
solved, so a step costs one batched evaluation of the field. The bandwidths are chosen from the
data unless given (see `collocate`), and `collocate(..., info=True)` reports them with an
estimate of the derivatives' error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_array, check_state_shapes, series_shapes
from .losses import l2
from .strategies import AbstractStrategy, as_timeseries

_SQRT2 = math.sqrt(2.0)


def _kernel_formulas(xp) -> dict[str, Callable]:
    """The kernels written once for any array module: `jnp` for the compiled smoother, `np`
    (float64) for the bandwidth selector."""

    def compact(fn):
        return lambda z: xp.where(xp.abs(z) <= 1.0, fn(z), 0.0)

    return {
        "epanechnikov": compact(lambda z: 0.75 * (1.0 - z**2)),
        "uniform": compact(lambda z: 0.5 * xp.ones_like(z)),
        "triangular": compact(lambda z: 1.0 - xp.abs(z)),
        "quartic": compact(lambda z: (15.0 / 16.0) * (1.0 - z**2) ** 2),
        "triweight": compact(lambda z: (35.0 / 32.0) * (1.0 - z**2) ** 3),
        "tricube": compact(lambda z: (70.0 / 81.0) * (1.0 - xp.abs(z) ** 3) ** 3),
        "gaussian": lambda z: xp.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi),
        "cosine": compact(lambda z: (math.pi / 4.0) * xp.cos(0.5 * math.pi * z)),
        "logistic": lambda z: 1.0 / (xp.exp(z) + 2.0 + xp.exp(-z)),
        "sigmoid": lambda z: 2.0 / (math.pi * (xp.exp(z) + xp.exp(-z))),
        "silverman": lambda z: (
            0.5 * xp.exp(-xp.abs(z) / _SQRT2) * xp.sin(xp.abs(z) / _SQRT2 + math.pi / 4.0)
        ),
    }


#: The eleven kernels of DiffEqFlux, K(z) with z = (t_j - t_i) / bandwidth.
KERNELS: dict[str, Callable[[jax.Array], jax.Array]] = _kernel_formulas(jnp)
_NP_KERNELS = _kernel_formulas(np)

# Where each kernel is summed: 1 for compact kernels; for the others, the |z| beyond which the
# weight is below ~1e-9 of its peak (invisible in float32 and float64 sums alike). Truncating
# keeps the cost O(n * window) instead of O(n^2) and keeps polynomial fits exact.
_SUPPORT = {
    "gaussian": 6.5,
    "logistic": 22.0,
    "sigmoid": 22.0,
    "silverman": 30.0,
}
# The |z| within which a weight counts as "a point the fit can lean on" (weight >= 1e-6 of the
# peak): the local-quadratic fit needs three such points at every time.
_EFFECTIVE = {"gaussian": 5.25, "logistic": 14.5, "sigmoid": 14.5, "silverman": 19.0}
_MIN_WEIGHT = 1e-6


def default_bandwidth(n: int) -> float:
    """h = n^(-1/5) * n^(-3/35) * (log n)^(-1/16), on time normalised to [0, 1] (Liang & Wu).

    Example:
        >>> from neuraldiffeq.fitting.collocation import default_bandwidth
        >>> round(default_bandwidth(30), 3)
        0.351
    """
    return n ** (-1 / 5) * n ** (-3 / 35) * math.log(n) ** (-1 / 16)


# -- the data-driven bandwidth ---------------------------------------------------------------

#: Bandwidths tried by the selector: a geometric grid, 2**(1/4) apart, from just above the
#: smallest workable bandwidth to half the span (wider windows only flatten the series).
_GRID_RATIO = 2.0**0.25
_GRID_TOP = 0.5
# Richardson's bias estimate compares h with 2h: four grid steps up.
_DOUBLE = 4
# At most this many evaluation points score a bandwidth (evenly spread over the series,
# both ends included): the score is a mean, and 400 points estimate it well at any length.
_MAX_EVAL = 400
# The grid search stops this many steps (a factor 4 in h) past every state's minima: the wide
# windows are the expensive ones, and a score that has risen for a factor 4 does not come back.
_PAST_MINIMUM = 8
# A squared-bias estimate counts as measured (and bounds the bias at wider windows) when it is
# this many times the variance of the noise in it.
_CLEAR = 8.0
# Rows x window x columns per block of the selector's numpy arithmetic (memory bound).
_BLOCK = 2_000_000


@dataclasses.dataclass(frozen=True)
class CollocationInfo:
    """What `collocate(..., info=True)` chose and how good it expects the derivatives to be.

    All arrays have one entry per state (the last axis of `ys`); trajectories of a batch share
    their state's bandwidths. Bandwidths are fractions of the time span.

    Attributes:
        bandwidth: the bandwidth of the smoothed states `u_hat`, `(D,)`.
        derivative_bandwidth: the bandwidth of the derivatives `du_hat`, `(D,)`.
        derivative_error: estimated root-mean-square error of `du_hat` per state, in units of
            `ys` per unit of time, `(D,)`.
        systematic_error: the part of that error a regression on `du_hat` does not average
            away: sqrt(squared bias + 2h x variance), same units, `(D,)`.
        derivative_scale: root-mean-square of `du_hat` per state, `(D,)`.
        noise: estimated standard deviation of the observation noise per state, `(D,)`.
        method: `"selected"` (data-driven), `"rule"` (DiffEqFlux's rule) or `"given"`.
    """

    bandwidth: np.ndarray
    derivative_bandwidth: np.ndarray
    derivative_error: np.ndarray
    systematic_error: np.ndarray
    derivative_scale: np.ndarray
    noise: np.ndarray
    method: str

    @property
    def relative_error(self) -> float:
        """The worst state's `systematic_error / derivative_scale` (constant states excluded;
        0.0 when every state is constant): how far off a field fitted to `du_hat` starts."""
        moving = self.derivative_scale > 0
        if not np.any(moving):
            return 0.0
        return float(np.max(self.systematic_error[moving] / self.derivative_scale[moving]))


def smallest_bandwidth(ts: Any, kernel: str = "epanechnikov", mask: Any = None) -> float:
    """The smallest bandwidth (a fraction of the span) at which `collocate` can fit: three
    observations must carry weight under the kernel around every time.

    `mask`, if given, is `(T,)`, `(T, D)` or `(B, T, D)` (True = observed); the bound is then
    the worst over states and trajectories.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.fitting.collocation import smallest_bandwidth
        >>> round(smallest_bandwidth(np.linspace(0.0, 1.0, 11)), 3)  # 2 gaps at either end
        0.2
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}.")
    ts_np = np.asarray(ts, dtype=np.float64)
    s = (ts_np - ts_np[0]) / (ts_np[-1] - ts_np[0])
    obs = _columns_mask(mask, s.shape[0])
    return _third_neighbour(s, obs) / _EFFECTIVE.get(kernel, 1.0)


def _columns_mask(mask, n: int) -> np.ndarray:
    """Any mask as `(T, C)` booleans (C = 1 when there is no mask)."""
    if mask is None:
        return np.ones((n, 1), bool)
    m = np.asarray(mask, bool)
    if m.ndim == 1:
        return m[:, None]
    if m.ndim == 3:
        m = np.moveaxis(m, 0, 1).reshape(n, -1)
    return m


def _third_neighbour(s: np.ndarray, obs: np.ndarray) -> float:
    """max over times and columns of the distance to the third-nearest observed time."""
    worst = 0.0
    for c in range(obs.shape[1]):
        so = s[obs[:, c]]
        if so.shape[0] < 3:
            return math.inf
        pos = np.searchsorted(so, s)
        cand = pos[:, None] + np.arange(-3, 3)
        valid = (cand >= 0) & (cand < so.shape[0])
        d = np.where(valid, np.abs(so[np.clip(cand, 0, so.shape[0] - 1)] - s[:, None]), np.inf)
        worst = max(worst, float(np.max(np.sort(d, axis=1)[:, 2])))
    return worst


def _noise_sd(s: np.ndarray, y: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Difference-based noise estimate per column (Gasser, Sroka & Jennen-Steinmetz 1986):
    pseudo-residuals of each observed point against the line through its two neighbours;
    independent of any bandwidth, exact (zero) on locally linear data."""
    out = np.zeros(y.shape[1])
    for c in range(y.shape[1]):
        so, yo = s[obs[:, c]], y[obs[:, c], c]
        ta, tb, tc = so[:-2], so[1:-1], so[2:]
        a, b = (tc - tb) / (tc - ta), (tb - ta) / (tc - ta)
        e = (a * yo[:-2] + b * yo[2:] - yo[1:-1]) / np.sqrt(a**2 + b**2 + 1.0)
        out[c] = math.sqrt(float(np.mean(e**2))) if e.size else 0.0
    return out


def _local_scores(s, y, obs, rows, h, kernel):
    """At the times `rows`, with bandwidth h and the window of 2h, per column:
    the local-linear leave-one-out residual, the local-quadratic slopes at h and at 2h, and the
    sums of squared slope weights that give their noise variance (all in units of s)."""
    kfun = _NP_KERNELS[kernel]
    reach = 2.0 * h * _SUPPORT.get(kernel, 1.0)
    n, ncol = y.shape
    lo = np.searchsorted(s, s[rows] - reach, side="left")
    hi = np.searchsorted(s, s[rows] + reach, side="right")
    width = int(np.max(hi - lo))
    out = {k: np.zeros((rows.shape[0], ncol)) for k in ("loo", "d1", "d2", "v1", "v12")}
    block = max(1, _BLOCK // max(1, width * ncol))
    k0 = float(kfun(np.zeros(())))
    complete = bool(np.all(obs))
    for b0 in range(0, rows.shape[0], block):
        r = slice(b0, b0 + block)
        idx = lo[r, None] + np.arange(width)
        inside = idx < hi[r, None]
        idx = np.minimum(idx, n - 1)
        dz = s[idx] - s[rows[r], None]  # (R, W)
        yw = y[idx]  # (R, W, C)
        # Without missing values every column shares its weights: keep them (R, W, 1).
        ow = inside[..., None] if complete else obs[idx] & inside[..., None]
        slopes, sq = [], []
        for scale in (1.0, 2.0):
            z = dz / (scale * h)
            w = np.where(ow, kfun(z)[..., None], 0.0)  # (R, W, C)
            zc = z[..., None]
            mom, wz = [], w
            for _ in range(5):  # sum_j w_j z_j^k, each (R, C); products, not np.power
                mom.append(np.sum(wz, axis=1))
                wz = wz * zc
            if scale == 1.0:
                det = mom[0] * mom[2] - mom[1] ** 2
                u = np.sum(w * (mom[2][:, None] - mom[1][:, None] * zc) * yw, axis=1) / det
                own = obs[rows[r]] * k0 * mom[2] / det  # hat-matrix diagonal L_ii
                yi = y[rows[r]]
                with np.errstate(divide="ignore", invalid="ignore"):
                    loo = np.where(obs[rows[r]], (yi - u) / (1.0 - own), np.nan)
                out["loo"][r] = loo
            gram = np.stack([np.stack(mom[k : k + 3], -1) for k in range(3)], -2)  # (R, C, 3, 3)
            e2 = np.broadcast_to(np.array([0.0, 1.0, 0.0]), gram.shape[:-1])
            a = np.linalg.solve(gram, e2[..., None])[..., 0]  # (R, C, 3)
            lw = w * (a[:, None, :, 0] + (a[:, None, :, 1] + a[:, None, :, 2] * zc) * zc)
            lw = lw / (scale * h)  # slope weights in units of s
            slopes.append(np.sum(lw * yw, axis=1))
            sq.append(lw)
        out["d1"][r], out["d2"][r] = slopes
        out["v1"][r] = np.sum(sq[0] ** 2, axis=1)
        out["v12"][r] = np.sum((sq[1] - sq[0]) ** 2, axis=1)
    return out


def _variance_weight(h: float, kernel: str) -> float:
    # Stage two regresses the field on the derivatives at every time: their noise averages
    # out over the ~1/(2h) independent kernel windows, their bias (of one sign across
    # neighbouring windows) does not. Weighting the variance by the window's share of the
    # series is what makes the selected derivative bandwidth undersmooth, as two-stage
    # estimators of ODE parameters need (Liang & Wu 2008; Brunel 2008). A kernel with unbounded
    # support leans on points out to its effective radius, so its windows are that much wider.
    return min(1.0, 2.0 * h * _EFFECTIVE.get(kernel, 1.0))


def _score(s, y, obs, state_of, kernel, grid, stop_after=0):
    """Per bandwidth in `grid` and per state: leave-one-out score of u_hat, the regression risk
    and pointwise mean squared error of du_hat, and the RMS of du_hat (units of s)."""
    n_states = int(np.max(state_of)) + 1
    n = s.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, _MAX_EVAL)).round().astype(int))
    sigma = _noise_sd(s, y, obs)
    shape = (len(grid), n_states)
    cv, risk, mse, scale = (np.full(shape, np.inf) for _ in range(4))
    bias_floor = np.zeros(n_states)
    for g, h in enumerate(grid):
        if stop_after and g >= stop_after + max(np.argmin(cv, 0).max(), np.argmin(risk, 0).max()):
            break  # every state's scores have passed their minimum by a factor 4 in h
        sc = _local_scores(s, y, obs, rows, h, kernel)
        # Richardson: the slope's leading bias is c h^2 (Fan & Gijbels 1996, sec. 3.2), so
        # d(2h) - d(h) = 3 c h^2 + noise whose variance the weights give exactly; subtracting
        # it leaves an unbiased estimate of the squared bias.
        bias2 = ((sc["d2"] - sc["d1"]) ** 2 - sigma**2 * sc["v12"]) / 9.0
        var = sigma**2 * sc["v1"]
        observed = obs[rows]
        for d in range(n_states):
            cols = state_of == d
            loo = sc["loo"][:, cols][observed[:, cols]]
            if loo.size and np.all(np.isfinite(loo)):
                cv[g, d] = np.mean(loo**2)
            # Once h oversmooths, d(h) and d(2h) both flatten and their difference stops
            # measuring the bias; the squared bias does not shrink as h grows, so keep the
            # largest clearly measured estimate (twice its noise term) seen at smaller h.
            b2 = float(np.mean(bias2[:, cols]))
            if b2 > _CLEAR * float(np.mean(sigma[cols] ** 2 * sc["v12"][:, cols])) / 9.0:
                bias_floor[d] = max(b2, bias_floor[d])
            b2 = max(b2, bias_floor[d])
            v = float(np.mean(var[:, cols]))
            if np.isfinite(b2 + v):
                risk[g, d] = _variance_weight(h, kernel) * v + b2
                mse[g, d] = v + b2
                scale[g, d] = math.sqrt(float(np.mean(sc["d1"][:, cols] ** 2)))
    noise = np.array(
        [math.sqrt(float(np.mean(sigma[state_of == d] ** 2))) for d in range(n_states)]
    )
    return cv, risk, mse, scale, noise


def _bandwidth_grid(h_lo: float) -> np.ndarray:
    start = 1.1 * h_lo  # a margin above the singular limit keeps the local fits well posed
    top = max(_GRID_TOP, 2.0 * start)
    count = int(np.ceil(np.log(top / start) / np.log(_GRID_RATIO))) + 1
    return start * _GRID_RATIO ** np.arange(count)


def collocate(
    ts: Any,
    ys: Any,
    kernel: str = "epanechnikov",
    bandwidth: float | str | None = None,
    mask: Any = None,
    *,
    info: bool = False,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, CollocationInfo]:
    """Smoothed states and derivatives `(u_hat, du_hat)` of noisy observations `ys` at times `ts`.

    At each t_i, `u_hat_i` is the intercept of a kernel-weighted local-linear fit and `du_hat_i`
    the slope of a kernel-weighted local-quadratic fit, with weights K((t_j - t_i) / h).

    **Bandwidth.** `bandwidth=None` (the default) chooses it from the data, per state (the
    trajectories of a batch share their state's bandwidths), on a geometric grid from just
    above the smallest workable bandwidth to half the span:

    - for `u_hat`, the bandwidth minimising the leave-one-out cross-validation score of the
      local-linear smoother, computed exactly from its hat-matrix diagonal L_ii as
      mean(((y_i - u_hat_i) / (1 - L_ii))^2) (Fan & Gijbels 1996, ch. 4);
    - for `du_hat`, the bandwidth minimising an estimate of the derivatives' error as stage two
      sees it: squared bias + 2h x variance. The variance is exact for this linear smoother
      given the noise level, which comes from a bandwidth-free difference estimator (Gasser,
      Sroka & Jennen-Steinmetz 1986); the squared bias comes from Richardson extrapolation
      between h and 2h, since the slope's leading bias grows as h^2 (Fan & Gijbels 1996,
      sec. 3.2; empirical-bias selection as in Ruppert 1997), kept from shrinking at wider
      windows once it has been clearly measured (oversmoothed slopes at h and 2h agree
      again, which says nothing about their bias). The variance is weighted by 2h (times
      the effective radius of kernels with unbounded support)
      because the field regression averages noise over ~1/(2h) windows but not bias: the
      derivatives are undersmoothed, as two-stage ODE estimators need (Liang & Wu 2008).

    The selection assumes a second-order kernel (bias growing as h^2): with the silverman
    kernel (fourth order, negative lobes) it is unreliable, so give that kernel a bandwidth.

    `bandwidth="rule"` is DiffEqFlux's rule `default_bandwidth(T)` for both; a number is h as a
    fraction of the time span for both. Too small a number (fewer than three observations under
    the kernel somewhere) raises a `ValueError` naming the smallest workable value
    (`smallest_bandwidth`).

    Arguments:
        ts: strictly increasing times `(T,)`; irregular grids are fine.
        ys: observations, `(T, D)` or `(B, T, D)` (all trajectories on the same times).
        kernel: one of `KERNELS`: epanechnikov, uniform, triangular, quartic, triweight, tricube,
            gaussian, cosine, logistic, sigmoid, silverman.
        bandwidth: `None` (chosen from the data), `"rule"`, or a fraction of the span.
        mask: optional boolean array like `ys`, True where observed; missing points get weight 0
            (they may hold NaN). Without a mask, `ys` must be finite.
        info: also return a `CollocationInfo`: the bandwidths used and the estimated error of
            `du_hat` (what the `"auto"` preset uses to decide whether collocation goes first).

    Returns:
        `u_hat`, `du_hat`, both shaped like `ys` (`du_hat` per unit of the original time), and
        with `info=True` a `CollocationInfo`.

    Computed eagerly (the inputs must be concrete arrays); float64 inputs give float64 results
    when `jax_enable_x64` is on. A constant state is fitted exactly (`du_hat` = 0) at the
    smallest workable bandwidth.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> ts = jnp.linspace(0.0, 3.0, 200)
        >>> ys = jnp.stack([jnp.sin(ts), jnp.cos(ts)], axis=-1)
        >>> u_hat, du_hat, info = nde.collocate(ts, ys, info=True)
        >>> bool(jnp.max(jnp.abs(du_hat[:, 0] - jnp.cos(ts))) < 1e-3)
        True
        >>> bool(info.relative_error < 0.01)
        True
    """
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}.")
    ts_np = np.asarray(ts, dtype=np.float64)
    if ts_np.ndim != 1 or ts_np.shape[0] < 3:
        raise ValueError(
            f"ts must be a 1-D array of at least 3 times (the local-quadratic fit needs three), "
            f"got shape {ts_np.shape}. Note the order: collocate(ts, ys), times first."
        )
    if not np.all(np.isfinite(ts_np)) or not np.all(np.diff(ts_np) > 0):
        raise ValueError(
            "ts must be finite and strictly increasing (sort it; drop repeated times)."
        )
    # The estimates are computed on the host's copy (NumPy) around one compiled core: an eager
    # JAX operation would compile a program of its own for every new shape.
    ys_np = np.asarray(ys)
    float_type = ys_np.dtype if np.issubdtype(ys_np.dtype, np.inexact) else np.float64
    ys_np = ys_np.astype(jax.dtypes.canonicalize_dtype(float_type))  # JAX's float type
    n = ts_np.shape[0]
    if ys_np.ndim not in (2, 3) or ys_np.shape[-2] != n:
        raise ValueError(
            f"ys must have shape (T, D) or (B, T, D) with T = len(ts) = {n}, got {ys_np.shape}. "
            "Note the order: collocate(ts, ys), times first, as nde.TimeSeries."
        )
    finite = np.isfinite(ys_np)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ys_np.shape:
            raise ValueError(f"mask must have the shape of ys {ys_np.shape}, got {mask.shape}.")
        if not np.all(finite | ~mask):
            raise ValueError(
                "ys has NaN or inf where mask is True (observed); set mask to False there."
            )
        ys_np = np.where(mask, ys_np, 0.0).astype(ys_np.dtype)
    elif not np.all(finite):
        raise ValueError(
            f"ys has {int(np.sum(~finite))} NaN or inf values; pass mask= (True where observed) "
            "to skip missing observations, as nde.TimeSeries(ts, ys, mask) does."
        )
    if isinstance(bandwidth, str):
        if bandwidth != "rule":
            raise ValueError(
                f"bandwidth must be None (chosen from the data), 'rule' (DiffEqFlux's rule) or a "
                f"positive fraction of the time span, got {bandwidth!r}."
            )
    elif bandwidth is not None and not (
        np.isscalar(bandwidth) and np.isfinite(bandwidth) and bandwidth > 0
    ):
        raise ValueError(
            f"bandwidth must be a positive number (a fraction of the time span), None or 'rule', "
            f"got {bandwidth!r}."
        )

    span = ts_np[-1] - ts_np[0]
    s = (ts_np - ts_np[0]) / span
    batched = ys_np.ndim == 3
    n_states = ys_np.shape[-1]
    # Fold the batch into the state axis: column c holds state c % D of trajectory c // D.
    flat = np.moveaxis(ys_np, 0, 1).reshape(n, -1) if batched else ys_np
    obs = _columns_mask(mask, n) if mask is not None else np.ones(flat.shape, bool)
    state_of = np.arange(flat.shape[1]) % n_states
    counts = obs.sum(axis=0)
    if np.min(counts) < 3:
        c = int(np.argmin(counts))
        raise ValueError(
            f"state {c % n_states}"
            + (f" of trajectory {c // n_states}" if batched else "")
            + f" has {int(counts[c])} observed times; the local-quadratic fit needs at least 3."
        )
    h_lo = _third_neighbour(s, obs) / _EFFECTIVE.get(kernel, 1.0)

    y64 = np.asarray(flat, dtype=np.float64)
    if bandwidth is None:
        # The search starts where three observations lie within one bandwidth, for every
        # kernel: below that, a kernel with unbounded support fits through its far tails
        # (the silverman kernel's are negative) and its scores stop meaning anything.
        grid = _bandwidth_grid(h_lo * _EFFECTIVE.get(kernel, 1.0))
        cv, risk, mse, scale, noise = _score(s, y64, obs, state_of, kernel, grid, _PAST_MINIMUM)
        pick_u, pick_du = np.argmin(cv, axis=0), np.argmin(risk, axis=0)
        h_u, h_du = grid[pick_u], grid[pick_du]
        method = "selected"
    else:
        h = default_bandwidth(n) if bandwidth == "rule" else float(bandwidth)
        if h <= h_lo:
            raise ValueError(_too_small_message(kernel, h, h_lo, mask is not None))
        h_u = h_du = np.full(n_states, h)
        pick_du = np.zeros(n_states, int)
        method = "rule" if bandwidth == "rule" else "given"
        if info:
            _, risk, mse, scale, noise = _score(s, y64, obs, state_of, kernel, [h])

    flat_mask = None if mask is None else obs.astype(flat.dtype)
    u_hat, du_hat = _smooth(s, flat, flat_mask, h_u[state_of], h_du[state_of], kernel)
    du_hat = du_hat / span
    if not (np.all(np.isfinite(u_hat)) and np.all(np.isfinite(du_hat))):
        raise ValueError(
            f"collocation with kernel {kernel!r} gave non-finite estimates (an ill-conditioned "
            "local fit). Increase the bandwidth."
        )
    if batched:
        b = ys_np.shape[0]
        u_hat = np.moveaxis(u_hat.reshape(n, b, -1), 1, 0)
        du_hat = np.moveaxis(du_hat.reshape(n, b, -1), 1, 0)
    u_hat, du_hat = as_array(u_hat), as_array(du_hat)
    if not info:
        return u_hat, du_hat
    at = (pick_du, np.arange(n_states))
    scale = scale[at] / span
    # A constant state has no derivative to get wrong (its estimate is zero up to round-off).
    constant = [np.ptp(y64[:, state_of == d][obs[:, state_of == d]]) == 0 for d in range(n_states)]
    scale = np.where(constant, 0.0, scale)
    report = CollocationInfo(
        bandwidth=np.asarray(h_u, float),
        derivative_bandwidth=np.asarray(h_du, float),
        derivative_error=np.sqrt(mse[at]) / span,
        systematic_error=np.sqrt(risk[at]) / span,
        derivative_scale=scale,
        noise=noise,
        method=method,
    )
    return u_hat, du_hat, report


def _smooth(s, flat, flat_mask, h_u, h_du, kernel):
    """u_hat of column c at bandwidth h_u[c] and du_hat at h_du[c]: one core call per distinct
    bandwidth, all with the window of the widest (one compilation)."""
    n = s.shape[0]
    hs = np.unique(np.concatenate([h_u, h_du]))
    reach = _SUPPORT.get(kernel, 1.0) * hs
    width = int(
        max(
            np.max(np.searchsorted(s, s + r, side="right") - np.searchsorted(s, s - r, side="left"))
            for r in reach
        )
    )
    # The window length is static in the compiled core: rounding it up to a power of two lets
    # series of similar length share one compilation (compiling costs seconds, a wider window
    # with zero weights at most twice the arithmetic).
    width = min(max(2 ** math.ceil(math.log2(max(width, 3))), 3), n)
    dtype = flat.dtype
    u_cols = [None] * flat.shape[1]
    du_cols = [None] * flat.shape[1]
    for h, r in zip(hs, reach, strict=True):
        cols = np.flatnonzero((h_u == h) | (h_du == h))
        lo = np.searchsorted(s, s - r, side="left")
        starts = np.minimum(lo, n - width)
        sub_mask = None if flat_mask is None else as_array(flat_mask[:, cols])
        u, du, _ = _collocate_core(
            as_array(s, dtype),
            as_array(flat[:, cols]),
            sub_mask,
            as_array(starts),
            as_array(h, dtype),
            jnp.asarray(_KERNEL_INDEX[kernel]),
            width=width,
        )
        u, du = np.asarray(u), np.asarray(du)
        for k, c in enumerate(cols):
            if h_u[c] == h:
                u_cols[c] = u[:, k]
            if h_du[c] == h:
                du_cols[c] = du[:, k]
    return np.stack(u_cols, -1), np.stack(du_cols, -1)


_CHUNK = 200  # rows per chunk: memory O(chunk * W), and big enough for efficient contractions


_KERNEL_INDEX = {name: i for i, name in enumerate(KERNELS)}


@functools.partial(jax.jit, static_argnames=("width",))
def _collocate_core(s, ys, mask, starts, h, kernel_index, *, width):
    """Local fits at every time, computed in chunks of rows as weighted moment contractions."""
    # The kernel is a runtime switch, not a static choice: one compilation serves all kernels.
    branches = list(KERNELS.values())

    def kfun(z):
        return jax.lax.switch(kernel_index, branches, z)

    peak = kfun(jnp.zeros((), s.dtype))
    n = s.shape[0]
    pad = (-n) % _CHUNK
    offsets = jnp.arange(width)
    ys_masked = ys if mask is None else ys * mask

    def chunk(args):
        si, start = args  # (C,), (C,)
        idx = start[:, None] + offsets  # (C, W)
        z = (s[idx] - si[:, None]) / h  # in bandwidths: O(1) moments, well conditioned
        w = kfun(z)
        z2 = z * z
        powers = jnp.stack([w, w * z, w * z2, w * z2 * z, w * z2 * z2], -1)  # (C, W, 5)
        rhs = jnp.einsum("cwk,cwd->ckd", powers[..., :3], ys_masked[idx])  # (C, 3, D)
        strong = (jnp.abs(w) >= _MIN_WEIGHT * peak).astype(s.dtype)
        if mask is None:
            moments = jnp.sum(powers, axis=1)[..., None]  # (C, 5, 1)
            count = jnp.sum(strong, axis=1)[:, None]  # (C, 1)
        else:  # a missing point has no weight, so each state has its own moments
            moments = jnp.einsum("cwk,cwd->ckd", powers, mask[idx])
            count = jnp.einsum("cw,cwd->cd", strong, mask[idx])
        return moments, rhs, count

    si = jnp.concatenate([s, jnp.zeros(pad, s.dtype)]).reshape(-1, _CHUNK)
    st = jnp.concatenate([starts, jnp.zeros(pad, starts.dtype)]).reshape(-1, _CHUNK)
    moments, rhs, count = jax.lax.map(chunk, (si, st))
    moments = moments.reshape(-1, *moments.shape[2:])[:n]
    rhs = rhs.reshape(-1, *rhs.shape[2:])[:n]
    count = count.reshape(-1, count.shape[-1])[:n]
    s0, s1, s2, s3, s4 = (jnp.broadcast_to(moments[:, k], rhs[:, 0].shape) for k in range(5))
    r0, r1, r2 = rhs[:, 0], rhs[:, 1], rhs[:, 2]
    # local linear: intercept of the 2x2 weighted normal equations
    u = (s2 * r0 - s1 * r1) / (s0 * s2 - s1**2)
    # local quadratic: slope of the 3x3 weighted normal equations, per time and state
    gram = jnp.stack(
        [jnp.stack([s0, s1, s2], -1), jnp.stack([s1, s2, s3], -1), jnp.stack([s2, s3, s4], -1)],
        -2,
    )  # (n, D, 3, 3)
    coef = jnp.linalg.solve(gram, jnp.stack([r0, r1, r2], -1)[..., None])[..., 0]
    du = coef[..., 1] / h
    return u, du, jnp.min(count, axis=0)


def _too_small_message(kernel: str, h: float, h_lo: float, masked: bool) -> str:
    extra = (
        " Some states also have missing observations, which removes points from the window."
        if masked
        else ""
    )
    return (
        f"collocation failed with bandwidth {h:.4g} and kernel {kernel!r}: at some time fewer "
        "than three observations fall under the kernel, so the weighted local-quadratic fit is "
        f"singular. Increase the bandwidth (a fraction of the time span) to at least "
        f"{1.05 * h_lo:.3g} (the smallest workable is {h_lo:.3g}), or let it be chosen from the "
        f"data (bandwidth=None).{extra}"
    )


class Collocation(AbstractStrategy):
    """Two-stage collocation: fit the vector field to smoothed derivatives; no ODE solve at all.

    `prepare` runs `collocate` once; the loss is
    `loss_fn(f(t_i, u_hat_i, args), du_hat_i)` = sum_i ||du_hat_i - f(t_i, u_hat_i, args)||^2
    over all times and trajectories, where f is the model's `vector_field(t, y, args)` (an
    `nde.NeuralODE`'s field: a network, a hybrid of physics and network, or a purely mechanistic
    model with trainable parameters). A model without `vector_field` (a delay model, a flow) is
    refused at `prepare`. Use it to get a good initial model in a fraction of a second, then
    refine with `nde.MultipleShooting` or `nde.Trajectory`.

    Arguments:
        kernel, bandwidth: see `nde.collocate` (default: the bandwidths chosen from the data).
        loss_fn: misfit `loss_fn(pred, target, mask)`, default `nde.losses.l2`.
        args: passed to the field as its `args`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> data = nde.datasets.spiral(n_points=100)
        >>> mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))
        >>> result = nde.fit(model, data, nde.Collocation(), optimizer=optax.adam(0.01),
        ...                  steps=50, progress=False)
        >>> bool(result.losses[-1] < result.losses[0])
        True
    """

    kernel: str = eqx.field(default="epanechnikov", static=True)
    bandwidth: float | str | None = eqx.field(default=None, static=True)
    loss_fn: Callable = l2
    args: Any = None

    def __check_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {self.kernel!r}.")
        if self.bandwidth not in (None, "rule") and not (
            isinstance(self.bandwidth, int | float)
            and np.isfinite(self.bandwidth)
            and self.bandwidth > 0
        ):
            raise ValueError(
                "bandwidth must be None (chosen from the data), 'rule' (DiffEqFlux's rule) or a "
                f"positive fraction of the time span, got {self.bandwidth!r}."
            )

    def prepare(self, model: Any, data: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(ts, u_hat, du_hat)` with batch axes `(B, T, D)`."""
        if not callable(getattr(model, "vector_field", None)):
            raise ValueError(
                "Collocation fits a model's vector field to the data's slopes, so the model needs "
                f"a vector_field(t, y, args) method (as nde.NeuralODE has); "
                f"{type(model).__name__} has none. Use nde.Trajectory or nde.MultipleShooting."
            )
        batch = as_timeseries(data).as_batch()
        # Shapes first: a model built for another state size fails here, not in the compiled step.
        check_state_shapes(model, *series_shapes(batch.ys), self.args, strategy="Collocation")
        mask = None if batch.mask is None else np.asarray(batch.mask)
        u_hat, du_hat = collocate(batch.ts, batch.ys, self.kernel, self.bandwidth, mask=mask)
        return batch.ts, u_hat, du_hat

    def loss(self, model, prepared, key) -> jax.Array:
        ts, u_hat, du_hat = prepared
        per_time = jax.vmap(lambda t, u: model.vector_field(t, u, self.args))
        pred = jax.vmap(lambda u: per_time(ts, u))(u_hat)
        return self.loss_fn(pred, du_hat, None)
