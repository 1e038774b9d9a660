"""Two-stage collocation: smooth the data once, then fit the vector field to the smoothed slopes.

Stage one (`collocate`) estimates, at every observation time t_i, the state u(t_i) by a
kernel-weighted local-linear regression and its derivative du/dt(t_i) by a kernel-weighted
local-quadratic regression (Liang & Wu 2008; DiffEqFlux's `collocate_data`). Stage two
(`Collocation`, a fitting strategy) minimises sum_i ||du_hat_i - f(t_i, u_hat_i)||^2: no ODE is
solved, so a step costs one batched evaluation of the field.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_state_shapes
from .losses import l2
from .strategies import AbstractStrategy, as_timeseries

_SQRT2 = math.sqrt(2.0)


def _compact(fn):
    return lambda z: jnp.where(jnp.abs(z) <= 1.0, fn(z), 0.0)


#: The eleven kernels of DiffEqFlux, K(z) with z = (t_j - t_i) / bandwidth.
KERNELS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "epanechnikov": _compact(lambda z: 0.75 * (1.0 - z**2)),
    "uniform": _compact(lambda z: 0.5 * jnp.ones_like(z)),
    "triangular": _compact(lambda z: 1.0 - jnp.abs(z)),
    "quartic": _compact(lambda z: (15.0 / 16.0) * (1.0 - z**2) ** 2),
    "triweight": _compact(lambda z: (35.0 / 32.0) * (1.0 - z**2) ** 3),
    "tricube": _compact(lambda z: (70.0 / 81.0) * (1.0 - jnp.abs(z) ** 3) ** 3),
    "gaussian": lambda z: jnp.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi),
    "cosine": _compact(lambda z: (math.pi / 4.0) * jnp.cos(0.5 * math.pi * z)),
    "logistic": lambda z: 1.0 / (jnp.exp(z) + 2.0 + jnp.exp(-z)),
    "sigmoid": lambda z: 2.0 / (math.pi * (jnp.exp(z) + jnp.exp(-z))),
    "silverman": lambda z: (
        0.5 * jnp.exp(-jnp.abs(z) / _SQRT2) * jnp.sin(jnp.abs(z) / _SQRT2 + math.pi / 4.0)
    ),
}

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


def collocate(
    ys: Any,
    ts: Any,
    kernel: str = "epanechnikov",
    bandwidth: float | None = None,
    mask: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Smoothed states and derivatives `(u_hat, du_hat)` of noisy observations `ys` at times `ts`.

    At each t_i, `u_hat_i` is the intercept of a kernel-weighted local-linear fit and `du_hat_i`
    the slope of a kernel-weighted local-quadratic fit, with weights K((t_j - t_i) / h) / h.

    Arguments:
        ys: observations, `(T, D)` or `(B, T, D)` (all trajectories on the same times).
        ts: strictly increasing times `(T,)`; irregular grids are fine.
        kernel: one of `KERNELS`: epanechnikov, uniform, triangular, quartic, triweight, tricube,
            gaussian, cosine, logistic, sigmoid, silverman.
        bandwidth: h as a fraction of the time span (time is normalised to [0, 1]); default
            `default_bandwidth(T)`. Too small a bandwidth (fewer than three points under the
            kernel somewhere) raises a `ValueError` saying how large it must be.
        mask: optional boolean array like `ys`, True where observed; missing points get weight 0.

    Returns:
        `u_hat`, `du_hat`, both shaped like `ys`; `du_hat` is per unit of the original time.

    Computed eagerly (the inputs must be concrete arrays); float64 inputs give float64 results
    when `jax_enable_x64` is on.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> ts = jnp.linspace(0.0, 3.0, 200)
        >>> ys = jnp.stack([jnp.sin(ts), jnp.cos(ts)], axis=-1)
        >>> u_hat, du_hat = nde.collocate(ys, ts, kernel="epanechnikov")
        >>> bool(jnp.max(jnp.abs(du_hat[20:-20, 0] - jnp.cos(ts[20:-20]))) < 0.05)
        True
    """
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}.")
    ts_np = np.asarray(ts, dtype=np.float64)
    if ts_np.ndim != 1 or ts_np.shape[0] < 3:
        raise ValueError(f"ts must be a 1-D array of at least 3 times, got shape {ts_np.shape}.")
    if not np.all(np.isfinite(ts_np)) or not np.all(np.diff(ts_np) > 0):
        raise ValueError(
            "ts must be finite and strictly increasing (sort it; drop repeated times)."
        )
    ys_j = jnp.asarray(ys)
    if not jnp.issubdtype(ys_j.dtype, jnp.inexact):
        ys_j = ys_j.astype(jnp.result_type(float))
    n = ts_np.shape[0]
    if ys_j.ndim not in (2, 3) or ys_j.shape[-2] != n:
        raise ValueError(
            f"ys must have shape (T, D) or (B, T, D) with T = len(ts) = {n}, got {ys_j.shape}."
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ys_j.shape:
            raise ValueError(f"mask must have the shape of ys {ys_j.shape}, got {mask.shape}.")
        ys_j = jnp.where(jnp.asarray(mask), ys_j, 0.0)
    if bandwidth is None:
        h = default_bandwidth(n)
    else:
        if not (np.isscalar(bandwidth) and np.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}.")
        h = float(bandwidth)

    span = ts_np[-1] - ts_np[0]
    s = (ts_np - ts_np[0]) / span
    # Each time point sees the window of points within the kernel's support; one fixed window
    # length W (the widest) keeps the shapes static, shifted to stay inside the series.
    reach = _SUPPORT.get(kernel, 1.0) * h
    lo = np.searchsorted(s, s - reach, side="left")
    hi = np.searchsorted(s, s + reach, side="right")
    width = int(max(np.max(hi - lo), 3))
    starts = np.minimum(lo, n - width)

    # Fold the batch into the state axis: every trajectory shares the same weights.
    batched = ys_j.ndim == 3
    flat = jnp.moveaxis(ys_j, 0, 1).reshape(n, -1) if batched else ys_j
    flat_mask = None
    if mask is not None:
        m = np.moveaxis(mask, 0, 1).reshape(n, -1) if batched else mask
        flat_mask = jnp.asarray(m, dtype=flat.dtype)
    dtype = flat.dtype
    u_hat, du_hat, counts = _collocate_core(
        jnp.asarray(s, dtype=dtype),
        flat,
        flat_mask,
        jnp.asarray(starts),
        jnp.asarray(h, dtype=dtype),
        jnp.asarray(_KERNEL_INDEX[kernel]),
        width=width,
    )
    if int(np.min(np.asarray(counts))) < 3:
        raise ValueError(_too_small_message(kernel, h, s, mask is not None))
    du_hat = du_hat / span
    if not (bool(jnp.all(jnp.isfinite(u_hat))) and bool(jnp.all(jnp.isfinite(du_hat)))):
        raise ValueError(
            f"collocation with kernel {kernel!r} and bandwidth {h:.4g} gave non-finite estimates "
            "(an ill-conditioned local fit). Increase the bandwidth."
        )
    if batched:
        b = ys_j.shape[0]
        u_hat = jnp.moveaxis(u_hat.reshape(n, b, -1), 1, 0)
        du_hat = jnp.moveaxis(du_hat.reshape(n, b, -1), 1, 0)
    return u_hat, du_hat


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


def _too_small_message(kernel: str, h: float, s: np.ndarray, masked: bool) -> str:
    # The kernel must cover three points everywhere: h > (distance to the 2nd nearest
    # neighbour) / (the kernel's effective radius), at the worst-placed point.
    n = s.shape[0]
    gaps = []
    for shift in (-2, -1, 1, 2):
        d = np.full(n, np.inf)
        idx = np.arange(n) + shift
        ok = (idx >= 0) & (idx < n)
        d[ok] = np.abs(s[idx[ok]] - s[ok])
        gaps.append(d)
    second = np.sort(np.stack(gaps), axis=0)[1]
    needed = float(np.max(second)) / _EFFECTIVE.get(kernel, 1.0)
    extra = (
        " Some states also have missing observations, which removes points from the window."
        if masked
        else ""
    )
    return (
        f"collocation failed with bandwidth {h:.4g} and kernel {kernel!r}: at some time fewer "
        "than three observations fall under the kernel, so the weighted local-quadratic fit is "
        f"singular. Increase the bandwidth (a fraction of the time span) to at least "
        f"{1.05 * needed:.3g}, or use the default (bandwidth=None).{extra}"
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
        kernel, bandwidth: see `nde.collocate`.
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
    bandwidth: float | None = eqx.field(default=None, static=True)
    loss_fn: Callable = l2
    args: Any = None

    def __check_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {self.kernel!r}.")
        if self.bandwidth is not None and not (
            np.isscalar(self.bandwidth) and np.isfinite(self.bandwidth) and self.bandwidth > 0
        ):
            raise ValueError(
                f"bandwidth must be a positive number or None, got {self.bandwidth!r}."
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
        check_state_shapes(model, batch.ts, batch.ys[0, 0], self.args, strategy="Collocation")
        mask = None if batch.mask is None else np.asarray(batch.mask)
        u_hat, du_hat = collocate(batch.ys, batch.ts, self.kernel, self.bandwidth, mask=mask)
        return batch.ts, u_hat, du_hat

    def loss(self, model, prepared, key) -> jax.Array:
        ts, u_hat, du_hat = prepared
        per_time = jax.vmap(lambda t, u: model.vector_field(t, u, self.args))
        pred = jax.vmap(lambda u: per_time(ts, u))(u_hat)
        return self.loss_fn(pred, du_hat, None)
