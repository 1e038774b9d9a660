"""Neural CDE training step: neuraldiffeq (JAX/diffrax) vs torchcde, side by side in one process.

Problem: the spirals of `neuraldiffeq demo cde` (torchcde's README example), `--batch` series of
100 points per step, fully observed; control X = natural cubic spline through (t, x, y) (torchcde
`natural_cubic_coeffs` + `CubicSpline`, neuraldiffeq `interpolation_coeffs(kind="cubic")`),
computed once before timing. Same model in both: hidden 8, field Linear(8, 128) → softplus →
Linear(128, 8·3) → tanh, initial Linear(3, 8) on X(t0), readout Linear(8, 2) on z(T),
cross-entropy, one Adam(1e-3) update per step, a fresh random minibatch each step. Same solver:
fixed-step midpoint with the knot spacing as step (`--solver midpoint`) or dopri5 at rtol 1e-3,
atol 1e-6 (`--solver dopri5`; torchdiffeq steps the batch as one system with one step size,
diffrax each series with its own). Gradients: torchcde `cdeint(adjoint=False)` (backpropagation
through the solver, every step stored) vs neuraldiffeq `Direct()` (diffrax's recursive
checkpointing: less memory, some steps recomputed) and, with the fixed-step midpoint,
`Direct(checkpoints=99)` (every step stored, the like-for-like); `cdeint(adjoint=True)`
(continuous adjoint) vs `Backsolve()`. A batch shares its times, so neuraldiffeq solves it as one
system of shape (batch, hidden), as torchcde does.

Per contender: `--steps` steps after a warm-up (compilation for JAX), timed; the table shows the
median over `--repeats` repeats of the mean step time.

    python benchmarks/cde.py --solver midpoint --steps 20 --repeats 5 --torch-steps 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import equinox as eqx
import jax
import numpy as np
import optax

import neuraldiffeq as nde
from neuraldiffeq.demos.cde import spiral_data

HIDDEN, WIDTH = 8, 128


def _settings(solver, dt):
    if solver == "midpoint":  # max_steps=None: exactly the steps the interval needs
        return dict(solver="midpoint", dt0=dt, max_steps=None)
    return dict(solver="dopri5", rtol=1e-3, atol=1e-6)


def bench_neuraldiffeq(ts, ys, labels, solver, dt, sensitivity, batch, steps, repeats):
    model = nde.NeuralCDE(
        2,
        HIDDEN,
        2,
        width_size=WIDTH,
        depth=1,
        key=jax.random.key(0),
        sensitivity=sensitivity,
        **_settings(solver, dt),
    )
    strategy = nde.Classification(batch_size=batch)
    prepared = strategy.prepare(model, ((ts, ys), labels))  # the spline, once
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def step(params, opt_state, key):
        def loss_of(p):
            return strategy.loss(eqx.combine(p, static), prepared, key)

        value, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    params, opt_state, value = step(params, opt_state, jax.random.key(0))
    value.block_until_ready()
    compile_s = time.perf_counter() - t0
    times, key = [], jax.random.key(1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            key, sub = jax.random.split(key)
            params, opt_state, value = step(params, opt_state, sub)
        value.block_until_ready()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times) * 1e3, compile_s, float(value)


def bench_torchcde(ts, ys, labels, solver, dt, adjoint, batch, steps, repeats):
    import torch
    import torchcde

    torch.manual_seed(0)

    class Field(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.channels = channels
            self.net = torch.nn.Sequential(
                torch.nn.Linear(HIDDEN, WIDTH),
                torch.nn.Softplus(),
                torch.nn.Linear(WIDTH, HIDDEN * channels),
                torch.nn.Tanh(),
            )

        def forward(self, t, z):
            return self.net(z).view(*z.shape[:-1], HIDDEN, self.channels)

    field = Field(3)
    initial = torch.nn.Linear(3, HIDDEN)
    readout = torch.nn.Linear(HIDDEN, 2)
    params = [*field.parameters(), *initial.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    t = torch.tensor(ts, dtype=torch.float32)
    x = np.concatenate([np.broadcast_to(ts, ys.shape[:2])[..., None], ys], -1)
    coeffs = torchcde.natural_cubic_coeffs(torch.tensor(x, dtype=torch.float32), t)
    y = torch.tensor(labels, dtype=torch.long)
    options = dict(step_size=dt) if solver == "midpoint" else {}
    tols = {} if solver == "midpoint" else dict(rtol=1e-3, atol=1e-6)
    if adjoint:
        # the continuous adjoint also needs the field's parameters (torchcde's README)
        tols["adjoint_params"] = tuple(field.parameters())

    def step():
        idx = torch.randperm(len(y))[:batch]
        X = torchcde.CubicSpline(coeffs[idx], t)
        z0 = initial(X.evaluate(X.interval[0]))
        zT = torchcde.cdeint(
            X=X,
            func=field,
            z0=z0,
            t=X.interval,
            adjoint=adjoint,
            method=solver,
            options=options,
            **tols,
        )[:, -1]
        loss = torch.nn.functional.cross_entropy(readout(zT), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            value = step()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times) * 1e3, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", choices=("midpoint", "dopri5"), default="midpoint")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-steps", type=int, default=3)
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--series", type=int, default=128)
    args = parser.parse_args()
    ts, ys, labels = spiral_data(args.series, 100, drop=0.0, key=0)
    dt = float(ts[1] - ts[0])
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(
        f"solver {args.solver}"
        + (
            f" (step {dt:.4f}, 99 steps)"
            if args.solver == "midpoint"
            else " (rtol 1e-3, atol 1e-6)"
        )
        + f", batch {args.batch} of {args.series} series x 100 points; neuraldiffeq "
        f"{args.steps} steps x {args.repeats} repeats, torchcde {args.torch_steps} steps x "
        f"{args.torch_repeats} repeats"
    )
    pairs = [
        ("Direct()", nde.Direct(), "cdeint(adjoint=False)", False),
        ("Backsolve()", nde.Backsolve(), "cdeint(adjoint=True)", True),
    ]
    if args.solver == "midpoint":  # every step stored, as torch's autograd does
        pairs.insert(1, ("Direct(checkpoints=99)", nde.Direct(checkpoints=99), None, False))
    rows = []
    for ours_name, sensitivity, theirs_name, adjoint in pairs:
        ours, compile_s, loss_ours = bench_neuraldiffeq(
            ts, ys, labels, args.solver, dt, sensitivity, args.batch, args.steps, args.repeats
        )
        print(
            f"neuraldiffeq {ours_name}: {ours:.2f} ms / step (compile {compile_s:.1f} s, "
            f"loss {loss_ours:.3f})",
            flush=True,
        )
        if theirs_name is None:  # the same torchcde run as the row above
            rows.append((ours_name, ours, rows[-1][2], rows[-1][3]))
            continue
        try:
            theirs, loss_theirs = bench_torchcde(
                ts,
                ys,
                labels,
                args.solver,
                dt,
                adjoint,
                args.batch,
                args.torch_steps,
                args.torch_repeats,
            )
            print(
                f"torchcde {theirs_name}: {theirs:.2f} ms / step (loss {loss_theirs:.3f})",
                flush=True,
            )
        except ImportError:
            theirs = None
        rows.append((ours_name, ours, theirs_name, theirs))
    print(
        "\n| gradients | neuraldiffeq ms / step | torchcde ms / step | ratio |\n|---|---|---|---|"
    )
    for ours_name, ours, theirs_name, theirs in rows:
        ratio = f"{theirs / ours:.1f}x faster" if theirs else "n/a"
        shown = f"{theirs:.1f}" if theirs else "not installed"
        print(f"| {ours_name} vs {theirs_name} | {ours:.2f} | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
