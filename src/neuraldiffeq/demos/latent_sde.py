"""A latent SDE on torchsde's stochastic Lorenz data (Li et al. 2020, section 7.2).

Data: `--series` paths of the stochastic Lorenz system observed at 100 times on [0, 2],
normalised, with observation noise 0.01 (`nde.datasets.stochastic_lorenz`, generated as in
torchsde's `examples/latent_sde_lorenz.py`). Model: `nde.LatentSDE` with a 4-dimensional latent
state (GRU encoder, posterior and prior drift MLPs, per-component diffusion networks, linear
decoder), Euler–Maruyama with dt = 0.01, trained by `nde.ELBO` with the KL annealed over three
stages (weights 0.2, 0.6, then 1), as torchsde anneals it linearly.
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
from ..io.plotting import plt, save_figure

KL_WEIGHTS = (0.2, 0.6, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, default=150, help="Adam steps per KL stage (default 150, 3 stages)"
    )
    parser.add_argument("--series", type=int, default=128, help="Lorenz paths (default 128)")
    parser.add_argument("--batch-size", type=int, default=64, help="series per step (default 64)")
    parser.add_argument("--hidden", type=int, default=64, help="network width (default 64)")
    parser.add_argument("--context", type=int, default=32, help="context size (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/latent-sde", help="output folder")


def run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data = nde.datasets.stochastic_lorenz(args.series, key=jax.random.key(args.seed))
    model = nde.LatentSDE(
        4,
        3,
        context_size=args.context,
        hidden_size=args.hidden,
        obs_std=0.01,
        dt0=0.01,
        key=jax.random.key(args.seed + 1),
    )
    batch = min(args.batch_size, args.series)
    # Adam at 1e-2 decayed as torchsde's example does (x0.997 per step), over all the stages.
    stages = [
        nde.Stage(
            nde.ELBO(batch_size=batch, kl_weight=w),
            optax.adam(optax.exponential_decay(1e-2 * 0.997 ** (i * args.steps), 1, 0.997)),
            args.steps,
        )
        for i, w in enumerate(KL_WEIGHTS)
    ]
    t0 = time.perf_counter()
    result = nde.fit(model, data, stages, key=jax.random.key(args.seed + 2), progress=args.progress)
    seconds = time.perf_counter() - t0
    model = result.model
    ts, ys = jnp.asarray(data.ts), jnp.asarray(data.ys)
    terms = eqx.filter_jit(lambda m, k: m.elbo_terms(ts, ys, None, k))
    loglik, kl0, kl_path = (np.asarray(x) for x in terms(model, jax.random.key(args.seed + 3)))
    show = 10
    posterior = model.sample_posterior(ts, ys[:show], key=jax.random.key(args.seed + 4))[0]
    prior = model.sample_prior(ts, key=jax.random.key(args.seed + 5), n=show)
    prior_many = model.sample_prior(ts, key=jax.random.key(args.seed + 6), n=args.series)
    recon_rmse = float(jnp.sqrt(jnp.mean((posterior - ys[:show]) ** 2)))
    # how far the prior's marginals are from the data's: per time and coordinate, the gap in
    # mean and standard deviation over paths, averaged
    mean_gap = float(jnp.mean(jnp.abs(prior_many.mean(0) - ys.mean(0))))
    std_gap = float(jnp.mean(jnp.abs(prior_many.std(0) - ys.std(0))))
    metrics = {
        "demo": "latent-sde",
        "series": args.series,
        "elbo_per_series": float(np.mean(loglik - kl0 - kl_path)),
        "log_likelihood_per_series": float(np.mean(loglik)),
        "kl_per_series": float(np.mean(kl0 + kl_path)),
        "posterior_rmse_10_series": recon_rmse,
        "prior_vs_data_mean_gap": mean_gap,
        "prior_vs_data_std_gap": std_gap,
        "fit_seconds": seconds,
        **result.metrics(),
    }
    paths = write_outputs(
        out,
        model,
        metrics,
        [
            (
                "latent_sde.png",
                lambda p: plot_lorenz(p, ys[:show], posterior, prior, result.losses, KL_WEIGHTS),
            )
        ],
    )
    print(
        f"ELBO per series {metrics['elbo_per_series']:.1f} (log-likelihood "
        f"{metrics['log_likelihood_per_series']:.1f}, KL {metrics['kl_per_series']:.1f}); "
        f"posterior RMSE {recon_rmse:.3f}"
    )
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def plot_lorenz(path, data, posterior, prior, losses, weights) -> None:
    """Data, posterior reconstructions of the same series, and prior samples (3-D), plus the
    loss curve with the KL stages marked."""
    fig = plt.figure(figsize=(17, 4.6))
    panels = (
        (data, "data (10 series)"),
        (posterior, "posterior samples of the same series"),
        (prior, "prior samples"),
    )
    limits = None
    for i, (paths, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1, projection="3d")
        for j, p in enumerate(np.asarray(paths)):
            ax.plot(p[:, 0], p[:, 1], p[:, 2], lw=0.9, color=f"C{j % 10}")
            ax.scatter(p[0, 0], p[0, 1], p[0, 2], marker="x", color=f"C{j % 10}", s=15)
        if limits is None:
            limits = (ax.get_xlim(), ax.get_ylim(), ax.get_zlim())
        else:
            ax.set_xlim(limits[0]), ax.set_ylim(limits[1]), ax.set_zlim(limits[2])
        ax.set_xlabel("$z_1$"), ax.set_ylabel("$z_2$"), ax.set_zlabel("$z_3$")
        ax.set_title(title)
    ax = fig.add_subplot(1, 4, 4)
    losses = np.asarray(losses)
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1)
    per_stage = len(losses) // len(weights) if len(weights) else len(losses)
    for k, w in enumerate(weights):
        ax.axvline(k * per_stage + 0.5, color="grey", lw=0.6, ls=":")
        ax.text(
            k * per_stage + 1,
            0.95,
            f"KL weight {w}",
            transform=ax.get_xaxis_transform(),
            fontsize=8,
            va="top",
        )
    ax.set_yscale("symlog")
    ax.set_xlabel("step")
    ax.set_title("loss = -(log-lik - weight·KL) per series")
    fig.suptitle("latent SDE on the stochastic Lorenz attractor (torchsde's example data)")
    fig.tight_layout()
    save_figure(fig, path)
