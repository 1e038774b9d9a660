"""torchcde's README example: tell clockwise from anticlockwise spirals with a neural CDE.

Data (as torchcde's `example.py`): 2-D spirals x = ±cos(φ + t)/(1 + t/2), y = sin(φ + t)/(1 + t/2)
on t ∈ [0, 4π] at 100 times, random phase φ, noise 0.01; the sign of x sets the direction of
rotation, the label. Here they are also irregularly sampled: 30% of the values (each coordinate
independently) are dropped at random, so every series has its own gaps. The model: a neural CDE
with hidden size 8 whose field is an MLP 8 → 128 → 8·channels, driven by the natural cubic spline
through each coordinate's observed points, with time as an extra channel; readout of z(T) to 2
logits; 150 Adam(3e-3) steps of cross-entropy (`nde.Classification`) on minibatches of 32 of
128 series, tested on 128 fresh ones. (The values are dropped at random, so observation counts
carry no information here; `--observed` adds them as channels anyway.)
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import neuraldiffeq as nde

from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plot_losses, plt, save_figure, stage_spans


def spiral_data(n: int = 128, n_times: int = 100, drop: float = 0.3, key: int = 0):
    """`n` noisy spirals, half clockwise (label 1), on [0, 4π] at `n_times` times, a fraction
    `drop` of the values missing (NaN) at random: `(ts (T,), ys (n, T, 2), labels (n,))`.

    Example:
        >>> from neuraldiffeq.demos.cde import spiral_data
        >>> ts, ys, labels = spiral_data(8, 20)
        >>> ys.shape, int(labels.sum())
        ((8, 20, 2), 4)
    """
    rng = np.random.default_rng(key)
    ts = np.linspace(0.0, 4 * np.pi, n_times)
    start = rng.uniform(0, 2 * np.pi, (n, 1))
    x = np.cos(start + ts) / (1 + 0.5 * ts)
    y = np.sin(start + ts) / (1 + 0.5 * ts)
    labels = np.zeros(n, np.int32)
    labels[: n // 2] = 1
    x[: n // 2] *= -1  # mirrored: rotates the other way
    ys = np.stack([x, y], axis=-1) + 0.01 * rng.normal(size=(n, n_times, 2))
    ys[rng.uniform(size=ys.shape) < drop] = np.nan
    order = rng.permutation(n)
    return ts, ys[order], labels[order]


def build_model(
    seed: int, hidden: int = 8, width: int = 128, observed: bool = False
) -> nde.NeuralCDE:
    return nde.NeuralCDE(
        2,
        hidden,
        2,
        width_size=width,
        depth=1,
        interpolation="cubic",
        observed_channels=observed,
        key=jax.random.key(seed),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=150, help="Adam steps (default 150)")
    parser.add_argument("--series", type=int, default=128, help="training (and test) series")
    parser.add_argument("--drop", type=float, default=0.3, help="fraction of values dropped")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--observed", action="store_true", help="add observation counts as channels"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/cde", help="output folder")


def run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    train = spiral_data(args.series, drop=args.drop, key=args.seed)
    test = spiral_data(args.series, drop=args.drop, key=args.seed + 1000)
    strategy = nde.Classification(batch_size=min(32, args.series))
    result = nde.fit(
        build_model(args.seed, observed=args.observed),
        ((train[0], train[1]), train[2]),
        strategy,
        optimizer=optax.adam(args.lr),
        steps=args.steps,
        key=jax.random.key(args.seed),
        progress=getattr(args, "progress", True),
    )
    model = result.model
    prepared = strategy.prepare(model, ((test[0], test[1]), test[2]))
    accuracy = nde.Classification.accuracy(model, prepared)
    train_accuracy = nde.Classification.accuracy(
        model, strategy.prepare(model, ((train[0], train[1]), train[2]))
    )
    probs = np.asarray(jax.nn.softmax(model(prepared[0]), axis=-1))[:, 1]
    metrics = {
        "demo": "cde",
        "test_accuracy": accuracy,
        "train_accuracy": train_accuracy,
        "series": args.series,
        "dropped": args.drop,
        **result.metrics(),
    }
    paths = write_outputs(
        out,
        model,
        metrics,
        [("spirals.png", lambda p: plot_spirals(p, test, probs, accuracy, result))],
    )
    print(f"test accuracy: {accuracy:.3f} (train {train_accuracy:.3f})")
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def plot_spirals(path, test, probs, accuracy, result) -> None:
    """Some test spirals (observed points only) by class, the loss, and P(clockwise) by class."""
    ts, ys, labels = test
    fig = plt.figure(figsize=(15, 4.5))
    grid = fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, 0])
    for label, color, name in ((0, "C0", "anticlockwise"), (1, "C3", "clockwise")):
        for i, k in enumerate(np.flatnonzero(labels == label)[:3]):
            seen = ~np.isnan(ys[k]).any(axis=-1)
            ax.plot(
                ys[k, seen, 0],
                ys[k, seen, 1],
                ".-",
                color=color,
                ms=3,
                lw=0.6,
                alpha=0.8,
                label=name if i == 0 else None,
            )
            ax.plot(ys[k, seen, 0][:1], ys[k, seen, 1][:1], "o", color=color, ms=6)
    ax.set_aspect("equal")
    ax.set_title("test spirals (observed points; o = start)")
    ax.legend(fontsize=8)
    plot_losses(fig, grid[0, 1], result.losses, stage_spans(len(result.losses), result.stages))
    ax = fig.add_subplot(grid[0, 2])
    bins = np.linspace(0, 1, 21)
    ax.hist(probs[labels == 0], bins, color="C0", alpha=0.7, label="anticlockwise")
    ax.hist(probs[labels == 1], bins, color="C3", alpha=0.7, label="clockwise")
    ax.set_xlabel("model's P(clockwise)")
    ax.set_ylabel("test series")
    ax.set_title(f"test accuracy {accuracy:.1%}")
    ax.legend(fontsize=8)
    fig.suptitle("neural CDE: spiral direction from irregularly sampled, partly missing points")
    fig.tight_layout()
    save_figure(fig, path)
