"""Multiple shooting, as in the DiffEqFlux tutorial: the spiral on [0, 5], where single shooting
gets stuck.

30 points, MLP 2 -> 16 -> 2 (tanh) on u**3, group_size 3, continuity 200, Adam(0.05), then a
trajectory polish (Adam 0.01). Single shooting from the same initialisation is run alongside.

    python examples/multiple_shooting.py --out docs/multiple_shooting.png
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
import numpy as np  # noqa: E402
import optax  # noqa: E402

import neuraldiffeq as nde  # noqa: E402
from neuraldiffeq.fitting.shooting import segment_ranges  # noqa: E402
from neuraldiffeq.io.plotting import save_figure  # noqa: E402


def cube(y):
    return y**3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="multiple-shooting Adam steps")
    parser.add_argument("--polish-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="multiple_shooting.png")
    args = parser.parse_args()

    data = nde.datasets.spiral(n_points=30, t1=5.0)
    mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.key(args.seed))
    model = nde.NeuralODE(nde.autonomous(mlp, input_fn=cube))
    shooting = nde.MultipleShooting(group_size=3, continuity=200.0)

    t0 = time.perf_counter()
    ms = nde.fit(
        model, data, shooting, optimizer=optax.adam(0.05), steps=args.steps, progress=False
    )
    polished = nde.fit(
        ms.model,
        data,
        nde.Trajectory(),
        optimizer=optax.adam(0.01),
        steps=args.polish_steps,
        progress=False,
    )
    t_ms = time.perf_counter() - t0
    single = nde.fit(
        model,
        data,
        nde.Trajectory(),
        optimizer=optax.adam(0.05),
        steps=args.steps + args.polish_steps,
        progress=False,
        max_failures=10_000,
    )

    traj = nde.Trajectory()
    prepared = traj.prepare(polished.model, data)
    loss_ms = float(traj.loss(polished.model, prepared, None))
    loss_ss = float(traj.loss(single.model, prepared, None))
    print(f"multiple shooting + polish: trajectory loss {loss_ms:.4f} ({t_ms:.1f} s)")
    print(f"single shooting, same steps: trajectory loss {loss_ss:.4f}")

    dense = jnp.linspace(0.0, 5.0, 400)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for d, c in enumerate(["C0", "C1"]):
        for ax in axes:
            ax.plot(data.ts, data.ys[:, d], "o", color=c, ms=4, alpha=0.7, label=f"data u{d + 1}")
        for a, b in segment_ranges(30, 3):  # the segments after the shooting stage
            seg_ts = jnp.linspace(data.ts[a], data.ts[b], 20)
            axes[0].plot(seg_ts, ms.model(seg_ts, data.ys[a])[:, d], "-", color=c, lw=1.5)
        axes[1].plot(
            dense,
            polished.model(dense, data.ys[0])[:, d],
            "-",
            color=c,
            lw=2,
            label=f"model u{d + 1}",
        )
        axes[2].plot(
            dense,
            single.model(dense, data.ys[0])[:, d],
            "-",
            color=c,
            lw=2,
            label=f"model u{d + 1}",
        )
    axes[0].set_title(f"segments after {args.steps} multiple-shooting steps")
    axes[1].set_title(f"multiple shooting + polish: loss {loss_ms:.3f}")
    axes[2].set_title(
        f"single shooting, {args.steps + args.polish_steps} steps: loss {loss_ss:.1f}"
    )
    for ax in axes:
        ax.set_xlabel("t")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return np.array([loss_ms, loss_ss])


if __name__ == "__main__":
    main()
