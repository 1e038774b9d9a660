"""VAE posteriors on the 8x8 digits (issue #16): Gaussian vs planar flow vs amortised FFJORD.

The FFJORD paper's variational-inference experiment (Table 3) at the size of scikit-learn's
bundled digits (1797 images of 8x8 pixels, no download). Pixels (0..16) are scaled to [0, 1] and
binarised (each pixel is 1 with probability its intensity): the test set (297 images) once, with a
fixed seed; the training set (1500 images) 20 times, stacked, so minibatches see fresh
binarisations (an approximation of the dynamic binarisation used on MNIST). The split is the
same for every seed; a seed changes the initial weights and the training randomness.

Every model has the same encoder and decoder (MLPs of `--hidden` units, softplus, latent
dimension `--latent`, tanh, Bernoulli likelihood); only the posterior differs:

- Gaussian: q(z | x) = N(mean(x), diag std(x)^2),
- planar: the Gaussian sample pushed through `--planar` amortised planar maps (u, w, b from the
  encoder),
- FFJORD: the Gaussian sample pushed through a continuous flow whose ConcatSquash field
  (64-64 tanh) is conditioned on a `--context`-dimensional vector from the encoder; exact trace,
  dopri5 at rtol = atol = 1e-3 (training and evaluation alike).

All are trained by `nde.fit` with `nde.ELBO` (Adam with a cosine decay from `--lr`, `--steps`
steps of 128 images). Reported on the test
set: -ELBO (mean over 8 posterior samples per image) and -log p(x) estimated by importance
weighting with k = 500 samples, in nats, mean ± std over the seeds.

    python benchmarks/vae_digits.py --steps 2000 --seeds 0 1 2 --plot docs/vae_digits.png

`--plot PATH` also draws, for the first seed's three models, held-out digits, their
reconstructions (the decoder's pixel probabilities at one posterior sample) and samples from the
prior (pixel probabilities of the decoder at z ~ N(0, I)), with the table of all seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import neuraldiffeq as nde

POSTERIORS = ("gaussian", "planar", "ffjord")


def load(n_copies: int = 20):
    """Binarised digits: (train (n_copies * 1500, 64), test (297, 64)), float32."""
    pixels = load_digits().data / 16.0
    rng = np.random.default_rng(0)
    pixels = pixels[rng.permutation(len(pixels))]
    train, test = pixels[:1500], pixels[1500:]
    test = (rng.uniform(size=test.shape) < test).astype(np.float32)
    train = np.concatenate([(rng.uniform(size=train.shape) < train) for _ in range(n_copies)])
    return train.astype(np.float32), test


def build(posterior: str, args, seed: int) -> nde.VAE:
    d = args.latent
    if posterior == "gaussian":
        flow = None
    elif posterior == "planar":
        flow = nde.PlanarFlow(d, args.planar)
    else:
        field = nde.ConcatSquashMLP(
            d, (64, 64), jnp.tanh, context_size=args.context, key=jax.random.key(10_000 + seed)
        )
        flow = nde.FFJORD(field, t1=0.5, trace="exact", solver="dopri5", rtol=1e-3, atol=1e-3)
    hidden = (args.hidden,) * 2
    return nde.VAE(64, d, flow, hidden=hidden, activation=jnp.tanh, key=jax.random.key(seed))


@eqx.filter_jit
def _elbo(vae, x, key):
    return vae.elbo(x, key)


@eqx.filter_jit
def _iw(vae, x, key, k):
    return vae.iw_log_likelihood(x, key, k)


def evaluate(vae: nde.VAE, test: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    """(-ELBO averaged over 8 samples per image, -IW log-likelihood with k samples), nats."""
    x = jnp.asarray(test)
    key = jax.random.key(20_000 + seed)
    elbos = [np.asarray(_elbo(vae, x, jax.random.fold_in(key, i))) for i in range(8)]
    chunk = max(1, 10_000 // k)  # ~10,000 posterior samples per solve
    iw = []
    for i, start in enumerate(range(0, len(x), chunk)):
        rows = x[start : start + chunk]
        if len(rows) < chunk:  # pad so one compiled program serves every chunk
            rows = jnp.concatenate([rows, jnp.zeros((chunk - len(rows), x.shape[1]))])
        out = np.asarray(_iw(vae, rows, jax.random.fold_in(key, 1000 + i), k))
        iw.append(out[: min(chunk, len(x) - start)])
    return -float(np.mean(elbos)), -float(np.mean(np.concatenate(iw)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--posteriors", nargs="+", default=list(POSTERIORS), choices=POSTERIORS)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--planar", type=int, default=8, help="planar maps")
    parser.add_argument("--context", type=int, default=16, help="FFJORD conditioning size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--k", type=int, default=500, help="importance samples")
    parser.add_argument("--out", default="out/vae_digits")
    parser.add_argument("--plot", default=None, help="also draw the picture to this PNG path")
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="no training: redraw --plot from the results and first-seed models saved in --out",
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, test = load()
    print(f"train {train.shape} (binarised 20 times), test {test.shape}", flush=True)

    if args.plot_only:
        if not args.plot:
            raise ValueError("--plot-only needs --plot PATH.")
        with open(os.path.join(args.out, "vae_digits.json")) as f:
            rows = json.load(f)["rows"]
        models = {
            p: eqx.tree_deserialise_leaves(
                os.path.join(args.out, f"{p}_seed{args.seeds[0]}.eqx"),
                build(p, args, args.seeds[0]),
            )
            for p in args.posteriors
        }
        print("\n".join(summary_table(rows, args)))
        plot(args.plot, models, test, rows, args)
        print(f"wrote {args.plot}")
        return
    rows, first_models = [], {}
    for seed in args.seeds:
        for posterior in args.posteriors:
            vae = build(posterior, args, seed)
            schedule = optax.cosine_decay_schedule(args.lr, args.steps, 0.1)
            optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
            per_call = min(50, args.steps)
            result = nde.fit(
                vae,
                train,
                nde.ELBO(batch_size=128),
                optimizer=optimizer,
                steps=args.steps,
                key=jax.random.key(seed),
                progress=False,
                steps_per_call=per_call,
            )
            times = np.asarray(result.times)
            # time per step after the first fused call (which includes the compilation)
            step_s = float((times[-1] - times[per_call - 1]) / max(1, args.steps - per_call))
            t0 = time.perf_counter()
            neg_elbo, neg_iw = evaluate(result.model, test, args.k, seed)
            row = {
                "posterior": posterior,
                "seed": seed,
                "test_neg_elbo": neg_elbo,
                "test_neg_iw_loglik": neg_iw,
                "k": args.k,
                "train_final_loss_mean_last100": float(np.mean(result.losses[-100:])),
                "seconds_per_step": step_s,
                "train_seconds": float(times[-1]),
                "eval_seconds": time.perf_counter() - t0,
                "skipped": result.skipped,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if seed == args.seeds[0]:
                first_models[posterior] = result.model
                path = os.path.join(args.out, f"{posterior}_seed{seed}.eqx")
                eqx.tree_serialise_leaves(path, result.model)
    with open(os.path.join(args.out, "vae_digits.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)

    table = summary_table(rows, args)
    print()
    print("\n".join(table))
    if args.plot:
        plot(args.plot, first_models, test, rows, args)
        print(f"wrote {args.plot}")


def _label(name: str, args) -> str:
    return {"gaussian": "Gaussian (no flow)", "planar": f"planar ({args.planar} maps)"}.get(
        name, "FFJORD"
    )


def summary_table(rows: list[dict], args) -> list[str]:
    """The paper's layout: one row per posterior, mean ± std over the seeds (markdown lines)."""

    def summary(name, key):
        vals = [r[key] for r in rows if r["posterior"] == name]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.2f} ± {sd:.2f}"

    lines = [
        f"Test set, nats per image, mean ± std over seeds {args.seeds}, {args.steps} steps:",
        "",
        f"| posterior | -ELBO | -log p(x) (IW, k = {args.k}) | s / step |",
        "|---|---|---|---|",
    ]
    for name in args.posteriors:
        step = statistics.mean(r["seconds_per_step"] for r in rows if r["posterior"] == name)
        lines.append(
            f"| {_label(name, args)} | {summary(name, 'test_neg_elbo')} | "
            f"{summary(name, 'test_neg_iw_loglik')} | {step:.3f} |"
        )
    return lines


