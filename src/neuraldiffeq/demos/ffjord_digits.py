"""FFJORD image generation on scikit-learn's 8x8 digits: a convolutional flow vs an MLP flow and a
full-covariance Gaussian, in bits/dim on held-out images (exact trace); samples next to real digits.

The data pipeline (as for images in the FFJORD and RealNVP papers): each pixel v in {0..16} is
dequantised, x = (v + u) / 17 with u ~ U(0, 1), then mapped by the logit transform
y = logit(α + (1 - 2α) x) (α = 0.05) and standardised per pixel with the training mean and
standard deviation. Every step of that map is invertible with a known log-determinant, added back
so the likelihood is that of x in [0, 1]^64; bits/dim are of the discrete pixels,

    bits/dim = (-log p(x) + 64 log 17) / (64 log 2),   (uniform pixels: log2 17 = 4.09).

Both flows use, as base distribution, the full-covariance Gaussian fitted to the training set, and
their field's last layer starts at zero (so the untrained flow is exactly the Gaussian baseline, and
the flows learn what the Gaussian misses); they are trained by maximum likelihood (Hutchinson's
estimator, fresh dequantisation noise from 10 stacked copies of the training set; RNODE's
regularisers only with `--rnode`, since at 0.01 they held the flows at the Gaussian) and evaluated
with the exact trace.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..compilation.options import compiler_options
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs
from ..io.plotting import plt, save_figure
from ..models.cnf import mean_nll

#: the logit transform's margin (RealNVP's value for natural images)
ALPHA = 0.05
LEVELS = 17  # pixel values 0..16
SIDE = 8


class GaussianBase(eqx.Module):
    """A full-covariance Gaussian N(mean, L Lᵀ) as a flow's base distribution (fixed, not trained).

    Example:
        >>> import numpy as np, jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.ffjord_digits import GaussianBase
        >>> base = GaussianBase.fit(np.random.default_rng(0).normal(size=(500, 2)))
        >>> base.sample(jax.random.key(0), (3, 2)).shape
        (3, 2)
    """

    mean: jax.Array
    chol: jax.Array

    @classmethod
    def fit(cls, x: np.ndarray) -> GaussianBase:
        x = np.asarray(x, np.float64)
        chol = np.linalg.cholesky(np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1]))
        return cls(jnp.asarray(x.mean(0), jnp.float32), jnp.asarray(chol, jnp.float32))

    def log_prob(self, z: jax.Array) -> jax.Array:
        mean, chol = jax.lax.stop_gradient((self.mean, self.chol))  # fixed: not trained
        u = jax.scipy.linalg.solve_triangular(chol, (z - mean).T, lower=True).T
        logdet = jnp.sum(jnp.log(jnp.diag(chol)))
        return -0.5 * jnp.sum(u**2, -1) - logdet - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=None) -> jax.Array:
        eps = jax.random.normal(key, shape, dtype or jnp.float32)
        return self.mean + eps @ self.chol.T


class Preprocess(eqx.Module):
    """x in [0, 1]^D -> standardised logits y, and the log-determinant log|dy/dx| per row."""

    mean: np.ndarray
    std: np.ndarray

    def logit(self, x):
        s = ALPHA + (1 - 2 * ALPHA) * x
        return np.log(s) - np.log1p(-s)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = ALPHA + (1 - 2 * ALPHA) * x
        y = (self.logit(x) - self.mean) / self.std
        logdet = np.sum(np.log(1 - 2 * ALPHA) - np.log(s) - np.log1p(-s) - np.log(self.std), 1)
        return y, logdet

    def invert(self, y: np.ndarray) -> np.ndarray:
        s = 1 / (1 + np.exp(-(np.asarray(y) * self.std + self.mean)))
        return np.clip((s - ALPHA) / (1 - 2 * ALPHA), 0.0, 1.0)


def load(seed: int = 0, copies: int = 10):
    """(train y (copies * 1500, 64), test y (297, 64), test logdet, preprocess, test pixels)."""
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float64)
    rng = np.random.default_rng(seed)
    pixels = pixels[rng.permutation(len(pixels))]
    train_v, test_v = pixels[:1500], pixels[1500:]
    dequant = lambda v: (v + rng.uniform(size=v.shape)) / LEVELS  # noqa: E731
    train_x = np.concatenate([dequant(train_v) for _ in range(copies)])
    test_x = dequant(test_v)
    logits = Preprocess(np.zeros(64), np.ones(64)).logit(train_x)
    pre = Preprocess(logits.mean(0), logits.std(0))
    train_y, _ = pre(train_x)
    test_y, test_logdet = pre(test_x)
    return train_y.astype(np.float32), test_y.astype(np.float32), test_logdet, pre, test_v


def bits_per_dim(nll_y: float, mean_logdet: float, dim: int = 64) -> float:
    """bits/dim of the discrete pixels from the NLL (nats) of the standardised logits y."""
    nll_x = nll_y - mean_logdet  # -log p(x) = -log p(y) - log|dy/dx|
    return (nll_x + dim * math.log(LEVELS)) / (dim * math.log(2))


def build_flow(kind: str, base, args, seed: int) -> nde.FFJORD:
    key = jax.random.key(seed)
    if kind == "conv":
        field = nde.ConcatSquashConvNet(
            (1, SIDE, SIDE), (args.channels,) * 2, 3, jax.nn.softplus, key=key
        )
    else:
        field = nde.ConcatSquashMLP(64, (args.hidden,) * 2, jax.nn.softplus, key=key)
    # The last layer starts at zero (as Glow's): the flow starts as the identity, i.e. exactly
    # the Gaussian base, and training moves it from there.
    last = field.layers[-1]
    inner = last.conv if kind == "conv" else last.linear
    field = eqx.tree_at(
        lambda f: (f.layers[-1].shift.weight, _inner(f, kind).weight, _inner(f, kind).bias),
        field,
        (
            jnp.zeros_like(last.shift.weight),
            jnp.zeros_like(inner.weight),
            jnp.zeros_like(inner.bias),
        ),
    )
    return nde.FFJORD(
        field,
        t1=1.0,
        train_t1=True,
        trace="hutchinson",
        solver="dopri5",
        rtol=args.rtol,
        atol=args.rtol,
        base=base,
        dim=64,
    )


def _inner(field, kind):
    return field.layers[-1].conv if kind == "conv" else field.layers[-1].linear


def time_step(flow, x, options, repeats: int = 5) -> float:
    """Median seconds of one loss + gradient on `x`, compiled with `options` (None: defaults)."""
    strategy = nde.MaximumLikelihood(kinetic=0.01, jacobian=0.01)

    @eqx.filter_jit(compiler_options=options) if options else eqx.filter_jit
    def step(flow, x, key):
        return eqx.filter_value_and_grad(lambda f: strategy.loss(f, x, key))(flow)

    jax.block_until_ready(step(flow, x, jax.random.key(0)))  # compile
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(flow, x, jax.random.key(i)))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def image_grid(ax, images: np.ndarray, title: str, n: int = 8) -> None:
    grid = np.zeros((n * (SIDE + 1) - 1, n * (SIDE + 1) - 1))  # white separators
    for i, img in enumerate(images[: n * n]):
        r, c = divmod(i, n)
        grid[r * (SIDE + 1) : r * (SIDE + 1) + SIDE, c * (SIDE + 1) : c * (SIDE + 1) + SIDE] = (
            img.reshape(SIDE, SIDE)
        )
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_learning_curve(metrics: dict, path: str) -> None:
    """Each flow's training loss minus the Gaussian's, in bits/dim, per window of 50 steps.

    Both are NLLs of the same standardised logits, so their difference is that of the pixels
    (the preprocessing's log-determinant cancels); below zero, the flow beats its Gaussian base on
    the training rows. The held-out difference (exact trace) is marked at the last step.

    Example:
        >>> import os, tempfile
        >>> from neuraldiffeq.demos.ffjord_digits import plot_learning_curve
        >>> m = {"train_nll_gaussian": 60.0, "train_loss_per_50_steps": {"mlp": [60.0, 59.0]},
        ...      "steps": 100, "bits_per_dim": {"gaussian_full_cov": 2.44, "ffjord_mlp": 2.4}}
        >>> plot_learning_curve(m, os.path.join(tempfile.mkdtemp(), "curve.png"))
    """
    fig, ax = plt.subplots(figsize=(6, 3.6))
    per_dim = SIDE * SIDE * math.log(2)
    bpd = metrics["bits_per_dim"]
    for kind, curve in metrics["train_loss_per_50_steps"].items():
        steps = 50 * np.arange(len(curve)) + min(50, metrics["steps"]) / 2
        delta = (np.asarray(curve) - metrics["train_nll_gaussian"]) / per_dim
        (line,) = ax.plot(steps, delta, label=f"{kind} field, training (Hutchinson)")
        if f"ffjord_{kind}" in bpd:
            held = bpd[f"ffjord_{kind}"] - bpd["gaussian_full_cov"]
            ax.plot(
                [metrics["steps"]],
                [held],
                "o",
                color=line.get_color(),
                label=f"{kind} field, held-out (exact): {held:+.3f}",
            )
    ax.axhline(0.0, color="k", lw=0.8, ls="--", label="full-covariance Gaussian")
    ax.set_xlabel("training step")
    ax.set_ylabel("bits/dim minus the Gaussian's")
    ax.set_title("FFJORD on the 8x8 digits: learning curves (mean of 50 steps)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=200, help="Adam steps per flow (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--channels", type=int, default=16, help="conv field channels")
    parser.add_argument("--hidden", type=int, default=128, help="MLP field width")
    parser.add_argument("--rtol", type=float, default=1e-3, help="training rtol = atol")
    parser.add_argument(
        "--rnode", type=float, default=0.0, help="RNODE regulariser weights (kinetic = jacobian)"
    )
    parser.add_argument("--eval-rtol", type=float, default=1e-4, help="evaluation rtol = atol")
    parser.add_argument(
        "--flows", nargs="+", default=["conv", "mlp"], choices=["conv", "mlp"], help="flows"
    )
    parser.add_argument(
        "--time-options",
        action="store_true",
        help="also time one training step with and without nde.compiler_options()",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/ffjord_digits", help="output folder")


def run(args: argparse.Namespace) -> dict:
    for name in ("steps", "batch", "channels", "hidden"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be a positive integer.")
    if not (args.lr > 0 and args.rtol > 0 and args.eval_rtol > 0):
        raise ValueError("--lr, --rtol and --eval-rtol must be positive.")
    if not args.rnode >= 0:
        raise ValueError("--rnode must be >= 0.")
    out = prepare_out(args.out)
    train, test, test_logdet, pre, test_v = load(args.seed)
    mean_logdet = float(np.mean(test_logdet))
    base = GaussianBase.fit(train)
    gauss_nll = -float(np.mean(base.log_prob(jnp.asarray(test))))
    metrics: dict = {
        "demo": "ffjord-digits",
        "n_train_images": 1500,
        "n_test_images": len(test),
        "bits_per_dim": {"gaussian_full_cov": bits_per_dim(gauss_nll, mean_logdet)},
        "bits_per_dim_uniform": math.log2(LEVELS),
        "steps": args.steps,
        "seconds_per_step": {},
        "train_seconds": {},
        "eval_seconds": {},
        "t1": {},
        # the learning curve: mean training loss (nats per image of the standardised logits y,
        # Hutchinson's estimate) over windows of 50 steps, next to the Gaussian's on the same rows
        "train_nll_gaussian": -float(np.mean(base.log_prob(jnp.asarray(train)))),
        "train_loss_per_50_steps": {},
    }
    print(f"full-covariance Gaussian: {metrics['bits_per_dim']['gaussian_full_cov']:.3f} bits/dim")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, max(1, args.steps // 10), args.steps, args.lr / 20
    )
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    samples, results, models = {}, {}, {}
    per_call = math.gcd(args.steps, 25)
    for kind in args.flows:
        flow = build_flow(kind, base, args, args.seed)
        if args.time_options:
            x = jnp.asarray(train[: args.batch])
            options = compiler_options()
            metrics.setdefault("step_seconds_compiler_options", {})[kind] = {
                "default": time_step(flow, x, None),
                "nde.compiler_options()": time_step(flow, x, options) if options else None,
            }
            print(f"{kind}: one step, {metrics['step_seconds_compiler_options'][kind]}")
        result = nde.fit(
            flow,
            train,
            # MaximumLikelihood compiles its step with nde.compiler_options() on the CPU
            nde.MaximumLikelihood(batch_size=args.batch, kinetic=args.rnode, jacobian=args.rnode),
            optimizer=optimizer,
            steps=args.steps,
            key=jax.random.key(args.seed),
            progress=args.progress,
            steps_per_call=per_call,
        )
        times = np.asarray(result.times)
        if args.steps > per_call:  # after the first fused call, which includes the compilation
            step_s = float((times[-1] - times[per_call - 1]) / (args.steps - per_call))
        else:
            step_s = float(times[-1] / args.steps)
        flow = result.model
        exact = flow.with_options(
            trace="exact", rtol=args.eval_rtol, atol=args.eval_rtol, max_steps=10_000
        )
        t0 = time.perf_counter()
        nll = mean_nll(exact, test, batch_size=len(test))
        metrics["eval_seconds"][kind] = time.perf_counter() - t0
        metrics["bits_per_dim"][f"ffjord_{kind}"] = bits_per_dim(nll, mean_logdet)
        metrics["seconds_per_step"][kind] = step_s
        metrics["train_seconds"][kind] = float(times[-1])
        metrics["t1"][kind] = float(flow.t1)
        losses = np.asarray(result.losses, np.float64)
        metrics["train_loss_per_50_steps"][kind] = [
            float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)
        ]
        metrics.setdefault("skipped", {})[kind] = result.skipped
        samples[kind] = pre.invert(np.asarray(flow.sample(jax.random.key(100 + args.seed), 64)))
        results[kind], models[kind] = result, flow
        print(
            f"FFJORD ({kind} field): {metrics['bits_per_dim'][f'ffjord_{kind}']:.3f} bits/dim "
            f"(exact trace), {step_s * 1e3:.0f} ms/step"
        )
    gauss_samples = pre.invert(np.asarray(base.sample(jax.random.key(200 + args.seed), (64, 64))))
    real = test_v[:64] / (LEVELS - 1)
    bpd = metrics["bits_per_dim"]

    def draw(path: str) -> None:
        panels = [(real, "held-out digits")]
        panels += [
            (samples[k], f"FFJORD, {k} field: {bpd[f'ffjord_{k}']:.2f} bits/dim")
            for k in args.flows
        ]
        panels.append((gauss_samples, f"full-cov. Gaussian: {bpd['gaussian_full_cov']:.2f}"))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
        for ax, (images, title) in zip(axes, panels, strict=True):
            image_grid(ax, images, title)
        fig.suptitle(f"8x8 digits: samples after {args.steps} steps (bits/dim: held-out, exact)")
        fig.tight_layout()
        save_figure(fig, path)

    first = args.flows[0]
    figures = [("samples.png", draw), ("learning_curve.png", partial(plot_learning_curve, metrics))]
    paths = write_outputs(out, models[first], metrics, figures)
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(results[first], paths)
    return metrics
