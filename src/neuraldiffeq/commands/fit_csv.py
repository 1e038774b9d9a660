"""`neuraldiffeq fit DATA.csv --time COL`: fit a neural ODE to the columns of a CSV file.

With `--id COLUMN` the file is a long table of several series (one per value of that column,
each with its own times); they are fitted together, and `predictions.csv` holds the fitted
model's prediction for each series at each of its observed times.

The data are normalised before fitting (time shifted to 0 and scaled so that the median step is
0.25; each state standardised to mean 0 and standard deviation 1), so that a network with the
default initialisation sees O(1) inputs and O(1) slopes whatever the units. Everything written
(plots, metrics) is in the original units; the normalisation is recorded in `metrics.json`.
The model is written first (model.eqx), then metrics.json, then the plots.
"""

from __future__ import annotations

# Only the standard library at import time: `neuraldiffeq fit --help` needs no JAX.
import argparse
import os
from collections.abc import Sequence

#: --strategy choices -> presets (see `neuraldiffeq.fitting.presets`).
STRATEGIES = {
    "auto": "auto",
    "mixed": "mixed",
    "trajectory": "trajectory",
    "shooting": "shooting",
    "collocation": "collocation",
}
#: strategies whose stages include multiple shooting (where --group-size applies)
SHOOTING_STRATEGIES = ("auto", "mixed", "shooting")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="CSV file with a header row (delimiter , ; tab or |; also .csv.gz), or Parquet",
    )
    parser.add_argument("--time", required=True, help="name of the time column")
    parser.add_argument(
        "--id",
        default=None,
        metavar="COLUMN",
        help="column naming the series of each row (a long table of several series, e.g. one "
        "per patient, each with its own times): fit them all at once",
    )
    parser.add_argument(
        "--time-unit",
        default=None,
        choices=["D", "h", "min", "s", "ms", "us", "ns"],
        help="the time column holds dates/times: one time unit of the model is this long "
        "(with --time-origin)",
    )
    parser.add_argument(
        "--time-origin",
        default=None,
        help="the date/time that is time 0 (ISO 8601, e.g. 2024-01-01; with --time-unit)",
    )
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
        "--group-size",
        type=int,
        default=None,
        help="points per multiple-shooting segment (>= 2; auto, mixed and shooting only; "
        "default: the preset's, 3)",
    )
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of each solving stage")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the network's initialisation")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="split the series over this many devices (nde.fit's devices=; the number of "
        "series must divide by it); default: one device",
    )
    parser.add_argument("--out", default="out/fit", help="output folder")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="write checkpoints of the fit to this folder (nde.fit's checkpoint_dir=)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        help="steps between checkpoints (with --checkpoint-dir; also at each stage's end)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --checkpoint-dir (rerun the same "
        "command with --resume after the fit was stopped)",
    )
    parser.add_argument(
        "--discover",
        action="store_true",
        help="after the fit, explain the fitted field by a sparse polynomial of the states "
        "(SINDy on the network, in the data's units), refit its coefficients by L-BFGS "
        "(--lbfgs-steps) and write equation.txt and discovery.json",
    )
    parser.add_argument(
        "--discover-degree",
        type=int,
        default=2,
        help="highest degree of the monomials --discover tries",
    )


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


def read_csv(
    path: str,
    time_col: str,
    columns: Sequence[str] | None,
    id: str | None = None,
    time_unit: str | None = None,
    time_origin: str | None = None,
):
    """`TimeSeries.from_csv` with CLI-friendly messages."""
    from ..io.timeseries import TimeSeries

    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist.")
    try:
        return TimeSeries.from_csv(
            path,
            time=time_col,
            columns=columns,
            id=id,
            time_unit=time_unit,
            time_origin=time_origin,
        )
    except ValueError as e:
        if "strictly increasing" in str(e):
            raise ValueError(
                f"the time column {time_col!r} of {path!r} must be strictly increasing, with "
                f"no repeated times: {e}"
            ) from None
        raise


def mlp_model(dim: int, hidden: int, depth: int, seed: int):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ..models import NeuralODE, autonomous

    # built in one compiled program: run eagerly, each layer's initialisation compiles its own
    # (the same numbers either way)
    @eqx.filter_jit
    def build(seed):
        return eqx.nn.MLP(dim, dim, hidden, depth, activation=jnp.tanh, key=jax.random.key(seed))

    mlp = build(np.int32(seed))
    return NeuralODE(autonomous(mlp), "auto", rtol=1e-4, atol=1e-6, max_steps=8192)


