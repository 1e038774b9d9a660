"""`neuraldiffeq fit DATA.csv --time COL`: fit a neural ODE to the columns of a CSV file.

The data are normalised before fitting (time shifted to 0 and scaled so that the median step is
0.25; each state standardised to mean 0 and standard deviation 1), so that a network with the
default initialisation sees O(1) inputs and O(1) slopes whatever the units. Everything written
(plots, metrics) is in the original units; the normalisation is recorded in `metrics.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data import TimeSeries
from ..demos._common import prepare_out, write_json
from ..fitting.fit import fit
from ..fitting.strategies import PRESETS, Trajectory
from ..models import NeuralODE, autonomous
from ..plotting import plot_fit
from ..serialisation import save

#: --strategy choices -> presets (see `neuraldiffeq.fitting.presets`).
STRATEGIES = {
    "auto": "auto",
    "mixed": "mixed",
    "trajectory": "trajectory",
    "shooting": "shooting",
    "collocation": "collocation",
}
#: the median time step after normalisation
TIME_STEP = 0.25


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """Affine maps between original units and the units the model is fitted in."""

    t0: float
    t_scale: float
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_data(cls, data: TimeSeries, center: bool = True) -> Normaliser:
        ts = np.asarray(data.ts)
        ys = np.asarray(data.ys).reshape(-1, data.dim)
        mask = None if data.mask is None else np.asarray(data.mask).reshape(-1, data.dim)
        observed = [ys[:, d] if mask is None else ys[mask[:, d], d] for d in range(data.dim)]
        for d, col in enumerate(observed):
            if col.size < 2:
                raise ValueError(f"state column {d} has fewer than two observed values.")
        if center:
            mean = np.array([c.mean() for c in observed])
            std = np.array([c.std() for c in observed])
        else:  # keep zero where it is (e.g. populations): scale only
            mean = np.zeros(data.dim)
            std = np.array([np.sqrt(np.mean(c**2)) for c in observed])
        std = np.where(std > 0, std, 1.0)  # a constant column stays as it is
        return cls(float(ts[0]), float(np.median(np.diff(ts)) / TIME_STEP), mean, std)

    def forward(self, data: TimeSeries) -> TimeSeries:
        ts = (np.asarray(data.ts) - self.t0) / self.t_scale
        ys = (np.asarray(data.ys) - self.mean) / self.std
        return TimeSeries(ts, ys, data.mask)

    def times(self, ts) -> np.ndarray:
        return (np.asarray(ts) - self.t0) / self.t_scale

    def states_back(self, ys) -> np.ndarray:
        return np.asarray(ys) * self.std + self.mean

    def as_dict(self) -> dict:
        return {
            "time": f"(t - {self.t0}) / {self.t_scale}",
            "t0": self.t0,
            "t_scale": self.t_scale,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="CSV file with a header row")
    parser.add_argument("--time", required=True, help="name of the time column")
    parser.add_argument(
        "--columns",
        nargs="+",
        default=None,
        help="state columns to fit (default: every column but the time)",
    )
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of the MLP")
    parser.add_argument(
        "--strategy",
        choices=sorted(STRATEGIES),
        default="auto",
        help="auto = multiple shooting -> trajectory -> L-BFGS; mixed = collocation first "
        "(for dense series)",
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="Adam steps of each solving stage (default 300)"
    )
    parser.add_argument(
        "--lbfgs-steps",
        type=int,
        default=100,
        help="L-BFGS polish steps at the end (0: none; not used by collocation)",
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="hold out the last points for an extrapolation plot: a fraction "
        "in (0, 1) or a number of points",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/fit", help="output folder")


def parse_holdout(holdout: float | None, n_times: int) -> int:
    """Number of final time points to hold out."""
    if holdout is None or holdout == 0:
        return 0
    if 0 < holdout < 1:
        count = int(round(holdout * n_times))
    elif holdout >= 1 and float(holdout).is_integer():
        count = int(holdout)
    else:
        raise ValueError(
            f"--holdout must be a fraction in (0, 1) or a whole number of points, got {holdout}."
        )
    if not 1 <= count <= n_times - 5:
        raise ValueError(
            f"--holdout {holdout} holds out {count} of {n_times} time points; keep at least 5 "
            "for fitting and hold out at least one."
        )
    return count


def read_csv(path: str, time_col: str, columns: Sequence[str] | None) -> TimeSeries:
    """`TimeSeries.from_csv` with CLI-friendly messages."""
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist.")
    try:
        return TimeSeries.from_csv(path, time=time_col, columns=columns)
    except ValueError as e:
        if "strictly increasing" in str(e):
            raise ValueError(
                f"the time column {time_col!r} of {path!r} must be strictly increasing, with "
                f"no repeated times: {e}"
            ) from None
        raise


def mlp_model(dim: int, hidden: int, depth: int, seed: int) -> NeuralODE:
    mlp = eqx.nn.MLP(dim, dim, hidden, depth, activation=jnp.tanh, key=jax.random.key(seed))
    return NeuralODE(autonomous(mlp), "tsit5", rtol=1e-4, atol=1e-6, max_steps=8192)


def fit_series(
    data: TimeSeries,
    model,
    stages,
    out: str,
    *,
    labels: Sequence[str],
    title: str,
    holdout: int = 0,
    center: bool = True,
    progress: bool = True,
    on_prediction: Callable | None = None,
) -> dict:
    """Normalise, fit the first T - holdout points, write model.eqx, fit.png, metrics.json."""
    out = prepare_out(out)
    n = data.ts.shape[0]
    train = (
        data
        if holdout == 0
        else TimeSeries(
            data.ts[: n - holdout],
            data.ys[..., : n - holdout, :],
            None if data.mask is None else data.mask[..., : n - holdout, :],
        )
    )
    norm = Normaliser.from_data(train, center=center)
    train_n = norm.forward(train)
    started = time.perf_counter()
    result = fit(model, train_n, stages, progress=progress)
    wall = time.perf_counter() - started
    model = result.model

    batch = train_n.as_batch()
    y0 = batch.ys[:, 0]
    dense_ts = np.linspace(float(data.ts[0]), float(data.ts[-1]), 400)
    pred_dense = jax.vmap(lambda y: model(jnp.asarray(norm.times(dense_ts)), y))(y0)
    pred_obs = jax.vmap(lambda y: model(jnp.asarray(norm.times(data.ts)), y))(y0)
    pred_dense = norm.states_back(pred_dense)
    pred_obs = norm.states_back(pred_obs)
    obs = np.asarray(data.as_batch().ys)
    observed = np.ones(obs.shape, bool) if data.mask is None else np.asarray(data.as_batch().mask)

    def mse(sl):
        err = (pred_obs[:, sl] - obs[:, sl]) ** 2
        return float(np.sum(np.where(observed[:, sl], err, 0)) / max(observed[:, sl].sum(), 1))

    train_loss = float(Trajectory().loss(model, Trajectory().prepare(model, train_n), None))
    metrics = {
        "title": title,
        "n_times": int(n),
        "n_train": int(n - holdout),
        "holdout": int(holdout),
        "normalisation": norm.as_dict(),
        "trajectory_loss_normalised": train_loss,
        "train_mse": mse(slice(0, n - holdout)),
        "holdout_mse": mse(slice(n - holdout, n)) if holdout else None,
        "fit_wall_seconds": wall,
        **result.metrics(),
    }
    squeeze = not data.batched
    # the same observations and dense prediction in both figures
    plot = functools.partial(
        plot_fit,
        ts=np.asarray(data.ts),
        ys=obs[0] if squeeze else np.where(observed, obs, np.nan),
        pred_ts=dense_ts,
        pred_ys=pred_dense[0] if squeeze else pred_dense,
        labels=list(labels),
        holdout_from=float(data.ts[n - holdout]) if holdout else None,
    )
    plot(os.path.join(out, "fit.png"), losses=result.losses, title=title)
    if holdout:
        plot(
            os.path.join(out, "extrapolation.png"),
            title=f"extrapolation: last {holdout} points held out",
        )
    if on_prediction is not None:
        on_prediction(dense_ts, pred_dense)
    write_json(os.path.join(out, "metrics.json"), metrics)
    save(os.path.join(out, "model.eqx"), model)
    return metrics


def run(args: argparse.Namespace) -> dict:
    for name, low in (("hidden", 1), ("depth", 0), ("steps", 1), ("lbfgs_steps", 0)):
        if getattr(args, name) < low:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag} must be at least {low}, got {getattr(args, name)}.")
    data = read_csv(args.data, args.time, args.columns)
    holdout = parse_holdout(args.holdout, data.ts.shape[0])
    labels = args.columns or _state_columns(args.data, args.time)
    model = mlp_model(data.dim, args.hidden, args.depth, args.seed)
    preset = STRATEGIES[args.strategy]
    extra = {} if preset == "collocation" else {"lbfgs_steps": args.lbfgs_steps}
    stages = PRESETS[preset](steps=args.steps, **extra)
    metrics = fit_series(
        data,
        model,
        stages,
        args.out,
        labels=labels,
        holdout=holdout,
        progress=args.progress,
        title=f"neural ODE fit to {os.path.basename(args.data)} ({args.strategy})",
    )
    metrics["strategy"] = args.strategy
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(
        f"train MSE (original units): {metrics['train_mse']:.5g}"
        + (f", held-out MSE: {metrics['holdout_mse']:.5g}" if holdout else "")
    )
    print(f"wrote {args.out}/fit.png, {args.out}/metrics.json, {args.out}/model.eqx")
    return metrics


def _state_columns(path: str, time_col: str) -> list[str]:
    from ..data import _read_csv

    header, _ = _read_csv(path)
    return [c for c in header if c != time_col]
