"""A stiff reaction network whose one rate law is a neural network: BDF trains it; the dense
ESDIRK path costs many times more per gradient.

The situation of diffrax issue #319. Robertson's three reactions run in each of `--cells`
compartments in a row (A → B at a rate k1 that differs from cell to cell, 2B → B + C at
k2 = 3e7, B + C → A + C at k3 = 1e4), and A and C move between neighbouring cells: 3·cells
species (120 by default), with a Jacobian whose eigenvalues span more than six decades (the
demo measures the stiffness ratio on the observed states and prints it). The rate law of
2B → B + C, r2 = k2·B², is unknown: a small network gives it, the same in every cell,

    r2(B) = rate_scale · x · softplus(net(x)),   x = B / max observed B,

(zero without the reactant, never negative; `rate_scale = max k1`, the known reaction's rate
scale, as Kim et al., "Stiff neural ordinary differential equations", Chaos 2021, advise).
All species are observed at log-spaced times on [1e-5, 100] (each decade weighs the same),
and the misfit is per-species normalised (B lives around 1e-5).

The network is fitted twice from the same start, with the same steps (Adam, then L-BFGS):

- with `solver="bdf"`, `jacobian="sparse"` (the Jacobian's pattern detected, as many JVPs per
  Jacobian as it has colours): the fit must bring the loss to 1e-3 of its start or below;
- with `"kvaerno5"` (diffrax's ESDIRK, dense Jacobian and LU), given `--budget` times the
  wall-clock time the BDF fit took: the demo reports how far it got.

Both solvers' seconds per loss-and-gradient evaluation are measured on the starting network
too. Everything runs in float64. Writes `model.eqx` (the BDF fit), `metrics.json` and
`fit.png`.
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

#: the rates of 2B -> B + C and B + C -> A + C (Robertson's)
K2, K3 = 3e7, 1e4
#: A -> B runs at K1_LOW in the first cell, rising linearly to 2 * K1_LOW in the last
K1_LOW = 0.01
#: exchange rate of A and C between neighbouring cells
EXCHANGE = 0.5
#: the observation span's end (the first observation is at 1e-5)
T_END = 100.0
#: observation times: 0 and this many log-spaced on [1e-5, T_END]
N_TIMES = 24
#: the fit's tolerances (the data are made at 1e-9 / 1e-13)
RTOL, ATOL = 1e-6, 1e-10
#: the issue's target: the fitted loss at most this fraction of the starting loss
TARGET = 1e-3


def rates_k1(cells: int) -> jax.Array:
    """k1 of each cell (K1_LOW to 2·K1_LOW)."""
    return K1_LOW * (1.0 + jnp.arange(cells) / max(cells - 1, 1))


def _exchange(u):
    """Net inflow of a species from its neighbours (zero flux at both ends of the row)."""
    if u.shape[0] == 1:
        return jnp.zeros_like(u)
    inner = u[2:] - 2 * u[1:-1] + u[:-2]
    return EXCHANGE * jnp.concatenate([u[1:2] - u[:1], inner, u[-2:-1] - u[-1:]])


def network_rhs(y: jax.Array, r2: jax.Array) -> jax.Array:
    """d(y)/dt of the network with the rate of 2B -> B + C given per cell (`r2`, shape (cells,)).

    The state interleaves the cells: y = (A_1, B_1, C_1, A_2, B_2, C_2, ...).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.stiff_network import network_rhs
        >>> dy = network_rhs(jnp.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]), jnp.zeros(2))
        >>> [round(float(v), 3) for v in dy]
        [-0.01, 0.01, 0.0, -0.02, 0.02, 0.0]
    """
    cells = y.shape[0] // 3
    a, b, c = y[0::3], y[1::3], y[2::3]
    r1, r3 = rates_k1(cells) * a, K3 * b * c
    da = -r1 + r3 + _exchange(a)
    db = r1 - r2 - r3
    dc = r2 + _exchange(c)
    return jnp.stack([da, db, dc], axis=1).reshape(-1)


def true_field(t, y, args=None):
    """The network with its true rate law r2 = k2·B²."""
    return network_rhs(y, K2 * y[1::3] ** 2)


def initial_state(cells: int) -> jax.Array:
    """A from 1 (first cell) to 0.5 (last), C the rest, no B."""
    share = 0.5 * jnp.arange(cells) / max(cells - 1, 1)
    return jnp.stack([1.0 - share, jnp.zeros(cells), share], axis=1).reshape(-1)


class NetworkUDE(eqx.Module):
    """The network with r2 = rate_scale · x · softplus(net(x)), x = B / b_scale, in every cell.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.stiff_network import NetworkUDE, initial_state
        >>> net = eqx.nn.MLP(1, 1, 4, 1, key=jax.random.key(0))
        >>> NetworkUDE(net, 3.6e-5, 0.02)(0.0, initial_state(7)).shape
        (21,)
    """

    net: eqx.Module
    b_scale: float = eqx.field(static=True)
    rate_scale: float = eqx.field(static=True)

    def rate(self, b: jax.Array) -> jax.Array:
        """The network's r2 for one cell's B."""
        x = b / self.b_scale
        return self.rate_scale * x * jax.nn.softplus(self.net(x[None])[0])

    def __call__(self, t, y, args=None):
        return network_rhs(y, jax.vmap(self.rate)(y[1::3]))


class ScaledMSE(eqx.Module):
    """Mean squared error with each species divided by its scale (its largest value)."""

    scale: jax.Array

    def __call__(self, pred, target, mask=None):
        err = ((pred - target) / self.scale) ** 2
        return jnp.mean(err if mask is None else jnp.where(mask, err, 0.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cells", type=int, default=40, help="compartments (3 species each; at least 7)"
    )
    parser.add_argument("--steps", type=int, default=60, help="Adam steps (0: none)")
    parser.add_argument("--lbfgs-steps", type=int, default=80, help="L-BFGS steps after Adam")
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="the kvaerno5 fit's wall-clock time, in multiples of the BDF fit's (0: skip it)",
    )
    parser.add_argument("--out", default="out/stiff-network", help="output folder")


def problem(cells: int):
    """The observations, the starting UDE, the per-species scaled misfit."""
    if cells < 7:
        raise ValueError(f"--cells must be at least 7 (>= 20 species), got {cells}.")
    y0 = initial_state(cells)
    ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(-5, np.log10(T_END), N_TIMES)])
    config = nde.SolveConfig("bdf", rtol=1e-9, atol=1e-13, jacobian="sparse", max_steps=20_000)
    reference = nde.NeuralODE(true_field, config=config).resolve_solver(ts, y0)
    data = nde.TimeSeries(ts, reference(ts, y0))
    scale = jnp.maximum(jnp.max(jnp.abs(data.ys), axis=0), 1e-12)
    b_scale = float(jnp.max(data.ys[:, 1::3]))
    net = eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    field = NetworkUDE(net, b_scale, float(jnp.max(rates_k1(cells))))
    return data, field, nde.Trajectory(loss_fn=ScaledMSE(scale))


def stiffness_ratio(data: nde.TimeSeries) -> tuple[float, float, float]:
    """The largest, over the observed states after t = 0, of max|Re λ| / min|Re λ| for the
    eigenvalues λ of the true field's Jacobian (the conserved total's zero eigenvalue left
    out); with the max and min |Re λ| where it is reached."""
    jac = jax.jacfwd(lambda y: true_field(0.0, y))
    best = (0.0, 0.0, 0.0)
    for y in np.asarray(data.ys)[1:]:
        re = np.sort(np.abs(np.linalg.eigvals(np.asarray(jac(jnp.asarray(y)))).real))
        re = re[re > 1e-12 * re[-1]]
        if re[-1] / re[0] > best[0]:
            best = (float(re[-1] / re[0]), float(re[-1]), float(re[0]))
    return best


def seconds_per_gradient(model, data, strategy, repeats: int = 3) -> float:
    """Median seconds of one compiled loss-and-gradient evaluation (compiled first)."""
    prepared = strategy.prepare(model, data)
    f = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: strategy.loss(m, prepared, None)))
    jax.block_until_ready(f(model))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(model))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _stages(strategy, steps: int, lbfgs_steps: int) -> list:
    adam = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.02))
    stages = [nde.Stage(strategy, adam, steps)] if steps > 0 else []
    if lbfgs_steps > 0:
        stages.append(nde.Stage(strategy, optax.lbfgs(), lbfgs_steps))
    return stages


def run(args: argparse.Namespace) -> dict:
    with jax.enable_x64(True):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data, field, strategy = problem(args.cells)
    ratio, fastest, slowest = stiffness_ratio(data)
    n = data.ys.shape[1]
    print(f"{n} species; stiffness ratio {ratio:.2e} (|Re λ| from {slowest:.2e} to {fastest:.2e})")

    settings = dict(rtol=RTOL, atol=ATOL, max_steps=4000, sensitivity=nde.Direct())
    unresolved = nde.NeuralODE(field, config=nde.SolveConfig("bdf", jacobian="sparse", **settings))
    bdf = unresolved.resolve_solver(data.ts, data.ys[0])
    esdirk = nde.NeuralODE(field, config=nde.SolveConfig("kvaerno5", **settings))
    per_gradient = {"bdf": None, "kvaerno5": None}
    if args.budget > 0:  # the comparison's evidence (each compiles once more)
        per_gradient = {
            "bdf": seconds_per_gradient(bdf, data, strategy),
            "kvaerno5": seconds_per_gradient(esdirk, data, strategy, repeats=1),
        }
        print(f"seconds per loss+gradient: {per_gradient}")

    stages = _stages(strategy, args.steps, args.lbfgs_steps)
    start = time.perf_counter()
    result = nde.fit(bdf, data, stages, progress=args.progress)
    bdf_seconds = time.perf_counter() - start
    start_loss, best = float(result.losses[0]), float(result.best_loss)
    print(
        f"bdf: loss {start_loss:.3e} -> {best:.3e} ({best / start_loss:.1e}) in {bdf_seconds:.1f} s"
    )

    metrics = {
        "demo": "stiff-network",
        "species": int(n),
        "cells": args.cells,
        "stiffness_ratio": ratio,
        "fastest_rate": fastest,
        "slowest_rate": slowest,
        "replaced_rate_law": "r2 = k2*B^2 (2B -> B + C), in every cell",
        "network": "MLP 1 -> 8 -> 1, tanh; r2 = rate_scale * x * softplus(net(x))",
        "settings": {"rtol": RTOL, "atol": ATOL, "max_steps": 4000, "sensitivity": "Direct"},
        "seconds_per_gradient": per_gradient,
        "target_loss_ratio": TARGET,
        "bdf": {
            "solver": "bdf, jacobian='sparse'",
            "pattern": repr(bdf.solver.jacobian),
            "start_loss": start_loss,
            "loss_ratio": best / start_loss,
            "fit_seconds": bdf_seconds,
            **result.metrics(),
        },
    }
    esdirk_result = None
    if args.budget > 0:
        budget = args.budget * bdf_seconds
        t0 = time.perf_counter()
        esdirk_result = nde.fit(
            esdirk,
            data,
            _stages(strategy, args.steps, args.lbfgs_steps),
            progress=args.progress,
            callback=lambda step, loss, model: time.perf_counter() - t0 > budget,
        )
        e_best = float(esdirk_result.best_loss)
        metrics["kvaerno5"] = {
            "solver": "kvaerno5 (dense Jacobian, LU)",
            "budget_seconds": budget,
            "loss_ratio": e_best / start_loss,
            "steps_done": int(len(esdirk_result.losses)),
            "steps_asked": args.steps + args.lbfgs_steps,
            **esdirk_result.metrics(),
        }
        print(
            f"kvaerno5: {len(esdirk_result.losses)} of {args.steps + args.lbfgs_steps} steps in "
            f"{budget:.1f} s, loss ratio {e_best / start_loss:.1e}"
        )

    def draw(path):
        _plot(path, data, result, esdirk_result, metrics)

    # saved with jacobian="sparse" rather than the detected pattern: the pattern is detected
    # again when the loaded model is resolved, and the file holds only what nde.load knows
    saved = eqx.tree_at(lambda m: m.config, result.model, unresolved.config)
    paths = write_outputs(out, saved, metrics, [("fit.png", draw)])
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def _plot(path, data, result, esdirk_result, metrics) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    dense = jnp.concatenate([jnp.zeros(1), jnp.logspace(-5, np.log10(T_END), 200)])
    fitted = np.asarray(result.model(dense, data.ys[0]))
    ts, ys = np.asarray(data.ts), np.asarray(data.ys)
    cells = ys.shape[1] // 3
    shown = np.unique(np.linspace(0, cells - 1, min(cells, 6)).round().astype(int))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
    for species, ax, name in ((0, axes[0], "A"), (1, axes[1], "B (x 1e5)")):
        factor = 1e5 if species == 1 else 1.0
        for colour, cell in zip(colours, shown, strict=True):
            i = 3 * cell + species
            ax.plot(ts[1:], ys[1:, i] * factor, "o", ms=3, color=colour)
            ax.plot(np.asarray(dense)[1:], fitted[1:, i] * factor, "-", color=colour)
        ax.set_xscale("log")
        ax.set_xlabel("t")
        ax.set_title(f"{name} in {len(shown)} of the {cells} cells: data (o), BDF fit (-)")
    ax = axes[2]
    ax.semilogy(result.times, result.losses, label="bdf (sparse Jacobian)")
    if esdirk_result is not None:
        ax.semilogy(esdirk_result.times, esdirk_result.losses, label="kvaerno5 (dense)")
    start = metrics["bdf"]["start_loss"]
    ax.axhline(start * TARGET, color="k", ls=":", lw=1, label="1e-3 of the start")
    ax.set_xlabel("wall-clock seconds")
    ax.set_title("training loss (scaled misfit)")
    ax.legend(fontsize=8)
    note = f"{metrics['species']} species, stiffness ratio {metrics['stiffness_ratio']:.1e}"
    per = metrics["seconds_per_gradient"]
    if per["kvaerno5"] is not None:
        note += f"\nper gradient: bdf {per['bdf']:.3f} s, kvaerno5 {per['kvaerno5']:.3f} s"
    ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=8, va="bottom")
    fig.suptitle("A stiff reaction network with a neural rate law: BDF against the dense ESDIRK")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
