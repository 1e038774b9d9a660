"""Fit a model to a time series in its own units: normalise, fit, predict, write the outputs.

What `neuraldiffeq fit data.csv` and the lynx-hare demo share. The data are normalised before
fitting (time shifted to 0 and scaled so that the median step is 0.25; each state standardised to
mean 0 and standard deviation 1, or only scaled), so that a network with the default
initialisation sees O(1) inputs and O(1) slopes whatever the units. Everything written (plots,
metrics) is in the original units; the normalisation is recorded in `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..io.outputs import prepare_out, write_outputs
from ..io.timeseries import TimeSeries
from ..solve.names import solver_name
from .fit import FitFailure, FitResult, fit_building
from .strategies import Trajectory, batch_solve, segment_starts

#: the median time step after normalisation
TIME_STEP = 0.25


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """Affine maps between original units and the units the model is fitted in.

    Computed in float64 whatever the working precision, so that data near the largest float32
    (1e30, say) gives a finite mean and scale; the scale is never 0 or infinite.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.series import Normaliser
        >>> data = nde.TimeSeries(np.arange(4.0), 1e30 * np.array([[1.0], [2.0], [3.0], [4.0]]))
        >>> norm = Normaliser.from_data(data)
        >>> [round(float(y), 2) for y in norm.forward(data).ys.ravel()]
        [-1.34, -0.45, 0.45, 1.34]
    """

    t0: float
    t_scale: float
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_data(cls, data: TimeSeries, center: bool = True) -> Normaliser:
        ts = np.asarray(data.ts, dtype=np.float64)
        ys = np.asarray(data.ys, dtype=np.float64).reshape(-1, data.dim)
        mask = None if data.mask is None else np.asarray(data.mask).reshape(-1, data.dim)
        observed = [ys[:, d] if mask is None else ys[mask[:, d], d] for d in range(data.dim)]
        for d, col in enumerate(observed):
            if col.size < 2:
                raise ValueError(
                    f"state column {d} has fewer than two observed values; drop it or add data."
                )
        mean = np.array([c.mean() for c in observed]) if center else np.zeros(data.dim)
        std = np.array([_spread(c - m) for c, m in zip(observed, mean, strict=True)])
        std = np.where((std > 0) & np.isfinite(std), std, 1.0)  # a constant column stays as is
        t_scale = float(np.median(np.diff(ts)) / TIME_STEP)  # > 0: ts strictly increasing
        span = (ts[-1] - ts[0]) / t_scale
        if not np.isfinite(span) or span > 1e6:
            raise ValueError(
                f"the time steps are too uneven to normalise: the series spans {span:.3g} median "
                "steps. Resample the data or drop isolated far-away times."
            )
        return cls(float(ts[0]), t_scale, mean, std)

    def forward(self, data: TimeSeries) -> TimeSeries:
        ts = (np.asarray(data.ts, np.float64) - self.t0) / self.t_scale
        ys = (np.asarray(data.ys, np.float64) - self.mean) / self.std
        return TimeSeries(ts, ys, data.mask)

    def times(self, ts) -> np.ndarray:
        return (np.asarray(ts, np.float64) - self.t0) / self.t_scale

    def states_back(self, ys) -> np.ndarray:
        return np.asarray(ys, np.float64) * self.std + self.mean

    def as_dict(self) -> dict:
        return {
            "time": f"(t - {self.t0}) / {self.t_scale}",
            "t0": self.t0,
            "t_scale": self.t_scale,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


def start_states(data: TimeSeries) -> np.ndarray:
    """Each trajectory's state at the first time, `(B, D)`, as `nde.Trajectory` starts it: a
    state not observed then (a series of a long table that starts later) is interpolated.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.series import start_states
        >>> ys = np.array([[[0.0], [2.0], [4.0]], [[9.0], [5.0], [6.0]]])
        >>> mask = np.array([[[True], [True], [True]], [[False], [True], [True]]])
        >>> start_states(nde.TimeSeries([0.0, 1.0, 2.0], ys, mask)).ravel().tolist()
        [0.0, 5.0]
    """
    batch = data.as_batch()
    if batch.mask is None:
        return np.asarray(batch.ys[:, 0])
    return segment_starts(batch.ts, batch.ys, batch.mask, [0])[:, 0]


def fitted_part(data: TimeSeries, holdout: int) -> TimeSeries:
    """`data` without its last `holdout` times (what `fit_series` fits).

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.series import fitted_part
        >>> fitted_part(nde.TimeSeries(np.arange(5.0), np.ones((5, 1))), 2).ts.tolist()
        [0.0, 1.0, 2.0]
    """
    if holdout == 0:
        return data
    n = data.ts.shape[0] - holdout
    mask = None if data.mask is None else data.mask[..., :n, :]
    return TimeSeries(data.ts[:n], data.ys[..., :n, :], mask)


def _spread(x: np.ndarray) -> float:
    """Root mean square of `x`, without overflow: factor out the largest magnitude first."""
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return top
    return top * float(np.sqrt(np.mean((x / top) ** 2)))


@dataclasses.dataclass
class SeriesFit:
    """What `fit_series` returns.

    Attributes:
        model: the fitted model (in normalised units: see `normaliser`).
        result: the `nde.FitResult` of the fit (losses, stages, interrupted).
        normaliser: the map between original and normalised units.
        metrics: the summary written to `metrics.json`.
        paths: the files written (empty when `out` is None).
        predictions: each series at each time of the data, held-out times included, in the
            original units, `(B, T, D)`.
    """

    model: Any
    result: FitResult
    normaliser: Normaliser
    metrics: dict
    paths: list[str]
    predictions: np.ndarray

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


def evaluate(
    model: Any, dense_ts: np.ndarray, obs_ts: np.ndarray, prepared: TimeSeries
) -> tuple[tuple[np.ndarray, np.ndarray], jax.Array]:
    """Every series of `prepared` (as `nde.Trajectory().prepare` gives it) at `dense_ts` and at
    `obs_ts`, and its `Trajectory` loss, in one compiled program.

    The dense curve and the observed values come from one solve on the union of the two grids
    (both end at the last time, and adaptive steps do not depend on where the solution is
    saved, so it gives the values two solves would); the loss solves over the fitted times
    alone, as the fit did. Times are taken in the working precision before they are merged,
    so two times that round to one value are one time. `dense_ts` and `obs_ts` must span the
    same interval.

    Example:
        >>> import jax.numpy as jnp, numpy as np, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.series import evaluate
        >>> ts = np.linspace(0.0, 1.0, 5)
        >>> data = nde.TimeSeries(ts, np.stack([np.exp(-ts), np.exp(-2 * ts)], -1))
        >>> model = nde.NeuralODE(lambda t, y, args: -jnp.array([1.0, 2.0]) * y)
        >>> prepared = nde.Trajectory().prepare(model, data)
        >>> (dense, observed), loss = evaluate(model, np.linspace(0, 1, 50), ts, prepared)
        >>> dense.shape, observed.shape, bool(loss < 1e-4)
        ((1, 50, 2), (1, 5, 2), True)
    """
    dtype = jnp.asarray(0.0).dtype  # the working precision
    dense_ts, obs_ts = (np.asarray(t, dtype=dtype) for t in (dense_ts, obs_ts))
    # JAX compiles once per placement: a fitted model's arrays are committed to their device
    # (a compiled step's outputs), a fresh model's are not. Committed here (nothing moves), one
    # program serves both, e.g. the one `fit_series` compiles ahead on the model before fitting.
    model = jax.tree_util.tree_map(_committed, model)
    grid = np.union1d(dense_ts, obs_ts)
    preds, loss = _solve_and_score(model, jnp.asarray(grid), prepared)
    preds = np.asarray(preds)
    return (
        preds[:, np.searchsorted(grid, dense_ts)],
        preds[:, np.searchsorted(grid, obs_ts)],
    ), loss


def _committed(x):
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed:
        return jax.device_put(x, x.sharding)
    return x


@eqx.filter_jit
def _solve_and_score(model, grid, prepared):
    strategy = Trajectory()
    return batch_solve(model, grid, prepared.ys[:, 0]), strategy.loss(model, prepared, None)


def fit_series(
    data: TimeSeries,
    model: Any,
    stages: Any,
    out: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str = "fit",
    holdout: int = 0,
    center: bool = True,
    progress: bool = True,
    extra_metrics: dict | None = None,
    devices: Any = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> SeriesFit:
    """Normalise `data`, fit its first `T - holdout` points, and write the outputs to `out`.

    `stages` is what `nde.fit` accepts (a list of `nde.Stage` or a preset name). With `out`, the
    folder is checked for writability before fitting, then `model.eqx`, `metrics.json`, `fit.png`
    (and `extrapolation.png` with a holdout) are written in that order; see `io.outputs`.
    `devices` is passed to `nde.fit` (data-parallel over the series; None: one device), and so
    are `checkpoint_dir`, `checkpoint_every` and `resume` (resumable fits). In a multi-process
    run (`jax.distributed`), only process 0 writes the outputs.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.series import fit_series
        >>> ts = np.linspace(0.0, 3.0, 12)
        >>> data = nde.TimeSeries(ts, np.stack([np.cos(ts), np.sin(ts)], -1))
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> stages = [nde.Stage(nde.Trajectory(), optax.adam(0.01), 3)]
        >>> fitted = fit_series(data, nde.NeuralODE(nde.autonomous(mlp)), stages, progress=False)
        >>> fitted.result.losses.shape, bool(np.isfinite(fitted.metrics["train_mse"]))
        ((3,), True)
    """
    if out is not None:
        out = prepare_out(out)
    n = data.ts.shape[0]
    train = fitted_part(data, holdout)
    norm = Normaliser.from_data(train, center=center)
    train_n = norm.forward(train)
    dense_ts = np.linspace(float(data.ts[0]), float(data.ts[-1]), 400)
    grids = norm.times(dense_ts), norm.times(data.ts)

    def build_evaluation(trained):  # the program `evaluate` runs below, compiled ahead
        evaluate(trained, *grids, Trajectory().prepare(trained, train_n))

    def import_plotting(trained):  # matplotlib: imported while a core would wait, if not yet
        if out is not None:
            from ..io import plotting  # noqa: F401

    started = time.perf_counter()
    try:
        result = fit_building(
            model,
            train_n,
            stages,
            # one device: the fitted model is placed as the model the job is given
            also_build=[build_evaluation, import_plotting] if devices is None else [],
            progress=progress,
            devices=devices,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
    except FitFailure as failure:
        if (
            out is not None and jax.process_index() == 0
        ):  # keep the best model so far; the failure is still raised
            paths = write_outputs(out, failure.result.model, failure.result.metrics())
            failure.args = (f"{failure.args[0]} It is saved at {paths[0]}.",)
        raise
    wall = time.perf_counter() - started
    model = result.model

    prepared = Trajectory().prepare(model, train_n)
    preds, train_loss = evaluate(model, *grids, prepared)
    pred_dense, pred_obs = (norm.states_back(p) for p in preds)
    obs = np.asarray(data.as_batch().ys, np.float64)
    observed = np.ones(obs.shape, bool) if data.mask is None else np.asarray(data.as_batch().mask)

    def mse(sl):
        err = (pred_obs[:, sl] - obs[:, sl]) ** 2
        return float(np.sum(np.where(observed[:, sl], err, 0)) / max(observed[:, sl].sum(), 1))

    metrics = {
        "title": title,
        **(extra_metrics or {}),
        "n_times": int(n),
        "n_train": int(n - holdout),
        "holdout": int(holdout),
        "normalisation": norm.as_dict(),
        "trajectory_loss_normalised": float(train_loss),
        "train_mse": mse(slice(0, n - holdout)),
        "holdout_mse": mse(slice(n - holdout, n)) if holdout else None,
        "fit_wall_seconds": wall,
        "solver": solver_name(getattr(model, "solver", None)),  # "auto" shows its choice
        **result.metrics(),
    }
    paths: list[str] = []
    if result.interrupted:  # the picture says so too
        title = f"{title} (interrupted at step {len(result.losses)})"
    if out is not None and jax.process_index() == 0:  # one writer in a multi-process run
        from ..io.plotting import plot_fit  # matplotlib: only when there are figures to draw

        # the same observations and dense prediction in both figures
        shown = np.where(observed, obs, np.nan)  # missing values are not drawn
        plot = functools.partial(
            plot_fit,
            ts=np.asarray(data.ts),
            ys=shown if data.batched else shown[0],
            pred_ts=dense_ts,
            pred_ys=pred_dense[0] if not data.batched else pred_dense,
            labels=list(labels) if labels else None,
            holdout_from=float(data.ts[n - holdout]) if holdout else None,
        )
        figures = [
            ("fit.png", lambda p: plot(p, losses=result.losses, stages=result.stages, title=title))
        ]
        if holdout:
            extrapolation = f"extrapolation: last {holdout} points held out"
            figures.append(("extrapolation.png", lambda p: plot(p, title=extrapolation)))
        paths = write_outputs(out, model, metrics, figures)
    return SeriesFit(model, result, norm, metrics, paths, pred_obs)
