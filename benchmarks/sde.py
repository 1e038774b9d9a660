"""Neural SDE training step: neuraldiffeq (JAX/diffrax) vs torchsde, side by side in one process.

Problem (DiffEqFlux's neural SDE tutorial): u0 = [2, 0], t ∈ [0, 1] saved at 30 points; drift an
MLP 2 -> 50 -> 2 (tanh) on u**3, diagonal diffusion a linear layer 2 -> 2; Itô Euler–Maruyama with
a constant step dt; `--paths` paths per step; loss = squared error of the mean and variance over
paths against fixed targets (moment matching); one Adam(0.025) update per step; gradients by
backpropagating through the solver (neuraldiffeq `Direct()`, torchsde `sdeint`).

Per contender: `--steps` steps after a warm-up (compilation for JAX), timed per step; the table
shows the median over `--repeats` repeats of the mean step time.

    python benchmarks/sde.py --steps 20 --repeats 5 --torch-steps 3 --torch-repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax_step import training_step  # benchmarks/jax_step.py
from one_thread import add_threads_option, apply_threads

import neuraldiffeq as nde
from neuraldiffeq.demos.sde import U0, build_model, true_moments

#: median CPU time (all threads of the process) per step, by contender: steadier than wall
#: time on a shared machine
CPU_MS: dict[str, float] = {}


def bench_neuraldiffeq(data, paths, dt, steps, repeats):
    model = build_model(0, dt0=dt, solver="euler")
    strategy = nde.MomentMatching(n_paths=paths)
    prepared = strategy.prepare(model, data)
    optimizer = optax.adam(0.025)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    step = training_step(strategy, prepared, static, optimizer)
    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    params, opt_state, value = step(params, opt_state, jax.random.key(0))
    value.block_until_ready()
    compile_s = time.perf_counter() - t0
    times, cpu = [], []
    key = jax.random.key(1)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            key, sub = jax.random.split(key)
            params, opt_state, value = step(params, opt_state, sub)
        value.block_until_ready()
        times.append((time.perf_counter() - t0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    CPU_MS["neuraldiffeq (jitted step)"] = statistics.median(cpu) * 1e3
    return statistics.median(times) * 1e3, compile_s, float(value)


def bench_fit(data, paths, dt, steps):
    """The same step through `nde.fit` (what a user calls), per step after the first call."""
    model = build_model(0, dt0=dt, solver="euler")
    result = nde.fit(
        model,
        data,
        nde.MomentMatching(n_paths=paths),
        optimizer=optax.adam(0.025),
        steps=steps + 1,
        progress=False,
    )
    return (result.times[-1] - result.times[0]) / steps * 1e3


def bench_torchsde(data, paths, dt, steps, repeats):
    import torch
    import torchsde

    torch.manual_seed(0)

    class SDE(torch.nn.Module):
        noise_type = "diagonal"
        sde_type = "ito"

        def __init__(self):
            super().__init__()
            self.drift_net = torch.nn.Sequential(
                torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)
            )
            self.diffusion_net = torch.nn.Linear(2, 2)
            with torch.no_grad():
                self.diffusion_net.weight.mul_(0.1)

        def f(self, t, y):
            return self.drift_net(y**3)

        def g(self, t, y):
            return self.diffusion_net(y)

    sde = SDE()
    optimizer = torch.optim.Adam(sde.parameters(), lr=0.025)
    ts = torch.tensor(np.asarray(data["ts"]), dtype=torch.float32)
    mean_target = torch.tensor(np.asarray(data["mean"]), dtype=torch.float32)
    var_target = torch.tensor(np.asarray(data["var"]), dtype=torch.float32)
    y0 = torch.tensor(np.asarray(U0), dtype=torch.float32).repeat(paths, 1)

    def step():
        optimizer.zero_grad()
        ys = torchsde.sdeint(sde, y0, ts, method="euler", dt=dt)  # (T, paths, 2)
        mean, var = ys.mean(1), ys.var(1, unbiased=False)
        loss = ((mean - mean_target) ** 2).sum() + ((var - var_target) ** 2).sum()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            value = step()
        times.append((time.perf_counter() - t0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    CPU_MS["torchsde sdeint (euler)"] = statistics.median(cpu) * 1e3
    return statistics.median(times) * 1e3, value


def _torch_threads():
    import torch

    return torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--torch-steps",
        type=int,
        default=3,
        help="torchsde steps per repeat (its steps take seconds here)",
    )
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--paths", type=int, default=100)
    parser.add_argument("--dt", type=float, default=0.01)
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args, parser)
    data = true_moments(10_000, jax.random.key(1), jnp.linspace(0.0, 1.0, 30))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(
        f"paths {args.paths}, dt {args.dt} ({int(round(1 / args.dt))} Euler steps); neuraldiffeq "
        f"{args.steps} steps x {args.repeats} repeats, torchsde {args.torch_steps} steps x "
        f"{args.torch_repeats} repeats"
    )
    ours, compile_s, loss_ours = bench_neuraldiffeq(
        data, args.paths, args.dt, args.steps, args.repeats
    )
    print(f"neuraldiffeq jitted step: {ours:.2f} ms (compile {compile_s:.1f} s)", flush=True)
    fit_ms = bench_fit(data, args.paths, args.dt, args.steps)
    print(f"neuraldiffeq nde.fit: {fit_ms:.2f} ms / step", flush=True)
    rows = [("neuraldiffeq (jitted step)", ours), ("neuraldiffeq nde.fit", fit_ms)]
    try:
        theirs, loss_theirs = bench_torchsde(
            data, args.paths, args.dt, args.torch_steps, args.torch_repeats
        )
        print(f"torchsde: {theirs:.2f} ms / step (torch threads {_torch_threads()})", flush=True)
        rows.append(("torchsde sdeint (euler)", theirs))
    except ImportError:
        theirs = None
    print("\n| contender | median ms / training step | vs torchsde |\n|---|---|---|")
    for name, ms in rows:
        ratio = f"{theirs / ms:.1f}x faster" if theirs else "n/a"
        print(f"| {name} | {ms:.2f} | {ratio if 'torchsde' not in name else '1.0x'} |")
    print("\nmedian CPU ms / step (all threads of the process):")
    for name, cpu_ms in CPU_MS.items():
        print(f"- {name}: {cpu_ms:.2f}")
    print(
        f"\nJAX compile time of the step: {compile_s:.1f} s; final losses: ours {loss_ours:.3g}"
        + (f", torchsde {loss_theirs:.3g}" if theirs else "")
    )


if __name__ == "__main__":
    main()
