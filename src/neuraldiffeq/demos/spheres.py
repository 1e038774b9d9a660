"""Concentric spheres: a plain neural ODE cannot separate them, an augmented one can."""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from .._checks import count_nfe
from ..fitting.strategies import AbstractStrategy
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs


def concentric_spheres(
    key, dim: int = 2, n_inner: int = 2000, n_outer: int = 2000, inner=(0.0, 2.0), outer=(3.0, 4.0)
):
    """DiffEqFlux's `concentric_sphere`: points with radius in `inner` (label +1) or in
    `outer` (label -1), directions uniform on the sphere. Returns (x (N, dim), labels (N,))."""
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def shell(kd, kr, n, lo, hi):
        d = jax.random.normal(kd, (n, dim))
        d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
        return d * jax.random.uniform(kr, (n, 1), minval=lo, maxval=hi)

    x = jnp.concatenate([shell(k1, k2, n_inner, *inner), shell(k3, k4, n_outer, *outer)])
    labels = jnp.concatenate([jnp.ones(n_inner), -jnp.ones(n_outer)])
    return x, labels


class SphereClassifier(eqx.Module):
    """Flow the point to t = 1 with a (possibly augmented) neural ODE, then a linear readout."""

    ode: eqx.Module
    readout: eqx.nn.Linear

    def flow(self, x):
        if isinstance(self.ode, nde.AugmentedNeuralODE):
            return self.ode.final(x)
        return self.ode(jnp.array([0.0, 1.0], x.dtype), x)[-1]

    def __call__(self, x):
        return self.readout(self.flow(x))[0]


class Classification(AbstractStrategy):
    """Mean squared error of the readout against ±1 labels on a random minibatch (as the
    DiffEqFlux tutorial)."""

    batch_size: int = eqx.field(static=True, default=256)

    def prepare(self, model, data):
        return data

    def loss(self, model, prepared, key):
        x, labels = prepared
        idx = jax.random.choice(key, x.shape[0], (self.batch_size,), replace=False)
        return jnp.mean((jax.vmap(model)(x[idx]) - labels[idx]) ** 2)


def build(augment_dim: int, hidden: int, key) -> SphereClassifier:
    k1, k2 = jax.random.split(key)
    width = 2 + augment_dim
    mlp = eqx.nn.MLP(width, width, hidden, 2, activation=jax.nn.relu, key=k1)
    node = nde.NeuralODE(
        nde.autonomous(mlp), "tsit5", rtol=1e-3, atol=1e-6, sensitivity=nde.Direct()
    )
    ode = nde.AugmentedNeuralODE(node, augment_dim) if augment_dim else node
    return SphereClassifier(ode, eqx.nn.Linear(width, 1, key=k2))


def _accurate(ode):
    """The same field solved at rtol 1e-7, atol 1e-9."""
    node = ode.node if isinstance(ode, nde.AugmentedNeuralODE) else ode
    tight = nde.NeuralODE(node.field, "tsit5", rtol=1e-7, atol=1e-9, max_steps=100_000)
    return nde.AugmentedNeuralODE(tight, ode.augment_dim) if node is not ode else tight


@eqx.filter_jit
def _nfe(ode, x):
    """Field evaluations per forward solve, one per point (Tsit5: 6 per step + 1)."""
    node = ode.node if isinstance(ode, nde.AugmentedNeuralODE) else ode
    prep = ode.augment if isinstance(ode, nde.AugmentedNeuralODE) else (lambda v: v)

    def one(v):
        sol = node.solve(jnp.array([0.0, 1.0], v.dtype), prep(v), throw=False)
        return count_nfe(node.solver, sol.stats["num_steps"])

    return jax.vmap(one)(x)


