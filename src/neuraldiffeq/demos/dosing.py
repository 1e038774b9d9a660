"""Repeated oral doses: a one-compartment pharmacokinetic model with a neural elimination term.

Six patients each take 100 mg three times, 12 h apart, at their own times (`nde.Schedule`, one
per patient through `nde.PerSeries`). The dose enters the gut (amount A, not observed), is
absorbed at rate ka into a volume V = 10 L, and eliminated by saturable Michaelis–Menten
kinetics, the truth being

    dA/dt = -ka A,    dC/dt = ka A / V - Vmax C / (Km + C),

with ka = 0.8 /h, Vmax = 2 mg/L/h, Km = 4 mg/L. The concentration C is observed sparsely
(`--points` times over 36 h, 3% multiplicative noise, seeded). The model knows the absorption
structure and V but learns ka and replaces the elimination by a small network r(C) >= 0
(a universal differential equation). Adam, then L-BFGS. Float64. Writes `model.eqx`,
`metrics.json` (fitted ka and its relative error) and `fit.png` (the patients' data and fits, and
the learned elimination curve against the true Michaelis–Menten one).
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs

KA, VMAX, KM, VOLUME, DOSE = 0.8, 2.0, 4.0, 10.0, 100.0
START_KA = 0.5
PATIENTS = 6
T1 = 36.0


class TruePK(eqx.Module):
    """The true model: first-order absorption, Michaelis–Menten elimination.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.dosing import TruePK
        >>> [round(float(v), 3) for v in TruePK()(0.0, jnp.array([100.0, 4.0]), None)]
        [-80.0, 7.0]
    """

    def __call__(self, t, y, args):
        a, c = y[0], y[1]
        return jnp.stack([-KA * a, KA * a / VOLUME - VMAX * c / (KM + c)])


class NeuralPK(eqx.Module):
    """Known absorption with a trainable ka; elimination r(C) = softplus(net(C / 10)) * C.

    The factor C makes r(0) = 0 (nothing to eliminate from an empty compartment).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.dosing import NeuralPK
        >>> model = NeuralPK(jax.random.key(0))
        >>> float(model.elimination(jnp.array(0.0)))
        0.0
    """

    log_ka: jax.Array
    net: eqx.nn.MLP

    def __init__(self, key, ka: float = START_KA):
        self.log_ka = jnp.log(jnp.asarray(ka))
        self.net = eqx.nn.MLP(1, 1, 16, 2, activation=jnp.tanh, key=key)

    def elimination(self, c):
        """The learned elimination rate r(C), mg/L/h."""
        return jax.nn.softplus(self.net(c[None] / 10.0)[0]) * c

    def __call__(self, t, y, args):
        a, c = y[0], y[1]
        ka = jnp.exp(self.log_ka)
        return jnp.stack([-ka * a, ka * a / VOLUME - self.elimination(c)])


def concentration_l2(pred, target, mask=None):
    """Squared relative misfit of the concentrations (the gut amount is not observed)."""
    return jnp.sum(((pred[..., 1] - target[..., 1]) / (1.0 + target[..., 1])) ** 2)


def dosing_times(seed: int) -> np.ndarray:
    """Each patient's three dose times, 12 h apart from a first dose in (0.5, 3) h."""
    first = np.random.default_rng(seed).uniform(0.5, 3.0, PATIENTS)
    return first[:, None] + np.array([0.0, 12.0, 24.0])


def problem(points: int, noise: float, seed: int):
    """The observations (6 patients) and their dose schedules (an `nde.PerSeries`)."""
    times = dosing_times(seed)
    doses = nde.PerSeries(
        nde.Exogenous(
            schedule=nde.Schedule(jnp.asarray(times), jnp.full(times.shape, DOSE), into=0)
        )
    )
    ts = jnp.linspace(0.0, T1, points)
    truth = nde.HybridODE(TruePK(), rtol=1e-8, atol=1e-8)
    # all patients in one compiled solve (their schedules are the batch axis of doses.value)
    solve = eqx.filter_jit(eqx.filter_vmap(lambda ex: truth(ts, jnp.zeros(2), ex)))
    ys = np.array(solve(doses.value))
    rng = np.random.default_rng(seed + 1)
    ys[:, 1:, 1] *= 1 + noise * rng.standard_normal((PATIENTS, points - 1))
    ys[:, :, 0] = 0.0  # the gut amount is not observed (its start, 0, is known)
    return nde.TimeSeries(ts, ys), doses


