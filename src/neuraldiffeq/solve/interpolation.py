"""Continuous paths through (irregular, partially missing) observations: the control of a CDE.

A neural CDE is driven by a path X(t) that passes through the observations. `interpolation_coeffs`
computes that path's coefficients once, with NumPy, outside any compiled step (as torchcde's
`*_coeffs` functions do); the result, an `nde.Interpolation`, is a pytree of arrays that is
evaluated and differentiated in time inside the solve. The three kinds are torchcde's:

- `"cubic"`: the natural cubic spline (C², zero second derivative at both ends). A channel with
  missing values is a spline through its observed points alone, its first and last observations
  held constant to the ends of the series (torchcde's `natural_cubic_coeffs`).
- `"hermite"`: Hermite cubics with backward differences (C¹): on [t_k, t_k+1] the cubic through
  x_k and x_k+1 whose slopes are the previous piece's and its own chord slope (torchcde's
  `hermite_cubic_coefficients_with_backward_differences`). Causal: X on [t_k, t_k+1] depends
  on no observation after t_k+1. Missing values are first filled linearly in time.
- `"linear"`: linear interpolation (C⁰). Missing values are filled linearly in time between
  the neighbouring observations (held constant beyond the first or last). Its derivative jumps
  at the knots, so adaptive solves stop at each knot (`jump_ts`).

Before interpolating, the channels are assembled as: time (if `time_channel`; the CDE then sees
how fast the data arrive), the data channels, and (if `observed_channels`) for each data channel
the number of observations made up to each time divided by the number T of time points
(Kidger et al. 2020's cumulative mask, scaled to [0, 1]), so the model can tell an interpolated
stretch from an observed one. Unscaled, these channels climb to T: on a long series they would
drive the hidden state of a CDE by up to T (z moves by at most |f|·the variation of X), which at
initialisation means logits in the hundreds. A channel never observed in a series
is zero there. Missing values are NaN in `ys`, or False in `mask`.

Example:
    >>> import numpy as np, neuraldiffeq as nde
    >>> ts = np.array([0.0, 1.0, 3.0])
    >>> ys = np.array([[0.0], [np.nan], [2.0]])  # the middle value is missing
    >>> X = nde.interpolation_coeffs(ts, ys, kind="linear", observed_channels=True)
    >>> X.channels  # time, the value, its observation count / 3
    3
    >>> [round(float(v), 3) for v in X.evaluate(2.0)]
    [2.0, 1.333, 0.5]
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

#: The interpolation kinds, as torchcde offers them.
KINDS = ("cubic", "hermite", "linear")


class Interpolation(diffrax.AbstractPath):
    """A continuous path X(t) through observations, as built by `nde.interpolation_coeffs`.

    One series (`coeffs` without a batch axis) is a `diffrax.AbstractPath`: `evaluate(t)` and
    `derivative(t)` give X(t) and dX/dt, shape `(channels,)`. A batch of B series has a leading
    batch axis on every coefficient array; its times are shared (`ts` of shape `(T,)`; then
    `evaluate(t)` gives all series at once, `(B, channels)`) or one row per series (`ts` of
    shape `(B, T)`; then evaluate one series, `X[i]`, or `jax.vmap` over the batch). Index a
    batch with `X[i]`, `X[idx]`.

    Attributes:
        ts: the knots, `(T,)` or `(B, T)`.
        coeffs: cubic kinds: `(a, b, c, d)`, each `(..., T - 1, channels)`, with
            X(t) = a + b s + c s² + d s³ on [t_k, t_k+1], s = t - t_k; linear: `(xs,)`, the
            values at the knots, `(..., T, channels)`.
        kind: `"cubic"`, `"hermite"` or `"linear"`.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> X = nde.interpolation_coeffs(np.linspace(0, 1, 5), np.zeros((3, 5, 2)))
        >>> X.batch_shape, X.channels, X[0].batch_shape, X.evaluate(0.5).shape
        ((3,), 3, (), (3, 3))
    """

    ts: jax.Array
    coeffs: tuple[jax.Array, ...]
    kind: str = eqx.field(static=True)

    @property
    def t0(self):
        return self.ts[..., 0]

    @property
    def t1(self):
        return self.ts[..., -1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """`()` for one series, `(B,)` for a batch."""
        return tuple(self.coeffs[0].shape[:-2])

    @property
    def shared_times(self) -> bool:
        """True when every series of the batch has the same times (`ts` of shape `(T,)`)."""
        return self.ts.ndim == 1

    @property
    def channels(self) -> int:
        """Number of channels of X (time and observation counts included)."""
        return int(self.coeffs[0].shape[-1])

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("an unbatched Interpolation has no length; it is one series.")
        return self.batch_shape[0]

    def __getitem__(self, index) -> Interpolation:
        if not self.batch_shape:
            raise TypeError("an unbatched Interpolation cannot be indexed; it is one series.")
        ts = self.ts if self.shared_times else self.ts[index]
        return Interpolation(ts, tuple(c[index] for c in self.coeffs), self.kind)

    def _path(self) -> diffrax.AbstractPath:
        if self.ts.ndim != 1:
            raise ValueError(
                f"this Interpolation holds {self.batch_shape} series with their own times; "
                "evaluate one series (X[i]) or jax.vmap over the batch."
            )
        # batch axes after the knot axis: diffrax indexes the leading axis by time
        coeffs = tuple(jnp.moveaxis(c, -2, 0) for c in self.coeffs)
        if self.kind == "linear":
            return diffrax.LinearInterpolation(self.ts, coeffs[0])
        a, b, c, d = coeffs
        return diffrax.CubicInterpolation(self.ts, (d, c, b, a))

    def evaluate(self, t0, t1=None, left: bool = True) -> jax.Array:
        """X(t0), or the increment X(t1) - X(t0) when `t1` is given."""
        return self._path().evaluate(t0, t1, left)

    def derivative(self, t, left: bool = True) -> jax.Array:
        """dX/dt at `t` (left derivative at a knot unless `left=False`)."""
        return self._path().derivative(t, left)

    @property
    def jump_ts(self) -> jax.Array | None:
        """Times where dX/dt jumps (the knots of a linear path), for adaptive step control."""
        return self.ts if self.kind == "linear" else None


def interpolation_coeffs(
    ts: Any,
    ys: Any,
    mask: Any = None,
    *,
    kind: str = "cubic",
    time_channel: bool = True,
    observed_channels: bool = False,
) -> Interpolation:
    """The path through observations `ys` at times `ts` that drives a neural CDE.

    Computed once, with NumPy in float64, outside compiled code (see the module docstring of
    `neuraldiffeq.solve.interpolation` for the kinds, the channel layout and missing values).

    Arguments:
        ts: times, `(T,)` shared by every series, or `(B, T)` one row per series; strictly
            increasing and finite. Shared times let a model solve a batch as one system.
        ys: values, `(T, D)` or `(B, T, D)`; NaN marks a missing value.
        mask: optional, the shape of `ys`: True where observed (False entries are missing,
            whatever `ys` holds there).
        kind: `"cubic"` (natural cubic spline), `"hermite"` (Hermite cubic with backward
            differences) or `"linear"`.
        time_channel: prepend time as a channel.
        observed_channels: append, per data channel, the count of observations so far divided
            by T (so each lies in [0, 1] and the model's response to it does not grow with T).

    Returns:
        An `nde.Interpolation` with `channels = time_channel + D + D * observed_channels`.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> ts = np.linspace(0.0, 3.0, 4)
        >>> X = nde.interpolation_coeffs(ts, ts[:, None] ** 2, kind="cubic", time_channel=False)
        >>> [round(float(X.evaluate(t)[0]), 3) for t in (1.0, 2.0)]  # through the data
        [1.0, 4.0]
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    for name, value in (("time_channel", time_channel), ("observed_channels", observed_channels)):
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    ts_np, ys_np, out_dtype = _checked(ts, ys, mask)
    observed = ~np.isnan(ys_np)  # (B, T, D)
    n_batch, n_times, _ = ys_np.shape
    channels = []
    if time_channel:
        channels.append(ts_np[:, :, None])
    channels.append(ys_np)
    if observed_channels:
        # divided by T, known before the data arrive (dividing by the series' own number of
        # observations would leak the future into a causal path)
        channels.append(np.cumsum(observed, axis=1).astype(np.float64) / n_times)
    xs = np.concatenate(channels, axis=-1)  # (B, T, C), NaN only in the data channels
    if kind == "cubic":
        coeffs = _natural_cubic(ts_np, xs)
    else:
        xs = _fill_linear(ts_np, xs)
        coeffs = (xs,) if kind == "linear" else _backward_hermite(ts_np, xs)
    arrays = [ts_np[0] if np.ndim(ts) == 1 else ts_np, *coeffs]  # shared times stay (T,)
    if np.ndim(ys) == 2:
        arrays = [ts_np[0]] + [x[0] for x in arrays[1:]]
    dtype = jax.dtypes.canonicalize_dtype(out_dtype)  # float64 only with jax_enable_x64
    arrays = [jnp.asarray(x, dtype=dtype) for x in arrays]
    return Interpolation(arrays[0], tuple(arrays[1:]), kind)


# -- input ---------------------------------------------------------------------------------------


def _checked(ts, ys, mask):
    ys_np = np.asarray(ys)
    if not (np.issubdtype(ys_np.dtype, np.floating) or np.issubdtype(ys_np.dtype, np.integer)):
        raise ValueError(f"ys must be an array of numbers, got dtype {ys_np.dtype}.")
    out_dtype = ys_np.dtype if np.issubdtype(ys_np.dtype, np.floating) else float
    ys_np = ys_np.astype(np.float64)
    if ys_np.ndim not in (2, 3):
        raise ValueError(
            f"ys must have shape (T, D) or (B, T, D) (NaN where missing), got {ys_np.shape}."
        )
    ys_np = ys_np if ys_np.ndim == 3 else ys_np[None]
    n_batch, n_times, _ = ys_np.shape
    ts_np = np.asarray(ts, dtype=np.float64)
    if ts_np.ndim == 1:
        ts_np = np.broadcast_to(ts_np, (n_batch, ts_np.shape[0]))
    if ts_np.shape != (n_batch, n_times):
        raise ValueError(
            f"ts must have shape (T,) or (B, T) matching ys {np.shape(ys)} (T = {n_times}, "
            f"B = {n_batch}), got {np.shape(ts)}."
        )
    if n_times < 2:
        raise ValueError(f"ts must hold at least 2 times, got {n_times}.")
    if not np.all(np.isfinite(ts_np)):
        raise ValueError("ts contains NaN or infinite values; every time must be a number.")
    if not np.all(np.diff(ts_np, axis=-1) > 0):
        raise ValueError("ts must be strictly increasing (sort it; drop repeated times).")
    if mask is not None:
        mask_np = np.asarray(mask)
        if mask_np.shape != np.shape(ys):
            raise ValueError(f"mask must have the shape of ys {np.shape(ys)}, got {mask_np.shape}.")
        mask_np = mask_np.astype(bool).reshape(ys_np.shape)
        if np.any(np.isnan(ys_np) & mask_np):
            raise ValueError("ys is NaN where mask says it is observed; set mask False there.")
        ys_np = np.where(mask_np, ys_np, np.nan)
    if np.any(np.isinf(ys_np)):
        raise ValueError("ys contains infinite values; mark missing values with NaN or mask.")
    return np.ascontiguousarray(ts_np), ys_np, out_dtype


# -- the three kinds (NumPy, float64) --------------------------------------------------------------


def _fill_linear(ts, xs):
    """Missing values filled linearly in time, constant beyond the ends; never observed: 0."""
    xs = xs.copy()
    for b, c in zip(*np.nonzero(np.isnan(xs).any(axis=1)), strict=True):
        seen = ~np.isnan(xs[b, :, c])
        xs[b, :, c] = np.interp(ts[b], ts[b, seen], xs[b, seen, c]) if seen.any() else 0.0
    return xs


def _backward_hermite(ts, xs):
    h = np.diff(ts, axis=-1)[..., None]  # (B, T-1, 1)
    slope = np.diff(xs, axis=1) / h  # chord slopes, (B, T-1, C)
    m0 = np.concatenate([slope[:, :1], slope[:, :-1]], axis=1)  # the previous piece's slope
    a, b = xs[:, :-1], m0
    c = 2.0 * (slope - m0) / h
    d = (m0 - slope) / h**2
    return a, b, c, d


def _spline_slopes(ts, xs):
    """Knot derivatives of natural cubic splines: ts (..., T), xs (..., T, C) -> (..., T, C).

    The tridiagonal system (continuous second derivative inside, zero at both ends) by the
    Thomas algorithm, vectorised over series and channels.
    """
    n = ts.shape[-1]
    r = 1.0 / np.diff(ts, axis=-1)[..., None]  # (..., T-1, 1)
    rhs_piece = 3.0 * np.diff(xs, axis=-2) * r**2
    diag = np.zeros((*ts.shape, 1))
    diag[..., :-1, :] += 2 * r
    diag[..., 1:, :] += 2 * r
    rhs = np.zeros_like(xs)
    rhs[..., :-1, :] += rhs_piece
    rhs[..., 1:, :] += rhs_piece
    # forward sweep (sub- and super-diagonal are both r)
    cp = np.zeros((*ts.shape, 1))
    dp = np.zeros_like(xs)
    cp[..., 0, :] = r[..., 0, :] / diag[..., 0, :]
    dp[..., 0, :] = rhs[..., 0, :] / diag[..., 0, :]
    for i in range(1, n):
        sub = r[..., i - 1, :]
        denom = diag[..., i, :] - sub * cp[..., i - 1, :]
        if i < n - 1:
            cp[..., i, :] = r[..., i, :] / denom
        dp[..., i, :] = (rhs[..., i, :] - sub * dp[..., i - 1, :]) / denom
    k = np.zeros_like(xs)
    k[..., -1, :] = dp[..., -1, :]
    for i in range(n - 2, -1, -1):
        k[..., i, :] = dp[..., i, :] - cp[..., i, :] * k[..., i + 1, :]
    return k


def _cubic_pieces(ts, xs, k):
    h = np.diff(ts, axis=-1)[..., None]
    chord = np.diff(xs, axis=-2) / h
    a, b = xs[..., :-1, :], k[..., :-1, :]
    c = (3.0 * chord - 2.0 * k[..., :-1, :] - k[..., 1:, :]) / h
    d = (k[..., :-1, :] + k[..., 1:, :] - 2.0 * chord) / h**2
    return a, b, c, d


def _natural_cubic(ts, xs):
    missing = np.isnan(xs)
    filled = np.where(missing, 0.0, xs)
    a, b, c, d = (np.array(x) for x in _cubic_pieces(ts, filled, _spline_slopes(ts, filled)))
    # a channel with missing values: the spline through its observed points alone (the first and
    # last observation held to the ends), re-expanded around every knot of the series
    for s, ch in zip(*np.nonzero(missing.any(axis=1)), strict=True):
        t, x = ts[s], xs[s, :, ch].copy()
        seen = np.flatnonzero(~np.isnan(x))
        if seen.size == 0:
            a[s, :, ch] = b[s, :, ch] = c[s, :, ch] = d[s, :, ch] = 0.0
            continue
        x[: seen[0]], x[seen[-1] + 1 :] = x[seen[0]], x[seen[-1]]
        keep = ~np.isnan(x)
        kt, kx = t[keep], x[keep][:, None]
        pa, pb, pc, pd = (p[:, 0] for p in _cubic_pieces(kt, kx, _spline_slopes(kt, kx)))
        j = np.clip(np.searchsorted(kt, t[:-1], side="right") - 1, 0, kt.size - 2)
        off = t[:-1] - kt[j]
        a[s, :, ch] = pa[j] + off * (pb[j] + off * (pc[j] + off * pd[j]))
        b[s, :, ch] = pb[j] + off * (2 * pc[j] + 3 * off * pd[j])
        c[s, :, ch] = pc[j] + 3 * off * pd[j]
        d[s, :, ch] = pd[j]
    return a, b, c, d
