"""Two-stage collocation, as in the DiffEqFlux collocation tutorial.

300 noisy points (noise 0.1 * randn) of the cubic spiral on [0, 1.5]: smooth them once with
`nde.collocate`, fit the network to the estimated derivatives (no ODE solve: thousands of steps
per second), then refine on the full trajectory.

    python examples/collocation.py --out docs/collocation.png   # bandwidths chosen from the data
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optax  # noqa: E402

import neuraldiffeq as nde  # noqa: E402
from neuraldiffeq.io.plotting import save_figure  # noqa: E402


def cube(y):
    return y**3


def _bandwidth(text: str) -> float | str:
    return text if text == "rule" else float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--colloc-steps", type=int, default=5000)
    parser.add_argument("--traj-steps", type=int, default=500)
    # Default: chosen from the data (nde.collocate). DiffEqFlux's rule (--bandwidth rule) is
    # asymptotic: for 300 points it is 0.166 of the span, which flattens this fast spiral's
    # derivative (RMS error 1.3 against 0.47 at 0.06). A number is a fraction of the span.
    parser.add_argument("--bandwidth", type=_bandwidth, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="collocation.png")
    args = parser.parse_args()

    clean = nde.datasets.spiral(n_points=300, t1=1.5)
    data = nde.datasets.spiral(n_points=300, t1=1.5, noise=0.1, key=jax.random.key(args.seed))
    u_hat, du_hat, info = nde.collocate(data.ts, data.ys, "epanechnikov", args.bandwidth, info=True)
    print(
        f"bandwidths ({info.method}): states {info.bandwidth.round(3)}, derivatives "
        f"{info.derivative_bandwidth.round(3)} of the span; estimated derivative error "
        f"{100 * info.relative_error:.1f}% of their size"
    )

    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(args.seed + 1))
    model = nde.NeuralODE(nde.autonomous(mlp, input_fn=cube))
    t0 = time.perf_counter()
    colloc = nde.fit(
        model,
        data,
        nde.Collocation(kernel="epanechnikov", bandwidth=args.bandwidth),
        optimizer=optax.adam(0.05),
        steps=args.colloc_steps,
        steps_per_call=500,
        progress=False,
    )
    t_colloc = time.perf_counter() - t0
    full = nde.fit(
        colloc.model,
        data,
        nde.Trajectory(),
        optimizer=optax.adam(0.01),
        steps=args.traj_steps,
        progress=False,
    )
    t_full = time.perf_counter() - t0 - t_colloc

    def misfit(m):  # against the noise-free truth
        return float(jnp.mean((m(clean.ts, clean.ys[0]) - clean.ys) ** 2))

    print(
        f"collocation: {args.colloc_steps} steps in {t_colloc:.1f} s, "
        f"MSE to the clean trajectory {misfit(colloc.model):.4f}"
    )
    print(
        f"+ trajectory: {args.traj_steps} steps in {t_full:.1f} s, "
        f"MSE to the clean trajectory {misfit(full.model):.4f}"
    )

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for d, c in enumerate(["C0", "C1"]):
        ax = axes[0]
        ax.plot(
            data.ts, data.ys[:, d], ".", color=c, ms=3, alpha=0.35, label=f"noisy data u{d + 1}"
        )
        ax.plot(data.ts, u_hat[:, d], "--", color=c, lw=1.2, label=f"collocation u_hat{d + 1}")
        ax.plot(
            clean.ts,
            colloc.model(clean.ts, clean.ys[0])[:, d],
            ":",
            color=c,
            lw=1.5,
            label=f"after collocation u{d + 1}",
        )
        ax.plot(
            clean.ts,
            full.model(clean.ts, clean.ys[0])[:, d],
            "-",
            color=c,
            lw=2,
            label=f"after full fit u{d + 1}",
        )
        axes[1].plot(data.ts, du_hat[:, d], "--", color=c, label=f"du_hat{d + 1}")
        axes[1].plot(
            clean.ts,
            jax.vmap(lambda u: nde.datasets.synthetic.spiral_field(0.0, u, None))(clean.ys)[:, d],
            "-",
            color=c,
            alpha=0.6,
            label=f"true du{d + 1}/dt",
        )
    axes[0].set_title("collocation then trajectory fit (300 noisy points)")
    axes[1].set_title("estimated vs true derivatives (epanechnikov)")
    for ax in axes:
        ax.set_xlabel("t")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