def build_stages(strategy: str, steps: int, lbfgs_steps: int, group_size: int | None) -> list:
    """The preset's stages, with `group_size` given to its multiple shooting."""
    import dataclasses

    from ..fitting.presets import PRESETS
    from ..fitting.shooting import MultipleShooting

    preset = STRATEGIES[strategy]
    extra = {} if preset == "collocation" else {"lbfgs_steps": lbfgs_steps}
    stages = PRESETS[preset](steps=steps, **extra)
    if group_size is None:
        return stages
    if strategy not in SHOOTING_STRATEGIES:
        raise ValueError(
            f"--group-size applies to multiple shooting, which --strategy {strategy} does not "
            f"use; use --strategy {' / '.join(SHOOTING_STRATEGIES)} or drop --group-size."
        )
    if group_size < 2:
        raise ValueError(f"--group-size must be at least 2, got {group_size}.")
    return [
        dataclasses.replace(s, strategy=dataclasses.replace(s.strategy, group_size=group_size))
        if isinstance(s.strategy, MultipleShooting)
        else s
        for s in stages
    ]


def run(args: argparse.Namespace) -> dict:
    from ..fitting.series import fit_series
    from ..io.outputs import Interrupted, prepare_out

    if getattr(args, "devices", None) is not None and args.devices < 1:
        raise ValueError(f"--devices must be at least 1, got {args.devices}.")
    checkpoint_dir = getattr(args, "checkpoint_dir", None)
    if getattr(args, "resume", False) and checkpoint_dir is None:
        raise ValueError("--resume continues a fit from --checkpoint-dir; give --checkpoint-dir.")
    if checkpoint_dir is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}.")
    for name, low in (("hidden", 1), ("depth", 0), ("steps", 1), ("lbfgs_steps", 0)):
        if getattr(args, name) < low:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag} must be at least {low}, got {getattr(args, name)}.")
    discover_degree = getattr(args, "discover_degree", 2)
    if getattr(args, "discover", False) and discover_degree < 1:
        raise ValueError(f"--discover-degree must be at least 1, got {discover_degree}.")
    stages = build_stages(args.strategy, args.steps, args.lbfgs_steps, args.group_size)
    data = read_csv(
        args.data,
        args.time,
        args.columns,
        getattr(args, "id", None),
        getattr(args, "time_unit", None),
        getattr(args, "time_origin", None),
    )
    holdout = parse_holdout(args.holdout, data.ts.shape[0])
    if args.group_size is not None and args.group_size > data.ts.shape[0] - holdout:
        raise ValueError(
            f"--group-size {args.group_size} exceeds the {data.ts.shape[0] - holdout} time "
            "points fitted; use a smaller --group-size."
        )
    labels = list(data.columns)
    prepare_out(args.out)  # before fitting: a fit is never lost to an unwritable folder
    fitted = fit_series(
        data,
        mlp_model(data.dim, args.hidden, args.depth, args.seed),
        stages,
        args.out,
        labels=labels,
        holdout=holdout,
        progress=args.progress,
        title=f"neural ODE fit to {os.path.basename(args.data)} ({args.strategy})",
        extra_metrics={"strategy": args.strategy, "group_size": args.group_size},
        devices=getattr(args, "devices", None),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=args.checkpoint_every if checkpoint_dir is not None else None,
        resume=getattr(args, "resume", False),
    )
    metrics = fitted.metrics
    print(
        f"solver: {metrics['solver']}; train MSE (original units): {metrics['train_mse']:.5g}"
        + (f", held-out MSE: {metrics['holdout_mse']:.5g}" if holdout else "")
    )
    if data.ids is not None and fitted.paths and not fitted.interrupted:
        fitted.paths.append(write_predictions(args.out, data, fitted, args.id, args.time))
    if getattr(args, "discover", False) and fitted.paths and not fitted.interrupted:
        from .fit_discover import discover_fit

        metrics["discovery"] = discover_fit(
            data,
            fitted,
            labels,
            degree=discover_degree,
            holdout=holdout,
            lbfgs_steps=args.lbfgs_steps,
            out=args.out,
            time_name=args.time,
            progress=args.progress,
        )
        fitted.paths.extend(os.path.join(args.out, f) for f in ("equation.txt", "discovery.json"))
    print("wrote " + ", ".join(fitted.paths))
    if fitted.interrupted:
        raise Interrupted(
            f"interrupted at step {metrics['steps']}, best model saved to {fitted.paths[0]}"
        )
    return metrics


def write_predictions(out: str, data, fitted, id_name: str, time_name: str) -> str:
    """`predictions.csv`: each series' prediction (original units) at each time it was seen."""
    from ..io.outputs import write_bytes_atomically
    from ..io.timeseries import TimeSeries

    preds = fitted.predictions
    # as the data: the times each series was observed at (in the long table's units)
    frame = TimeSeries(data.ts, preds, data.mask, ids=data.ids, columns=data.columns).to_frame(
        time=time_name, id=id_name
    )
    path = os.path.join(out, "predictions.csv")
    write_bytes_atomically(path, frame.write_csv().encode("utf-8"))
    return path
