"""Train FFJORD on a 2-D toy density; plot data, learned density and samples (as in the paper)."""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plt, save_figure
from ..models.cnf import batched_log_prob, mean_nll

#: FFJORD's plotting window for the toy densities.
LOW, HIGH = -4.0, 4.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="8gaussians",
        choices=nde.datasets.TOY_2D,
        help="toy density (default 8gaussians)",
    )
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--batch", type=int, default=256, help="minibatch size (default 256)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument(
        "--trace",
        default="exact",
        choices=["exact", "hutchinson"],
        help="trace used for training (evaluation always uses the exact trace)",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="training tolerance, rtol = atol (evaluation uses 1e-5)",
    )
    parser.add_argument("--n-test", type=int, default=10_000, help="held-out samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/ffjord", help="output folder")


def build_flow(seed: int, trace: str, rtol: float) -> nde.FFJORD:
    """FFJORD's toy setting: ConcatSquash 64-64-64 tanh, t1 = 0.5 trainable, dopri5."""
    field = nde.ConcatSquashMLP(2, (64, 64, 64), jnp.tanh, key=jax.random.key(seed))
    return nde.FFJORD(
        field,
        t1=0.5,
        train_t1=True,
        trace=trace,
        solver="dopri5",
        rtol=rtol,
        atol=rtol,
        max_steps=2000,
    )


def optimizer_for(steps: int, lr: float) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(1, min(200, steps // 10)), steps, lr / 20
    )
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))


def plot_density(
    path: str, data, flow: nde.FFJORD, samples, title: str = "", resolution: int = 120
) -> None:
    """Three panels, like the FFJORD paper's figure: data, learned density exp(log p) on a grid
    (exact trace), and samples drawn through the flow.

    Example:
        >>> import jax, os, tempfile, neuraldiffeq as nde
        >>> from neuraldiffeq.demos.ffjord import plot_density
        >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)), trace="exact")
        >>> x = nde.datasets.toy_2d("moons", 200, jax.random.key(1))
        >>> plot_density(os.path.join(tempfile.mkdtemp(), "d.png"), x, flow, x, resolution=20)
    """
    side = np.linspace(LOW, HIGH, resolution)
    xx, yy = np.meshgrid(side, side)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    logp = batched_log_prob(flow.with_options(trace="exact"), grid, batch_size=1000)
    density = np.exp(logp).reshape(resolution, resolution)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    bins = [np.linspace(LOW, HIGH, 120)] * 2
    data, samples = np.asarray(data), np.asarray(samples)
    axes[0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="inferno")
    axes[0].set_title(f"data ({len(data)} samples)")
    axes[1].imshow(density, origin="lower", extent=(LOW, HIGH, LOW, HIGH), cmap="inferno")
    axes[1].set_title("learned density (exact trace)")
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="inferno")
    axes[2].set_title(f"samples ({len(samples)}, backwards solve)")
    for ax in axes:
        ax.set_xlim(LOW, HIGH)
        ax.set_ylim(LOW, HIGH)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    for name in ("steps", "batch", "n_test"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer.")
    if not args.lr > 0 or not args.rtol > 0:
        raise ValueError("--lr and --rtol must be positive.")
    out = prepare_out(args.out)
    train = nde.datasets.toy_2d(args.data, 100_000, jax.random.key(1000 + args.seed))
    test = nde.datasets.toy_2d(args.data, args.n_test, jax.random.key(2000 + args.seed))
    flow = build_flow(args.seed, args.trace, args.rtol)

    result = nde.fit(
        flow,
        train,
        nde.MaximumLikelihood(batch_size=args.batch),
        optimizer=optimizer_for(args.steps, args.lr),
        steps=args.steps,
        key=jax.random.key(args.seed),
        progress=args.progress,
        steps_per_call=min(50, args.steps),
    )
    flow = result.model  # the last iterate: MaximumLikelihood is stochastic
    exact = flow.with_options(trace="exact", rtol=1e-5, atol=1e-5, max_steps=10_000)
    t0 = time.perf_counter()
    nll = mean_nll(exact, test, batch_size=1000)
    eval_seconds = time.perf_counter() - t0
    samples = exact.sample(jax.random.key(3000 + args.seed), 20_000)
    nll_text = f"held-out NLL {nll:.3f} nats"
    metrics = {
        "demo": "ffjord",
        "data": args.data,
        "heldout_nll_exact_trace": nll,
        "n_test": args.n_test,
        "t1": float(flow.t1),
        "train_trace": args.trace,
        "eval_seconds": eval_seconds,
        **result.metrics(),
    }
    title = f"FFJORD on {args.data}: {nll_text}, {args.steps} steps"
    paths = write_outputs(
        out,
        flow,
        metrics,
        [("density.png", lambda p: plot_density(p, test, exact, samples, title=title))],
    )
    print(f"{args.data}: {nll_text} (exact trace, {args.n_test} held-out samples)")
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics
