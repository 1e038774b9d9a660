"""Fit a neural DDE to the delayed logistic equation; a neural ODE of the same size for contrast.

Data: Hutchinson's delayed logistic equation y'(t) = r·y(t)·(1 − y(t − τ)) with r = 1.8, τ = 1,
history y = 0.5 for t ≤ 0, observed at 61 points on [0, 15] (solved by `nde.solve_dde` at rtol
1e-8). Its delayed negative feedback makes it oscillate; a one-dimensional autonomous ODE cannot
oscillate at all (its solutions are monotone), so a neural ODE of the same size can only follow the
trend, while the neural DDE, whose network sees [y(t), y(t − 1)], can reproduce the oscillation.
Both are fitted the same way: Adam on the first third of the series, then on the whole of it.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from .._checks import count_params
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plt, save_figure

RATE, LAG, T1, N_POINTS = 1.8, 1.0, 15.0, 61


def delayed_logistic(t, y, y_lagged, args):
    return RATE * y * (1.0 - y_lagged[0])


def make_data() -> nde.TimeSeries:
    ts = jnp.linspace(0.0, T1, N_POINTS)
    sol = nde.solve_dde(
        delayed_logistic, jnp.array([0.5]), [LAG], 0.0, T1, ts, rtol=1e-8, atol=1e-8
    )
    return nde.TimeSeries(ts, sol.ys)


def build_models(seed: int) -> tuple[nde.NeuralDDE, nde.NeuralODE]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    # 2 -> 32 -> 1 (129 parameters) and 1 -> 43 -> 1 (130 parameters): the same size.
    dde_net = eqx.nn.MLP(2, 1, 32, 1, activation=jnp.tanh, key=k1)
    ode_net = eqx.nn.MLP(1, 1, 43, 1, activation=jnp.tanh, key=k2)
    dde = nde.NeuralDDE(dde_net, lags=[LAG], rtol=1e-5, atol=1e-7, max_steps=512)
    ode = nde.NeuralODE(nde.autonomous(ode_net), rtol=1e-5, atol=1e-7, sensitivity=nde.Direct())
    return dde, ode


def train(model, data: nde.TimeSeries, steps: int, progress: bool):
    """Adam on the first third of the series (an easier problem), then on all of it."""
    third = nde.TimeSeries(data.ts[: N_POINTS // 3], data.ys[: N_POINTS // 3])
    first = nde.fit(
        model,
        third,
        nde.Trajectory(),
        optimizer=optax.adam(0.01),
        steps=max(1, steps // 3),
        progress=progress,
    )
    if first.interrupted:  # Ctrl-C: no second fit
        return first.model, first.losses, first, first
    second = nde.fit(
        first.model,
        data,
        nde.Trajectory(),
        optimizer=optax.adam(0.005),
        steps=steps,
        progress=progress,
    )
    losses = np.concatenate([first.losses, second.losses])
    return second.model, losses, first, second


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=int,
        default=600,
        help="Adam steps on the whole series (plus a third as many on its start)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/dde", help="output folder")


def run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data = make_data()
    dde, ode = build_models(args.seed)
    results, fits = {}, []
    for name, model in (("neural DDE", dde), ("neural ODE", ode)):
        fitted, losses, r1, r2 = train(model, data, args.steps, args.progress)
        fits.append(r2)
        m1, m2 = r1.metrics(), (r2.metrics() if r2 is not r1 else {"wall_seconds": 0.0})
        final = float(nde.Trajectory().loss(fitted, nde.Trajectory().prepare(fitted, data), None))
        results[name] = {
            "model": fitted,
            "losses": losses,
            "final_loss": final,
            "params": count_params(fitted),
            "wall_seconds": m1["wall_seconds"] + m2["wall_seconds"],
        }
        print(
            f"{name}: {results[name]['params']} parameters, final trajectory loss "
            f"(sum of squares over {N_POINTS} points) {final:.4f}"
        )
        if r2.interrupted:
            break
    dense_ts = jnp.linspace(0.0, T1, 400)
    metrics = {
        "demo": "dde",
        "steps": args.steps,
        **{
            name.replace(" ", "_"): {k: v for k, v in r.items() if k not in ("model", "losses")}
            for name, r in results.items()
        },
    }
    paths = write_outputs(
        out,
        results["neural DDE"]["model"],
        metrics,
        [("fit.png", lambda p: plot_comparison(p, data, dense_ts, results))],
    )
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(fits, paths)
    return metrics


def plot_comparison(path, data, dense_ts, results) -> None:
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    ax.plot(data.ts, data.ys[:, 0], "o", color="k", ms=3.5, label="data (delayed logistic)")
    for (name, r), color in zip(results.items(), ("C0", "C3"), strict=True):
        pred = r["model"](dense_ts, data.ys[0])
        ax.plot(
            dense_ts,
            pred[:, 0],
            "-",
            color=color,
            lw=1.8,
            label=f"{name} ({r['params']} params), loss {r['final_loss']:.3g}",
        )
        ax_loss.semilogy(
            np.arange(1, len(r["losses"]) + 1), r["losses"], color=color, lw=1.1, label=name
        )
    ax.set_xlabel("t")
    ax.set_ylabel("y")
    ax.set_title("y' = 1.8·y(t)·(1 − y(t − 1)): neural DDE vs neural ODE of the same size")
    ax.legend(fontsize=8)
    ax_loss.set_xlabel("step (first third of the series, then all of it)")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3, which="both")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
