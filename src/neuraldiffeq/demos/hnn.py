"""Hamiltonian neural networks (Greydanus et al. 2019) on a mass–spring and a pendulum.

Each system is observed with noise along short trajectories in (q, p). A `nde.HamiltonianNN`
(a network H(q, p), the field its symplectic gradient) and a plain `nde.NeuralODE` with the same
hidden layers are fitted the same way (collocation, then multiple shooting). Then both are
rolled out for 100 periods from a new initial state: the HNN conserves its own learned energy,
so the true energy along its rollout stays within a bounded band; the plain one's drifts.
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

from .._checks import count_params
from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs

#: The two systems of Greydanus et al. (m = l = k = 1, pendulum g = 3): their energy, the radius
#: of the training initial states in the (q, p) plane, and the rollout's initial state.
SYSTEMS = {
    "mass-spring": dict(
        energy=lambda y: 0.5 * y[..., 0] ** 2 + 0.5 * y[..., 1] ** 2,
        radius=(0.3, 1.0),
        test_y0=(0.7, 0.0),
    ),
    "pendulum": dict(
        energy=lambda y: 3.0 * (1.0 - jnp.cos(y[..., 0])) + 0.5 * y[..., 1] ** 2,
        radius=(1.3, 2.3),
        test_y0=(1.6, 0.0),
    ),
}


def true_field(name):
    energy = SYSTEMS[name]["energy"]
    return nde.HamiltonianNN(lambda y: energy(y), rtol=1e-9, atol=1e-9, max_steps=200_000)


def period(name, y0) -> float:
    """The true period of the orbit through y0 (p0 = 0)."""
    if name == "mass-spring":
        return 2 * np.pi
    from scipy.special import ellipk

    amplitude = float(y0[0])
    return float(4 * ellipk(np.sin(amplitude / 2) ** 2) / np.sqrt(3.0))


def make_data(name, key, n_traj, n_times, t1, noise):
    """Noisy observations of `n_traj` trajectories from random states at radius in the system's
    range (Greydanus et al.: uniform angle and radius), `n_times` points on [0, t1]."""
    k_angle, k_radius, k_noise = jax.random.split(key, 3)
    lo, hi = SYSTEMS[name]["radius"]
    angle = jax.random.uniform(k_angle, (n_traj,), minval=0, maxval=2 * np.pi)
    radius = jax.random.uniform(k_radius, (n_traj,), minval=lo, maxval=hi)
    y0 = jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], -1)
    ts = jnp.linspace(0.0, t1, n_times)
    clean = jax.vmap(lambda y: true_field(name)(ts, y))(y0)
    ys = clean + noise * jax.random.normal(k_noise, clean.shape)
    return nde.TimeSeries(ts, ys)


def build(kind, width, key):
    settings = dict(rtol=1e-5, atol=1e-6)
    if kind == "hnn":
        net = eqx.nn.MLP(2, "scalar", width, 2, activation=jnp.tanh, key=key)
        return nde.HamiltonianNN(net, **settings)
    net = eqx.nn.MLP(2, 2, width, 2, activation=jnp.tanh, key=key)
    return nde.NeuralODE(nde.autonomous(net), **settings)


def rollout(model, ts, y0):
    """The trained field solved accurately (rtol 1e-8) over the long horizon."""
    config = model.config.replace(rtol=1e-8, atol=1e-10, max_steps=500_000)
    if isinstance(model, nde.HamiltonianNN):
        tight = nde.HamiltonianNN(model.hamiltonian, config=config)
    else:
        tight = nde.NeuralODE(model.field, config=config)
    return eqx.filter_jit(tight)(ts, y0)


@eqx.filter_jit
def _predict(model, ts, y0s):
    return jax.vmap(lambda y0: model(ts, y0))(y0s)


def train_rmse(model, data) -> float:
    """Root-mean-square misfit of each training series solved from its first (noisy) point."""
    preds = _predict(model, data.ts, data.ys[:, 0])
    return float(jnp.sqrt(jnp.mean((preds - data.ys) ** 2)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collocation-steps", type=int, default=2000)
    parser.add_argument("--shooting-steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=64, help="hidden units (both models)")
    parser.add_argument("--trajectories", type=int, default=25)
    parser.add_argument("--times", type=int, default=61, help="points per trajectory")
    parser.add_argument("--t1", type=float, default=6.0, help="length of each trajectory")
    parser.add_argument("--noise", type=float, default=0.05, help="observation noise std")
    parser.add_argument("--periods", type=int, default=100, help="rollout length in periods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/hnn", help="output folder")


def run(args: argparse.Namespace) -> dict:
    for name in ("collocation_steps", "shooting_steps", "width", "trajectories", "periods"):
        if getattr(args, name) < 0 or (name != "shooting_steps" and getattr(args, name) == 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer.")
    if args.times < 5 or args.t1 <= 0 or args.noise < 0:
        raise ValueError("--times must be >= 5, --t1 positive and --noise non-negative.")
    out = prepare_out(args.out)
    key = jax.random.key(args.seed)
    results, rollouts, datasets, fits, models = {}, {}, {}, [], {}
    for system in SYSTEMS:
        key, k_data, k_model = jax.random.split(key, 3)
        data = make_data(system, k_data, args.trajectories, args.times, args.t1, args.noise)
        datasets[system] = data
        y0 = jnp.array(SYSTEMS[system]["test_y0"])
        T = period(system, y0)
        ts = jnp.linspace(0.0, args.periods * T, 20 * args.periods + 1)
        energy = SYSTEMS[system]["energy"]
        h0 = float(energy(y0))
        truth = true_field(system)(ts[:21], y0)  # one period, for the phase portrait
        rollouts[(system, "truth")] = np.asarray(truth)
        for kind in ("hnn", "plain"):
            model = build(kind, args.width, k_model)
            stages = [
                nde.Stage(
                    nde.Collocation(), optax.adam(1e-2), args.collocation_steps, steps_per_call=100
                )
            ]
            if args.shooting_steps:
                stages.append(
                    nde.Stage(
                        nde.MultipleShooting(group_size=5), optax.adam(3e-3), args.shooting_steps
                    )
                )
            start = time.perf_counter()
            fit = nde.fit(model, data, stages, progress=args.progress)
            seconds = time.perf_counter() - start
            fits.append(fit)
            models[(system, kind)] = fit.model
            ys = np.asarray(rollout(fit.model, ts, y0))
            rollouts[(system, kind)] = ys
            error = np.abs(np.asarray(energy(ys)) - h0) / h0
            first = error[:21].max()
            last = error[-21:].max()
            entry = {
                "parameters": count_params(fit.model),
                "fit_seconds": round(seconds, 1),
                "train_rmse": train_rmse(fit.model, data),
                "period": T,
                "true_energy": h0,
                "relative_energy_error_first_period": float(first),
                "relative_energy_error_last_period": float(last),
                "relative_energy_error_max": float(np.nanmax(error)),
                "rollout_finite": bool(np.all(np.isfinite(ys))),
            }
            if kind == "hnn":
                learned = np.asarray(fit.model.energy(ys))
                entry["learned_energy_drift"] = float(np.max(np.abs(learned - learned[0])))
            results[f"{system}/{kind}"] = entry
            print(
                f"{system:11s} {kind:5s}: {entry['parameters']} parameters, fit {seconds:.0f} s, "
                f"training RMSE {entry['train_rmse']:.3f}, "
                f"relative energy error over period 1: {first:.2e}, over period "
                f"{args.periods}: {last:.2e}"
            )
            if fit.interrupted:
                break
        if fits[-1].interrupted:
            break
    metrics = {
        "demo": "hnn",
        "settings": {
            k: v for k, v in vars(args).items() if isinstance(v, int | float | str) and k != "out"
        },
        **results,
    }
    complete = all((s, k) in rollouts for s in SYSTEMS for k in ("hnn", "plain"))
    paths = write_outputs(
        out,
        models.get(("pendulum", "hnn"), next(iter(models.values()))),
        metrics,
        [("hnn.png", lambda p: _plot(p, rollouts, datasets, metrics, args))] if complete else [],
    )
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(fits, paths)
    return metrics


def _plot(path, rollouts, datasets, metrics, args):
    from ..io.plotting import plt, save_figure

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = {"hnn": "tab:blue", "plain": "tab:red"}
    labels = {"hnn": "Hamiltonian NN", "plain": "plain neural ODE"}
    for row, system in enumerate(SYSTEMS):
        truth = rollouts[(system, "truth")]
        data = np.asarray(datasets[system].ys)
        for col, kind in enumerate(("hnn", "plain")):
            ax = axes[row, col]
            ys = rollouts[(system, kind)]
            ax.scatter(data[..., 0], data[..., 1], s=2, c="0.8", label="noisy training data")
            ax.plot(ys[:, 0], ys[:, 1], color=colors[kind], lw=0.4, alpha=0.8,
                    label=f"rollout, {args.periods} periods")  # fmt: skip
            ax.plot(truth[:, 0], truth[:, 1], "k--", lw=1.2, label="true orbit")
            entry = metrics[f"{system}/{kind}"]
            ax.set_title(
                f"{system}: {labels[kind]}\nrelative energy error, last period: "
                f"{entry['relative_energy_error_last_period']:.1e}"
            )
            ax.set_xlabel("q")
            ax.set_ylabel("p")
            ax.set_aspect("equal", adjustable="datalim")
            ax.legend(loc="upper right", fontsize=7)
        ax = axes[row, 2]
        energy = SYSTEMS[system]["energy"]
        period = metrics[f"{system}/hnn"]["period"]
        for kind in ("hnn", "plain"):
            ys = rollouts[(system, kind)]
            t = np.arange(len(ys)) / 20  # 20 points per period
            ax.plot(t, np.asarray(energy(ys)), color=colors[kind], lw=0.8, label=labels[kind])
        ax.axhline(metrics[f"{system}/hnn"]["true_energy"], color="k", ls="--", lw=1,
                   label="true energy")  # fmt: skip
        ax.set_xlabel(f"time (periods of {period:.2f})")
        ax.set_ylabel("true energy H(q, p)")
        ax.set_title(f"{system}: energy along the rollout")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
