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

Per pair: a warm-up (compilation for JAX), then `--repeats` repeats that alternate between the
two contenders (`--steps` neuraldiffeq steps, then `--torch-steps` torchcde steps), so both see
the same load on a shared machine; the table shows the medians of the mean step time.

    python benchmarks/cde.py --solver midpoint --steps 10 --repeats 5 --torch-steps 2
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
from jax_step import training_step  # benchmarks/jax_step.py

import neuraldiffeq as nde
from neuraldiffeq.demos.cde import spiral_data

HIDDEN, WIDTH = 8, 128


def _settings(solver, dt):
    if solver == "midpoint":  # max_steps=None: exactly the steps the interval needs
        return dict(solver="midpoint", dt0=dt, max_steps=None)
    return dict(solver="dopri5", rtol=1e-3, atol=1e-6)


def build_neuraldiffeq(ts, ys, labels, solver, dt, sensitivity, batch):
    """(run(n) -> (seconds per step, loss), compile seconds) for one training-step set-up."""
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

    step = training_step(strategy, prepared, static, optimizer)
    state = dict(params=params, opt_state=optimizer.init(params), key=jax.random.key(1))
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, state["opt_state"], jax.random.key(0)))
    compile_s = time.perf_counter() - t0

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            state["key"], sub = jax.random.split(state["key"])
            state["params"], state["opt_state"], value = step(
                state["params"], state["opt_state"], sub
            )
        value.block_until_ready()
        return (time.perf_counter() - t0) / n, float(value)

    return run, compile_s


def build_torchcde(ts, ys, labels, solver, dt, adjoint, batch):
    """run(n) -> (seconds per step, loss) for torchcde's training step."""
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

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            value = step()
        return (time.perf_counter() - t0) / n, value

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", choices=("midpoint", "dopri5"), default="midpoint")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-steps", type=int, default=3)
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
        f"{args.steps} steps, torchcde {args.torch_steps} steps, per repeat; {args.repeats} "
        "repeats alternating between the two; medians"
    )
    pairs = [
        ("Direct()", nde.Direct(), "cdeint(adjoint=False)", False),
        ("Backsolve()", nde.Backsolve(), "cdeint(adjoint=True)", True),
    ]
    if args.solver == "midpoint":  # every step stored, as torch's autograd does
        pairs.insert(
            1,
            ("Direct(checkpoints=99)", nde.Direct(checkpoints=99), "cdeint(adjoint=False)", False),
        )
    rows = []
    for ours_name, sensitivity, theirs_name, adjoint in pairs:
        ours, compile_s = build_neuraldiffeq(
            ts, ys, labels, args.solver, dt, sensitivity, args.batch
        )
        try:
            theirs = build_torchcde(ts, ys, labels, args.solver, dt, adjoint, args.batch)
        except ImportError:
            theirs = None
        # repeats alternate between the two, so both see the same load on a shared machine
        ours_t, theirs_t = [], []
        for _ in range(args.repeats):
            seconds, loss_ours = ours(args.steps)
            ours_t.append(seconds * 1e3)
            if theirs is not None:
                seconds, loss_theirs = theirs(args.torch_steps)
                theirs_t.append(seconds * 1e3)
        ours_ms = statistics.median(ours_t)
        theirs_ms = statistics.median(theirs_t) if theirs is not None else None
        print(
            f"neuraldiffeq {ours_name}: {ours_ms:.2f} ms / step (compile {compile_s:.1f} s, "
            f"loss {loss_ours:.3f}); torchcde {theirs_name}: "
            + (f"{theirs_ms:.1f} ms / step (loss {loss_theirs:.3f})" if theirs else "n/a"),
            flush=True,
        )
        rows.append((ours_name, ours_ms, theirs_name, theirs_ms))
    print(
        "\n| gradients | neuraldiffeq ms / step | torchcde ms / step | ratio |\n|---|---|---|---|"
    )
    for ours_name, ours_ms, theirs_name, theirs_ms in rows:
        ratio = f"{theirs_ms / ours_ms:.1f}x faster" if theirs_ms else "n/a"
        shown = f"{theirs_ms:.1f}" if theirs_ms else "not installed"
        print(f"| {ours_name} vs {theirs_name} | {ours_ms:.2f} | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