def _strip(ax, images: np.ndarray, title: str, cols: int = 8) -> None:
    """Tile 8x8 images in rows of `cols`, white separators, black = 1."""
    n_rows = -(-len(images) // cols)
    grid = np.full((n_rows * 9 - 1, cols * 9 - 1), np.nan)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = np.asarray(img).reshape(8, 8)
    cmap = plt_module().get_cmap("gray_r").copy()
    cmap.set_bad("white")
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plt_module():
    from neuraldiffeq.io.plotting import plt

    return plt


def plot(path: str, models: dict, test: np.ndarray, rows: list[dict], args, n: int = 16) -> None:
    """Held-out digits, each posterior's reconstructions and prior samples, and the table."""
    from neuraldiffeq.io.plotting import save_figure

    plt = plt_module()
    x = jnp.asarray(test[:n])
    names = [p for p in args.posteriors if p in models]
    fig, axes = plt.subplots(
        1 + len(names), 2, figsize=(10, 1.9 * (1 + len(names))), constrained_layout=True
    )
    _strip(axes[0, 0], test[:n], f"held-out digits (binarised), first {n} of {len(test)}")
    axes[0, 1].axis("off")
    lines = summary_table(rows, args)
    cells = [
        [c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if "---" not in line
    ]
    header = ["posterior", "-ELBO", f"-log p(x), IW k={args.k}", "s / step"]
    table = axes[0, 1].table(
        cellText=cells[1:], colLabels=header, loc="center", colWidths=[0.34, 0.22, 0.28, 0.16]
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.4)
    axes[0, 1].set_title(f"test nats/image, mean ± std, seeds {args.seeds}", fontsize=9)
    for i, name in enumerate(names, start=1):
        vae = models[name]
        z, _ = vae.posterior_sample(x, jax.random.key(30_000))
        recon = jax.nn.sigmoid(jax.vmap(vae.decoder)(z))
        prior = jax.random.normal(jax.random.key(40_000), (n, vae.latent_size))
        samples = jax.nn.sigmoid(jax.vmap(vae.decoder)(prior))
        neg_elbo = next(
            r["test_neg_elbo"]
            for r in rows
            if r["posterior"] == name and r["seed"] == args.seeds[0]
        )
        label = f"{_label(name, args)} posterior (seed {args.seeds[0]}, -ELBO {neg_elbo:.2f})"
        _strip(axes[i, 0], np.asarray(recon), f"{label}:\nreconstructions p(x | z), z ~ q(z | x)")
        _strip(
            axes[i, 1],
            np.asarray(samples),
            "prior samples: decoder at z ~ N(0, I) (same z for each model)",
        )
    fig.suptitle(
        f"VAE on the 8x8 digits, {args.steps} steps: pixel probabilities (black = 1)", fontsize=10
    )
    save_figure(fig, path)


if __name__ == "__main__":
    main()
