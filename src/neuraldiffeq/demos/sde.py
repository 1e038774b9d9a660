"""DiffEqFlux's neural SDE tutorial: fit the mean and variance of 10,000 paths of a noisy spiral.

True system: drift du = (u³)ᵀA with A = [[-0.1, 2], [-2, -0.1]] (the spiral), diagonal
multiplicative noise 0.2·u, u0 = [2, 0], t ∈ [0, 1], 30 points. The model: drift an MLP 2→50→2 on
u³, diffusion a linear layer 2→2 (diagonal noise), trained by moment matching (`nde.MomentMatching`)
first on 10 paths per step, then on 100.
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

from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plot_losses, plt, save_figure, stage_spans

TRUE_A = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
U0 = jnp.array([2.0, 0.0])


def true_drift(t, u, args):
    return (u**3) @ TRUE_A


def true_diffusion(t, u, args):
    return 0.2 * u


cube = nde.transforms.cube  # a named function: the saved model loads safely


class Linear(eqx.Module):
    """The diffusion network: a linear layer 2 → 2, used as diagonal noise."""

    layer: eqx.nn.Linear

    def __call__(self, t, u, args):
        return self.layer(u)


def build_model(seed: int, dt0: float = 0.01, solver: str = "euler") -> nde.NeuralSDE:
    k1, k2 = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=k1)
    diffusion = Linear(eqx.nn.Linear(2, 2, key=k2))
    # DiffEqFlux scales the initial diffusion down; small noise at the start keeps paths sane.
    diffusion = eqx.tree_at(lambda d: d.layer.weight, diffusion, diffusion.layer.weight * 0.1)
    return nde.NeuralSDE(nde.autonomous(mlp, input_fn=cube), diffusion, solver=solver, dt0=dt0)


def true_moments(n_paths: int, key, ts, dt0: float = 0.001) -> dict:
    """Mean and variance over `n_paths` paths of the true SDE (Milstein, fine steps)."""
    truth = nde.NeuralSDE(true_drift, true_diffusion, solver="milstein", dt0=dt0)
    paths = jax.jit(lambda k: truth.sample(ts, U0, k, n_paths))(key)
    return {"ts": ts, "mean": jnp.mean(paths, 0), "var": jnp.var(paths, 0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per stage (default 100)")
    parser.add_argument("--true-paths", type=int, default=10_000, help="paths for the data moments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/sde", help="output folder")


def run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    ts = jnp.linspace(0.0, 1.0, 30)
    t0 = time.perf_counter()
    data = true_moments(args.true_paths, jax.random.key(args.seed + 1), ts)
    data_seconds = time.perf_counter() - t0
    stages = [
        nde.Stage(nde.MomentMatching(n_paths=10), optax.adam(0.025), args.steps),
        nde.Stage(nde.MomentMatching(n_paths=100), optax.adam(0.025), args.steps),
    ]
    result = nde.fit(
        build_model(args.seed), data, stages, key=jax.random.key(args.seed), progress=args.progress
    )
    model = result.model
    samples = model.sample(ts, U0, jax.random.key(args.seed + 2), 1000)
    mean, var = jnp.mean(samples, 0), jnp.var(samples, 0)
    final = float(jnp.sum((mean - data["mean"]) ** 2) + jnp.sum((var - data["var"]) ** 2))
    metrics = {
        "demo": "sde",
        "moment_loss_1000_paths": final,
        "true_paths": args.true_paths,
        "data_seconds": data_seconds,
        **result.metrics(),
    }
    paths = write_outputs(
        out,
        model,
        metrics,
        [
            (
                "fit.png",
                lambda p: plot_bands(
                    p, ts, data["mean"], data["var"], mean, var, result.losses, result.stages
                ),
            )
        ],
    )
    print(f"moment-matching loss of the fitted model (1000 fresh paths): {final:.4f}")
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def plot_bands(path, ts, data_mean, data_var, model_mean, model_var, losses, stages=None) -> None:
    """Data mean ± std (shaded) against the model's mean ± std (lines), and the loss curve of
    each stage (`FitResult.stages`) on its own axes."""
    ts = np.asarray(ts)
    spans = stage_spans(len(losses), stages)
    fig = plt.figure(figsize=(15, max(4.2, 1.7 * len(spans) + 0.8)))
    grid = fig.add_gridspec(1, 3)
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    for d, ax in enumerate(axes):
        m, s = np.asarray(data_mean[:, d]), np.sqrt(np.asarray(data_var[:, d]))
        ax.fill_between(ts, m - s, m + s, color="C0", alpha=0.25, label="data mean ± std")
        ax.plot(ts, m, "o", color="C0", ms=3, label="data mean")
        mm, ms = np.asarray(model_mean[:, d]), np.sqrt(np.asarray(model_var[:, d]))
        ax.plot(ts, mm, "-", color="C3", lw=2, label="model mean")
        ax.plot(ts, mm - ms, "--", color="C3", lw=1.2, label="model mean ± std")
        ax.plot(ts, mm + ms, "--", color="C3", lw=1.2)
        ax.set_xlabel("t")
        ax.set_title(f"u{d + 1}")
        ax.legend(fontsize=8)
    plot_losses(fig, grid[0, 2], losses, spans)
    fig.suptitle("neural SDE fitted to the moments of 10,000 paths of the noisy spiral")
    fig.tight_layout()
    save_figure(fig, path)