def fit_dosing(
    data: nde.TimeSeries,
    doses: nde.PerSeries,
    seed: int,
    steps: int,
    lbfgs_steps: int,
    progress: bool = False,
) -> nde.FitResult:
    """The demo's fit: `NeuralPK` (network seeded by `seed`, ka from `START_KA`), Adam (lr
    0.01) for `steps` then L-BFGS for `lbfgs_steps`, on the relative concentration misfit."""
    model = nde.HybridODE(NeuralPK(jax.random.key(seed)), rtol=1e-6, atol=1e-8)
    strategy = nde.Trajectory(loss_fn=concentration_l2, args=doses)
    stages = [nde.Stage(strategy, optax.adam(0.01), steps)] if steps > 0 else []
    if lbfgs_steps > 0:
        stages.append(nde.Stage(strategy, optax.lbfgs(), lbfgs_steps))
    return nde.fit(model, data, stages, progress=progress)


def elimination_curves(model: nde.HybridODE, data: nde.TimeSeries):
    """(grid, learned r(C), true Michaelis–Menten rate, max error relative to its peak) over
    the observed concentrations."""
    grid = np.linspace(0.0, float(np.max(np.asarray(data.ys)[..., 1])), 50)
    learned = np.asarray(jax.vmap(model.field.elimination)(jnp.asarray(grid)))
    true_rate = VMAX * grid / (KM + grid)
    return grid, learned, true_rate, float(np.max(np.abs(learned - true_rate)) / np.max(true_rate))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=13, help="observations per patient")
    parser.add_argument("--noise", type=float, default=0.03, help="relative noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps")
    parser.add_argument("--lbfgs-steps", type=int, default=100, help="L-BFGS steps after Adam")
    parser.add_argument("--out", default="out/dosing", help="output folder")


def run(args: argparse.Namespace) -> dict:
    with jax.enable_x64(True):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data, doses = problem(args.points, args.noise, args.seed)
    result = fit_dosing(data, doses, args.seed, args.steps, args.lbfgs_steps, args.progress)
    ka = float(jnp.exp(result.model.field.log_ka))
    grid, learned, true_rate, curve_error = elimination_curves(result.model, data)
    print(
        f"ka = {ka:.4f} (true {KA}, {abs(ka / KA - 1):.1e} off); elimination curve "
        f"{curve_error:.1e} off (max, relative to its peak)"
    )
    metrics = {
        "demo": "dosing",
        "true": {"ka": KA, "Vmax": VMAX, "Km": KM, "V": VOLUME},
        "start_ka": START_KA,
        "fitted_ka": ka,
        "ka_relative_error": abs(ka / KA - 1),
        "elimination_curve_error": curve_error,
        "data": {"patients": PATIENTS, "points": args.points, "noise": args.noise},
        **result.metrics(),
    }

    def draw(path):
        _plot(path, data, doses, result.model, grid, learned, true_rate, ka)

    paths = write_outputs(out, result.model, metrics, [("fit.png", draw)])
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def _plot(path, data, doses, model, grid, learned, true_rate, ka) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = jnp.linspace(0.0, T1, 400)
    fig, (ax, ax_e) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=[2, 1])
    for i in range(PATIENTS):
        fit = np.asarray(model(dense, jnp.zeros(2), doses.series(i)))[:, 1]
        ax.plot(np.asarray(dense), fit, color=f"C{i}", lw=1.2)
        ax.plot(np.asarray(data.ts), np.asarray(data.ys)[i, :, 1], "o", color=f"C{i}", ms=3)
    ax.set_xlabel("t (h)")
    ax.set_ylabel("concentration (mg/L)")
    ax.set_title(f"6 patients, sparse data (dots) and fits (lines); ka = {ka:.3f} (true {KA})")
    ax_e.plot(grid, true_rate, color="0.6", lw=3, label="true Michaelis–Menten")
    ax_e.plot(grid, learned, "--", color="C1", label="learned (network)")
    ax_e.set_xlabel("concentration (mg/L)")
    ax_e.set_ylabel("elimination rate (mg/L/h)")
    ax_e.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
