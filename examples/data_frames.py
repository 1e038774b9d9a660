"""A long table of several patients in, predictions per patient out (docs/tutorials/data-frames.md).

Each patient's two measurements follow the same damped oscillation from their own start, seen at
their own irregular times with some values missing. One neural ODE is fitted to all of them from
a pandas frame, and its predictions come back as a frame, one row per patient and time, drawn
one panel per patient (docs/data_frames.png).

    python examples/data_frames.py [--steps 400] [--out docs/data_frames.png]
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import neuraldiffeq as nde

GAMMA = 0.1  # damping: x' = v, v' = -(1 + GAMMA^2) x - 2 GAMMA v


def patients(n=4, visits=20, seed=0) -> pd.DataFrame:
    """A long table: patient, day, x, v; irregular days per patient, 10% of v missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        a, b = rng.uniform(-1.5, 1.5, size=2)
        # day 0 (admission), then visits at irregular quarter days up to day 12
        days = np.concatenate([[0.0], np.sort(rng.choice(np.arange(1, 49), visits - 1, False))])
        days = days * 0.25
        decay = np.exp(-GAMMA * days)
        x = decay * (a * np.cos(days) + b * np.sin(days))
        v = decay * ((b - GAMMA * a) * np.cos(days) - (a + GAMMA * b) * np.sin(days))
        rows.append(pd.DataFrame({"patient": f"P{p + 1}", "day": days, "x": x, "v": v}))
    df = pd.concat(rows, ignore_index=True)
    later = df["day"] > 0
    df.loc[later & (rng.random(len(df)) < 0.1), "v"] = np.nan  # some values not recorded
    return df.sample(frac=1.0, random_state=0)  # rows in any order


def main(steps: int, out: str) -> None:
    df = patients()
    data = nde.TimeSeries.from_frame(df, time="day", id="patient")
    mlp = eqx.nn.MLP(2, 2, 32, 2, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp))
    result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(1e-2), steps=steps)
    days = np.linspace(0.0, 12.0, 121)
    preds = jax.vmap(lambda y0: result.model(days, y0))(data.ys[:, 0])
    pred = nde.TimeSeries(days, preds, ids=data.ids, columns=data.columns)
    frame = pred.to_frame(time="day", id="patient", library="pandas")
    print(frame.head())
    fig, axes = plt.subplots(1, len(data.ids), figsize=(3.2 * len(data.ids), 3), sharey=True)
    for ax, (patient, seen) in zip(axes, df.groupby("patient"), strict=True):
        fitted = frame[frame["patient"] == patient]
        for col, colour in (("x", "C0"), ("v", "C1")):
            ax.plot(seen["day"], seen[col], "o", color=colour, ms=4, label=f"{col} observed")
            ax.plot(fitted["day"], fitted[col], "-", color=colour, label=f"{col} fitted")
        ax.set_title(patient)
        ax.set_xlabel("day")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"one neural ODE fitted to {len(data.ids)} patients (long data frame in and out)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"final loss {float(result.losses[-1]):.3g}; wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="docs/data_frames.png")
    args = parser.parse_args()
    main(args.steps, args.out)