@eqx.filter_jit
def accuracy(model, x, labels):
    return jnp.mean(jnp.sign(jax.vmap(model)(x)) == labels)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=int,
        default=160,
        help="Adam steps per model (default 160: DiffEqFlux's 10 epochs of 256)",
    )
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units of the field")
    parser.add_argument("--augment-dim", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/spheres", help="output folder")


def run(args: argparse.Namespace) -> dict:
    if args.steps <= 0 or args.augment_dim <= 0 or args.hidden <= 0:
        raise ValueError("--steps, --hidden and --augment-dim must be positive integers.")
    out = prepare_out(args.out)
    k_data, k_test, k_plain, k_aug, k_fit = jax.random.split(jax.random.key(args.seed), 5)
    x, labels = concentric_spheres(k_data)
    x_test, labels_test = concentric_spheres(k_test, n_inner=500, n_outer=500)
    results, models, fits = {}, {}, []
    for name, aug, k in (("plain", 0, k_plain), ("augmented", args.augment_dim, k_aug)):
        fit = nde.fit(
            build(aug, args.hidden, k),
            (x, labels),
            Classification(),
            optimizer=optax.adam(args.lr),
            steps=args.steps,
            key=k_fit,
            steps_per_call=20,
            progress=args.progress,
        )
        models[name] = fit.model
        fits.append(fit)
        # The same trained model solved accurately: is the separation a property of the flow,
        # or of the discretisation error at the training tolerance (trajectories that cross)?
        accurate = eqx.tree_at(lambda m: m.ode, fit.model, _accurate(fit.model.ode))
        results[name] = {
            "train_accuracy": float(accuracy(fit.model, x, labels)),
            "test_accuracy": float(accuracy(fit.model, x_test, labels_test)),
            "test_accuracy_accurate_solve": float(accuracy(accurate, x_test, labels_test)),
            "nfe_mean": float(jnp.mean(_nfe(fit.model.ode, x_test))),
            "final_loss": float(fit.losses[-20:].mean()),
            "wall_seconds": float(fit.times[-1]),
            "losses": fit.losses,
        }
        print(
            f"{name:9s} neural ODE: train accuracy {results[name]['train_accuracy']:.3f}, "
            f"test accuracy {results[name]['test_accuracy']:.3f} (solved at rtol 1e-7: "
            f"{results[name]['test_accuracy_accurate_solve']:.3f})"
        )
        if fit.interrupted:  # Ctrl-C: no second model, no comparison plot
            break
    metrics = {
        "demo": "spheres",
        "augment_dim": args.augment_dim,
        "steps": args.steps,
        **{k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in results.items()},
    }
    paths = write_outputs(
        out,
        models.get("augmented", models["plain"]),
        metrics,
        [("spheres.png", lambda p: _plot(p, x, labels, models, results))]
        if len(models) == 2
        else [],
    )
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(fits, paths)
    return metrics


def _plot(path, x, labels, models, results):
    from ..io.plotting import plt, save_figure

    colors = np.where(np.asarray(labels) > 0, "tab:orange", "tab:blue")
    sub = np.random.default_rng(0).permutation(len(x))[:1500]
    fig = plt.figure(figsize=(17, 4.2))
    ax = fig.add_subplot(1, 4, 1)
    ax.scatter(x[sub, 0], x[sub, 1], c=colors[sub], s=3)
    ax.set_title("data: inner disc (+1) and outer annulus (-1)")
    ax.set_aspect("equal")
    plain = np.asarray(jax.vmap(models["plain"].flow)(x[sub]))
    ax = fig.add_subplot(1, 4, 2)
    ax.scatter(plain[:, 0], plain[:, 1], c=colors[sub], s=3)
    ax.set_title(
        f"plain neural ODE, flowed to t=1\ntest accuracy "
        f"{results['plain']['test_accuracy']:.1%} (rtol 1e-7 solve: "
        f"{results['plain']['test_accuracy_accurate_solve']:.1%})"
    )
    aug = np.asarray(jax.vmap(models["augmented"].flow)(x[sub]))
    ax = fig.add_subplot(1, 4, 3, projection="3d")
    ax.scatter(aug[:, 0], aug[:, 1], aug[:, 2], c=colors[sub], s=3)
    ax.set_title(
        f"augmented neural ODE (3-D), t=1\ntest accuracy "
        f"{results['augmented']['test_accuracy']:.1%} (rtol 1e-7 solve: "
        f"{results['augmented']['test_accuracy_accurate_solve']:.1%})"
    )
    ax = fig.add_subplot(1, 4, 4)
    for name in ("plain", "augmented"):
        ax.plot(results[name]["losses"], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss (MSE)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
