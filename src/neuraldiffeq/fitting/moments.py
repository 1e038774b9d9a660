"""Fitting stochastic models to many paths: moment matching, or a per-path Gaussian likelihood."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_series, eval_shape_or_raise
from .strategies import AbstractStrategy, as_timeseries

OBJECTIVES = ("moments", "likelihood")


class MomentMatching(AbstractStrategy):
    """Fit a stochastic model (e.g. `nde.NeuralSDE`) to the spread of many observed paths.

    Each training step draws `n_paths` model paths with a fresh key (`fit` passes a new key every
    step) from the data's initial state, and compares them with the data:

    - `objective="moments"` (DiffEqFlux's neural SDE tutorial): the sum of squared differences
      between the model's and the data's mean over paths, plus the same for the variances, at every
      time and state component.
    - `objective="likelihood"`: the data are paths themselves; each observed path's negative
      Gaussian log-likelihood under the model's marginal mean and variance at each time (estimated
      from the `n_paths` samples, plus `var_floor`), averaged over the observed paths and summed
      over times after the first (the initial state is given, its variance is zero).

    Data: an `nde.TimeSeries` (or `(ts, ys)`) whose `ys` has shape (B, T, D), B ≥ 2 observed paths
    all starting from the same state; or, for `"moments"` only, a dict with `"ts"` (T,),
    `"mean"` (T, D), `"var"` (T, D) (e.g. moments computed from many more paths than fit in
    memory). The model is called as `model.sample(ts, y0, key=key, n=n_paths, args=args)
    -> (n_paths, T, D)` with y0 the data's mean at the first time; `prepare` checks that the
    model has `sample` and that its shapes match the data's.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> ts = jnp.linspace(0, 1, 10)
        >>> truth = nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: 0.2 * y, dt0=0.05)
        >>> paths = truth.sample(ts, jnp.array([1.0, 0.5]), jax.random.key(0), 64)
        >>> strategy = nde.MomentMatching(n_paths=32)
        >>> prepared = strategy.prepare(truth, nde.TimeSeries(ts, paths))
        >>> float(strategy.loss(truth, prepared, jax.random.key(1))) < 0.1
        True
    """

    n_paths: int = eqx.field(static=True, default=100)
    objective: str = eqx.field(static=True, default="moments")
    var_floor: float = eqx.field(static=True, default=1e-6)
    args: Any = None

    def __check_init__(self):
        if not (isinstance(self.n_paths, int | np.integer) and self.n_paths >= 2):
            raise ValueError(f"n_paths must be an integer ≥ 2, got {self.n_paths!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be 'moments' or 'likelihood', got {self.objective!r}."
            )
        if not (np.isscalar(self.var_floor) and self.var_floor > 0):
            raise ValueError(f"var_floor must be a positive number, got {self.var_floor!r}.")

    def prepare(self, model: Any, data: Any) -> dict:
        if not callable(getattr(model, "sample", None)):
            raise ValueError(
                "MomentMatching compares the data with paths sampled from the model, so the model "
                f"needs a sample(ts, y0, key, n, args) method (e.g. nde.NeuralSDE); "
                f"{type(model).__name__} has none."
            )
        prepared = self._prepare_data(data)
        ts, y0 = prepared["ts"], prepared["y0"]
        want = (self.n_paths, ts.shape[0], *y0.shape)
        out = eval_shape_or_raise(
            lambda t, y: self._sample(model, t, y, jax.random.key(0)),
            (ts, y0),
            f"MomentMatching: {type(model).__name__}.sample fails on the data's times "
            f"{ts.shape} and initial state {y0.shape}. Is the model built for this many states?",
        )
        if getattr(out, "shape", None) != want:
            raise ValueError(
                f"MomentMatching: {type(model).__name__}.sample returns shape "
                f"{getattr(out, 'shape', None)} for {self.n_paths} paths, but the data need {want}."
            )
        return prepared

    def _sample(self, model, ts, y0, key):
        return model.sample(ts, y0, key=key, n=self.n_paths, args=self.args)

    def _prepare_data(self, data: Any) -> dict:
        if isinstance(data, dict):
            if self.objective != "moments":
                raise ValueError(
                    "objective='likelihood' needs the observed paths (a TimeSeries with ys of "
                    "shape (B, T, D)), not precomputed moments."
                )
            missing = {"ts", "mean", "var"} - set(data)
            if missing:
                raise ValueError(f"moment data needs keys 'ts', 'mean', 'var'; missing {missing}.")
            ts, mean, _ = check_series(data["ts"], data["mean"], ts_name="ts", ys_name="'mean'")
            _, var, _ = check_series(data["ts"], data["var"], ts_name="ts", ys_name="'var'")
            if mean.ndim != 2 or mean.shape != var.shape:
                raise ValueError(
                    f"'mean' and 'var' must both have shape (T, D) with T = len(ts) = "
                    f"{ts.shape[0]}, got {mean.shape} and {var.shape}."
                )
            return {"ts": ts, "y0": mean[0], "mean": mean, "var": var}
        series = as_timeseries(data)
        if series.ys.ndim != 3 or series.ys.shape[0] < 2:
            raise ValueError(
                "MomentMatching needs several observed paths: a TimeSeries with ys of shape "
                f"(B, T, D), B ≥ 2; got ys of shape {series.ys.shape}."
            )
        if series.mask is not None:
            raise ValueError("MomentMatching does not support missing values (mask) yet.")
        ys = series.ys
        prepared = {"ts": series.ts, "y0": jnp.mean(ys[:, 0], axis=0)}
        if self.objective == "moments":
            prepared.update(mean=jnp.mean(ys, axis=0), var=jnp.var(ys, axis=0))
        else:
            prepared.update(paths=ys)
        return prepared

    @property
    def stochastic(self) -> bool:  # fresh samples every step: keep the last iterate
        return True

    def batch_axes(self, prepared: dict) -> dict | None:
        """`"likelihood"`: the observed paths are split over the devices. `"moments"`: nothing is.

        The model's `n_paths` sampled paths are drawn inside the loss from one key, so with
        `objective="moments"` (whose data are already reduced to a mean and a variance) every
        device runs the whole step: `devices=` then gives the same losses but no speed-up.
        """
        if self.objective == "likelihood":
            return {"ts": None, "y0": None, "paths": 0}
        return None

    def loss(self, model, prepared: dict, key: jax.Array) -> jax.Array:
        samples = self._sample(model, prepared["ts"], prepared["y0"], key)
        mean, var = jnp.mean(samples, axis=0), jnp.var(samples, axis=0)
        if self.objective == "moments":
            return jnp.sum((mean - prepared["mean"]) ** 2) + jnp.sum((var - prepared["var"]) ** 2)
        paths = prepared["paths"][:, 1:]
        mean, var = mean[1:], var[1:] + self.var_floor
        nll = 0.5 * (jnp.log(2 * jnp.pi * var) + (paths - mean) ** 2 / var)
        return jnp.sum(nll) / paths.shape[0]
