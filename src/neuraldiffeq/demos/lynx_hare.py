"""Fit the Hudson's Bay lynx-hare series (1900-1920): a neural ODE and a universal ODE.

Two models, both trained with the `"auto"` preset (multiple shooting -> trajectory -> L-BFGS) on
normalised data:

- `neural-ode/`: du/dt = MLP(u) on standardised populations;
- `ude/`: Lotka-Volterra with a network replacing the interaction terms,
  d lynx/dt = -gamma lynx + NN(u)_0, d hare/dt = alpha hare + NN(u)_1 (alpha, gamma > 0 learned),
  on populations scaled but not shifted (zero stays zero, as the growth terms need).

Each folder gets `fit.png`, `metrics.json` and `model.eqx`; `metrics.json` at the top compares.
"""

from __future__ import annotations

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp

import neuraldiffeq as nde

from ..fitting.series import fit_series
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs


class LotkaVolterraUDE(eqx.Module):
    """Lotka-Volterra growth/decay terms plus a network for the interactions; u = (lynx, hare).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.lynx_hare import LotkaVolterraUDE
        >>> LotkaVolterraUDE(16, key=jax.random.key(0))(0.0, jnp.ones(2), None).shape
        (2,)
    """

    log_rates: jax.Array  # log(gamma), log(alpha): positive rates by construction
    net: eqx.nn.MLP

    def __init__(self, hidden: int, *, key: jax.Array):
        self.log_rates = jnp.log(jnp.array([0.5, 0.5]))
        self.net = eqx.nn.MLP(2, 2, hidden, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, u, args=None):
        gamma, alpha = jnp.exp(self.log_rates)
        return jnp.stack([-gamma * u[0], alpha * u[1]]) + self.net(u)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, default=300, help="Adam steps of each solving stage (default 300)"
    )
    parser.add_argument("--hidden", type=int, default=32, help="hidden width of the networks")
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hold out the last N years for an extrapolation check",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/lynx-hare", help="output folder")


def build_models(hidden: int, seed: int) -> dict[str, tuple[nde.NeuralODE, bool]]:
    """name -> (model, centre the data?)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(2, 2, hidden, 2, activation=jnp.tanh, key=k1)
    return {
        "neural-ode": (nde.NeuralODE(nde.autonomous(mlp), rtol=1e-4, atol=1e-6), True),
        "ude": (nde.NeuralODE(LotkaVolterraUDE(hidden, key=k2), rtol=1e-4, atol=1e-6), False),
    }


def run(args: argparse.Namespace) -> dict:
    if args.steps < 1 or args.hidden < 1 or args.holdout < 0:
        raise ValueError("--steps and --hidden must be positive and --holdout non-negative.")
    out = prepare_out(args.out)
    data = nde.datasets.lynx_hare()
    if args.holdout > data.ts.shape[0] - 5:
        raise ValueError(f"--holdout {args.holdout} leaves fewer than 5 years to fit.")
    titles = {"neural-ode": "neural ODE", "ude": "universal ODE (Lotka-Volterra + NN)"}
    summary = {"demo": "lynx-hare", "models": {}}
    for name, (model, center) in build_models(args.hidden, args.seed).items():
        fitted = fit_series(
            data,
            model,
            nde.PRESETS["auto"](steps=args.steps),
            os.path.join(out, name),
            labels=["lynx", "hare"],
            title=f"lynx-hare: {titles[name]}",
            holdout=args.holdout,
            center=center,
            progress=args.progress,
        )
        metrics = fitted.metrics
        summary["models"][name] = {
            k: metrics[k] for k in ("train_mse", "holdout_mse", "fit_wall_seconds", "best_loss")
        }
        if name == "ude":
            gamma, alpha = jnp.exp(fitted.model.field.log_rates)
            summary["models"][name]["rates_normalised_time"] = {
                "gamma": float(gamma),
                "alpha": float(alpha),
            }
        print(
            f"{name}: train MSE {metrics['train_mse']:.4g} (thousands of pelts)^2, "
            f"fit {metrics['fit_wall_seconds']:.1f} s"
        )
        if fitted.interrupted:
            write_outputs(out, metrics=summary)
            stop_if_interrupted(fitted.result, fitted.paths)
    write_outputs(out, metrics=summary)
    print(f"wrote {out}/neural-ode/ and {out}/ude/ (fit.png, metrics.json, model.eqx)")
    return summary
