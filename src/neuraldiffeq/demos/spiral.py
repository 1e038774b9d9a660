"""Fit a neural ODE to the DiffEqFlux spiral (Adam, then L-BFGS), as in the tutorial."""

from __future__ import annotations

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuraldiffeq as nde

from ..plotting import plot_fit
from ._common import prepare_out, write_json

cube = nde.transforms.cube  # a named function: the saved model loads safely


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    parser.add_argument("--lbfgs-steps", type=int, default=100, help="L-BFGS steps after Adam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/spiral", help="output folder")


def build_model(seed: int) -> nde.NeuralODE:
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(seed))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=cube), "tsit5", rtol=1e-3, atol=1e-6)


def run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data = nde.datasets.spiral()
    stages = [nde.Stage(nde.Trajectory(), optax.adam(0.05), args.steps)]
    if args.lbfgs_steps > 0:
        stages.append(nde.Stage(nde.Trajectory(), optax.lbfgs(), args.lbfgs_steps))
    result = nde.fit(build_model(args.seed), data, stages, progress=args.progress)
    model = result.model
    dense_ts = jnp.linspace(data.ts[0], data.ts[-1], 200)
    plot_fit(
        os.path.join(out, "fit.png"),
        data.ts,
        data.ys,
        dense_ts,
        model(dense_ts, data.ys[0]),
        losses=result.losses,
        labels=["u1", "u2"],
        title="neural ODE fit to the spiral",
    )
    final = float(nde.Trajectory().loss(model, nde.Trajectory().prepare(data), None))
    metrics = {"demo": "spiral", "trajectory_loss": final, **result.metrics()}
    write_json(os.path.join(out, "metrics.json"), metrics)
    nde.save(os.path.join(out, "model.eqx"), model)
    print(f"final trajectory loss (sum of squares over {len(data.ts)} points): {final:.5f}")
    print(f"wrote {out}/fit.png, {out}/metrics.json, {out}/model.eqx")
    return metrics
