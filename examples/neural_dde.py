"""A neural DDE against a neural ODE of the same size on the delayed logistic equation.

Data from y' = 1.8·y(t)·(1 − y(t − 1)) (history 0.5), solved with `nde.solve_dde`. The neural
DDE's network sees [y(t), y(t − 1)]; the neural ODE's sees y(t) alone and, being a 1-D autonomous
ODE, cannot oscillate. The same as `neuraldiffeq demo dde`, written out as a script.

    python examples/neural_dde.py --steps 600 --out out/neural_dde
"""

from __future__ import annotations

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import neuraldiffeq as nde
from neuraldiffeq.demos.dde import plot_comparison


def fit_twice(model, data, steps):
    """Adam on the first third of the series, then on all of it."""
    start = nde.TimeSeries(data.ts[:20], data.ys[:20])
    first = nde.fit(model, start, nde.Trajectory(), optimizer=optax.adam(0.01), steps=steps // 3)
    return nde.fit(first.model, data, nde.Trajectory(), optimizer=optax.adam(0.005), steps=steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="out/neural_dde")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    ts = jnp.linspace(0.0, 15.0, 61)
    sol = nde.solve_dde(
        lambda t, y, y_lagged, a: 1.8 * y * (1 - y_lagged[0]),
        jnp.array([0.5]),
        lags=[1.0],
        t0=0.0,
        t1=15.0,
        ts=ts,
        rtol=1e-8,
        atol=1e-8,
    )
    data = nde.TimeSeries(ts, sol.ys)

    k1, k2 = jax.random.split(jax.random.key(0))
    dde = nde.NeuralDDE(
        eqx.nn.MLP(2, 1, 32, 1, activation=jnp.tanh, key=k1),
        lags=[1.0],
        rtol=1e-5,
        atol=1e-7,
        max_steps=512,
    )  # 129 parameters
    ode = nde.NeuralODE(
        nde.autonomous(eqx.nn.MLP(1, 1, 43, 1, activation=jnp.tanh, key=k2)),
        rtol=1e-5,
        atol=1e-7,
        sensitivity=nde.Direct(),
    )  # 130 parameters
    results = {}
    for name, model in (("neural DDE", dde), ("neural ODE", ode)):
        result = fit_twice(model, data, args.steps)
        loss = float(
            nde.Trajectory().loss(result.model, nde.Trajectory().prepare(result.model, data), None)
        )
        results[name] = {
            "model": result.model,
            "losses": result.losses,
            "final_loss": loss,
            "params": sum(
                x.size
                for x in jax.tree_util.tree_leaves(eqx.filter(result.model, eqx.is_inexact_array))
            ),
        }
        print(f"{name}: final loss {loss:.4f}")
    plot_comparison(os.path.join(args.out, "fit.png"), data, jnp.linspace(0, 15, 400), results)
    print(f"wrote {args.out}/fit.png")


if __name__ == "__main__":
    main()
