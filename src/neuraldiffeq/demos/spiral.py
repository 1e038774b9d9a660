"""Fit a neural ODE to the DiffEqFlux spiral (Adam, then L-BFGS), as in the tutorial."""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuraldiffeq as nde

from ..compilation.cacheable import cacheable_jit
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plot_fit

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
    # compiled like fit's step, so that a second run reads them back instead of tracing them
    params, static = eqx.partition(model, eqx.is_inexact_array)
    prepared = nde.Trajectory().prepare(model, data)

    def trajectory_loss(params, prepared):
        return nde.Trajectory().loss(eqx.combine(params, static), prepared, None)

    def predict(params, ts, y0):
        return eqx.combine(params, static)(ts, y0)

    final = float(cacheable_jit(trajectory_loss, export=True)(params, prepared))
    dense = cacheable_jit(predict, export=True)(params, dense_ts, data.ys[0])
    metrics = {"demo": "spiral", "trajectory_loss": final, **result.metrics()}

    def draw(path):
        plot_fit(
            path,
            data.ts,
            data.ys,
            dense_ts,
            dense,
            losses=result.losses,
            stages=result.stages,
            labels=["u1", "u2"],
            title="neural ODE fit to the spiral",
        )

    paths = write_outputs(out, model, metrics, [("fit.png", draw)])
    print(f"final trajectory loss (sum of squares over {len(data.ts)} points): {final:.5f}")
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics
