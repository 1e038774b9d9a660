"""DiffEqFlux's neural SDE tutorial in neuraldiffeq: fit drift and diffusion networks to the
mean and variance of 10,000 paths of a noisy spiral (moment matching).

The same as `neuraldiffeq demo sde`, written out as a script to read and modify.

    python examples/neural_sde.py --steps 100 --out out/neural_sde
"""

from __future__ import annotations

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuraldiffeq as nde
from neuraldiffeq.demos.sde import plot_bands

A = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
U0 = jnp.array([2.0, 0.0])


class Linear(eqx.Module):
    """Diagonal diffusion from a linear layer 2 -> 2."""

    layer: eqx.nn.Linear

    def __call__(self, t, u, args):
        return self.layer(u)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="out/neural_sde")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ts = jnp.linspace(0.0, 1.0, 30)

    # 1. data: mean and variance over 10,000 paths of the true SDE (Milstein, dt 1e-3)
    truth = nde.NeuralSDE(
        lambda t, u, a: (u**3) @ A, lambda t, u, a: 0.2 * u, solver="milstein", dt0=1e-3
    )
    paths = truth.sample(ts, U0, jax.random.key(1), 10_000)
    data = {"ts": ts, "mean": paths.mean(0), "var": paths.var(0)}

    # 2. model: drift MLP 2 -> 50 -> 2 on u**3, linear diagonal diffusion (small at first)
    k1, k2 = jax.random.split(jax.random.key(0))
    drift = nde.autonomous(
        eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=k1), input_fn=lambda u: u**3
    )
    diffusion = Linear(eqx.nn.Linear(2, 2, key=k2))
    diffusion = eqx.tree_at(lambda d: d.layer.weight, diffusion, diffusion.layer.weight * 0.1)
    model = nde.NeuralSDE(drift, diffusion, noise="diagonal", solver="euler", dt0=0.01)

    # 3. fit: moment matching with a fresh key each step, 10 then 100 paths per step
    result = nde.fit(
        model,
        data,
        [
            nde.Stage(nde.MomentMatching(n_paths=10), optax.adam(0.025), args.steps),
            nde.Stage(nde.MomentMatching(n_paths=100), optax.adam(0.025), args.steps),
        ],
    )

    # 4. compare the fitted model's moments with the data's
    samples = result.model.sample(ts, U0, jax.random.key(2), 1000)
    plot_bands(
        os.path.join(args.out, "fit.png"),
        ts,
        data["mean"],
        data["var"],
        samples.mean(0),
        samples.var(0),
        result.losses,
    )
    print(f"final loss {result.losses[-1]:.4f}; wrote {args.out}/fit.png")


if __name__ == "__main__":
    main()
