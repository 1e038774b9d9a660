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

import jax
import jax.numpy as jnp
import numpy as np

import neuraldiffeq as nde

from ..datasets.synthetic import robertson_reactions
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from .stiff import (
    START_FACTORS,
    TRUE_RATES,
    Robertson,
    adam_then_lbfgs,
    plot_fit,
    problem,
    rate_errors,
)

#: M = diag(1, 1, 0): two differential equations and the conservation law
MASS = (1.0, 1.0, 0.0)


class RobertsonDAE(Robertson):
    """`Robertson` in DAE form, f(t, y) for M = diag(1, 1, 0): the third rate equation replaced
    by the conservation law's residual y1 + y2 + y3 - 1.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.dae import RobertsonDAE
        >>> field = RobertsonDAE(jnp.log(jnp.array([0.04, 3e7, 1e4])))
        >>> [round(float(v), 4) for v in field(0.0, jnp.array([1.0, 0.0, 0.5]))]  # residual 0.5
        [-0.04, 0.04, 0.5]
    """

    def __call__(self, t, y, args=None):
        r1, r2, r3 = robertson_reactions(y, jnp.exp(self.log_rates))
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
    data, start, strategy, settings = problem(args.max_steps)
    model = nde.NeuralODEMM(RobertsonDAE(start), MASS, **settings)
    y0 = model.consistent(data.ys[0], data.ts[0])  # the observation is consistent; made exact

    stages = adam_then_lbfgs(strategy, 0.05, args.steps, args.lbfgs_steps)
    began = time.perf_counter()
    result = nde.fit(model, data, stages, progress=args.progress)
    seconds = time.perf_counter() - began
    fitted, errors = rate_errors(result.model, "radau5 (DAE form)")

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
    curves = {"fit (radau5, DAE)": fit_curve, "start": start_curve}
    names = ["y1", "y2 (x 1e4)", "y3 (algebraic: 1 - y1 - y2)"]
    note = (
        f"largest rate error {errors.max():.1e} (relative)\n"
        f"max |y1 + y2 + y3 - 1| on the fit: {conservation:.1e}"
    )
    title = "Robertson's kinetics as a mass-matrix DAE: fitting three rates (NeuralODEMM)"
    plot_fit(path, data, dense, curves, names, result, note, title)
