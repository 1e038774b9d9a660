"""Robertson's kinetics as a mass-matrix DAE: fit the three rates with `nde.NeuralODEMM`.

The DAE form of Robertson's reactions keeps two rate equations and replaces the third by the
conservation law, with M = diag(1, 1, 0):

    y1' = -k1·y1 + k3·y2·y3,   y2' = k1·y1 - k3·y2·y3 - k2·y2²,   0 = y1 + y2 + y3 - 1.

Observations: the `stiff` demo's (the ODE form at 40 log-spaced times on [1e-5, 1e5], k1 = 0.04,
k2 = 3e7, k3 = 1e4). The three rates are fitted in log space from the same wrong start (each rate
off by a factor 2 to 5) with the mass-matrix Radau IIA solver (`"radau5"`), Adam then L-BFGS,
on the per-species scaled misfit. Every state the solver saves satisfies the conservation law to
the Newton tolerance; the demo reports the largest violation along the fitted trajectory.
Everything runs in float64. Writes `model.eqx`, `metrics.json` and `fit.png`.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..outputs import prepare_out, stop_if_interrupted, write_outputs
from .stiff import START_FACTORS, TRUE_RATES, ScaledL2, observations

#: M = diag(1, 1, 0): two differential equations and the conservation law
MASS = (1.0, 1.0, 0.0)


class RobertsonDAE(eqx.Module):
    """Robertson's kinetics in DAE form with learnable log-rates: f(t, y) for M = diag(1, 1, 0).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.dae import RobertsonDAE
        >>> field = RobertsonDAE(jnp.log(jnp.array([0.04, 3e7, 1e4])))
        >>> [round(float(v), 4) for v in field(0.0, jnp.array([1.0, 0.0, 0.0]))]
        [-0.04, 0.04, 0.0]
    """

    log_rates: jax.Array

    def __call__(self, t, y, args=None):
        k1, k2, k3 = jnp.exp(self.log_rates)
        r1, r2, r3 = k1 * y[0], k2 * y[1] ** 2, k3 * y[1] * y[2]
        return jnp.stack([-r1 + r3, r1 - r2 - r3, y[0] + y[1] + y[2] - 1.0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=150, help="Adam steps")
    parser.add_argument("--lbfgs-steps", type=int, default=60, help="L-BFGS steps after Adam")
    parser.add_argument("--max-steps", type=int, default=2000, help="solver steps per solve")
    parser.add_argument("--out", default="out/dae", help="output folder")


def run(args: argparse.Namespace) -> dict:
    with jax.enable_x64(True):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data = observations()
    start = jnp.log(jnp.array(TRUE_RATES) * jnp.array(START_FACTORS))
    strategy = nde.Trajectory(loss_fn=ScaledL2(jnp.max(jnp.abs(data.ys), axis=0)))
    settings = dict(rtol=1e-6, atol=1e-10, max_steps=args.max_steps)
    model = nde.NeuralODEMM(RobertsonDAE(start), MASS, **settings)
    y0 = model.consistent(data.ys[0], data.ts[0])  # the observation is consistent; made exact

    stages = [nde.Stage(strategy, optax.adam(0.05), args.steps)]
    if args.lbfgs_steps > 0:
        stages.append(nde.Stage(strategy, optax.lbfgs(), args.lbfgs_steps))
    began = time.perf_counter()
    result = nde.fit(model, data, stages, progress=args.progress)
    seconds = time.perf_counter() - began
    fitted = np.exp(np.asarray(result.model.field.log_rates))
    errors = np.abs(fitted / np.array(TRUE_RATES) - 1.0)
    print(
        "radau5 (DAE form): rates "
        + ", ".join(
            f"k{i + 1} = {k:.6g} ({e:.1e} off)"
            for i, (k, e) in enumerate(zip(fitted, errors, strict=True))
        )
    )

    dense = jnp.logspace(-5, 5, 300)
    solution = result.model.solve(dense, y0, throw=False)
    fit_curve = np.asarray(solution.ys)
    conservation = float(np.max(np.abs(fit_curve.sum(axis=1) - 1.0)))
    start_curve = np.asarray(nde.NeuralODEMM(RobertsonDAE(start), MASS, **settings)(dense, y0))
    metrics = {
        "demo": "dae",
        "form": "M = diag(1, 1, 0): y1' and y2' rate equations, 0 = y1 + y2 + y3 - 1",
        "solver": "radau5 (Radau IIA order 5 with the mass matrix in its stage equations)",
        "true_rates": list(TRUE_RATES),
        "start_rates": (np.array(TRUE_RATES) * np.array(START_FACTORS)).tolist(),
        "fitted_rates": fitted.tolist(),
        "relative_errors": errors.tolist(),
        "max_relative_error": float(errors.max()),
        "max_conservation_violation": conservation,
        "solver_steps_fitted_trajectory": int(solution.stats["num_steps"]),
        "fit_seconds": seconds,
        **result.metrics(),
        "settings": dict(settings),
    }

    def draw(path):
        _plot(path, data, dense, fit_curve, start_curve, result, errors, conservation)

    paths = write_outputs(out, result.model, metrics, [("fit.png", draw)])
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def _plot(path, data, dense, fit_curve, start_curve, result, errors, conservation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    names = ["y1", "y2 (x 1e4)", "y3 (algebraic: 1 - y1 - y2)"]
    scale = np.array([1.0, 1e4, 1.0])
    ts, ys = np.asarray(data.ts), np.asarray(data.ys) * scale
    for i, ax in enumerate(axes[:3]):
        ax.plot(ts, ys[:, i], "o", color="k", ms=4, label="observations")
        ax.plot(np.asarray(dense), fit_curve[:, i] * scale[i], "-", label="fit (radau5, DAE)")
        ax.plot(np.asarray(dense), start_curve[:, i] * scale[i], "--", label="start")
        ax.set_xscale("log")
        ax.set_xlabel("t")
        ax.set_title(names[i])
    axes[0].legend(fontsize=8)
    ax = axes[3]
    ax.semilogy(result.losses)
    ax.set_xlabel("step")
    ax.set_title("training loss (scaled misfit)")
    ax.text(
        0.02,
        0.02,
        f"largest rate error {errors.max():.1e} (relative)\n"
        f"max |y1 + y2 + y3 - 1| on the fit: {conservation:.1e}",
        transform=ax.transAxes,
        fontsize=8,
        va="bottom",
    )
    fig.suptitle("Robertson's kinetics as a mass-matrix DAE: fitting three rates (NeuralODEMM)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
