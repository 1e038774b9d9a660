"""Per-step training time on the DiffEqFlux spiral, side by side in one process.

Problem: 30 points on [0, 1.5], MLP 2 -> 50 -> 2 (tanh) applied to u**3, Adam(0.05),
Tsit5 / dopri5 at rtol 1e-3, atol 1e-6, loss = sum of squares. Contenders:

- neuraldiffeq `fit` with the Direct (default steps_per_call "auto", 1 and 10), Backsolve,
  Interpolating and Quadrature sensitivities;
- a hand-written raw diffrax loop (eqx.filter_jit step, same solver and tolerances);
- torchdiffeq `odeint` and `odeint_adjoint` (dopri5), if the `bench` extra is installed.

Every contender runs `--steps` steps after a warm-up; the table shows the median over `--repeats`,
taken round robin (one run of each contender, then the next round).

    python benchmarks/spiral.py --steps 200 --repeats 5
    python benchmarks/spiral.py --steps 300 --repeats 3 --only default steps_per_call=1 --no-torch
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde


def make_mlp():
    return eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))


def cube(y):
    return y**3


def bench_neuraldiffeq(data, sensitivity, steps, steps_per_call=1):
    model = nde.NeuralODE(
        nde.autonomous(make_mlp(), cube), "tsit5", rtol=1e-3, atol=1e-6, sensitivity=sensitivity
    )
    first = 1 if steps_per_call == "auto" else steps_per_call  # steps in the first call
    t0 = time.perf_counter()
    result = nde.fit(
        model,
        data,
        nde.Trajectory(),
        optimizer=optax.adam(0.05),
        steps=steps + first,
        steps_per_call=steps_per_call,
        progress=False,
    )
    total = time.perf_counter() - t0
    compile_s = result.stages[0].compile_seconds
    # time of the steps after the first compiled call
    run_s = result.times[-1] - result.times[first - 1]
    return run_s / steps * 1e3, compile_s, total


class _Field(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return self.mlp(y**3)


def bench_raw_diffrax(data, steps):
    field = _Field(make_mlp())
    opt = optax.adam(0.05)
    state = opt.init(eqx.filter(field, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(field, state, ts, ys):
        def loss(field):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                diffrax.Tsit5(),
                ts[0],
                ts[-1],
                None,
                ys[0],
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            )
            return jnp.sum((sol.ys - ys) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(field)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(field, updates), state, value

    t0 = time.perf_counter()
    field, state, value = step(field, state, data.ts, data.ys)
    float(value)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        field, state, value = step(field, state, data.ts, data.ys)
        float(value)  # as a training loop that logs its loss does
    return (time.perf_counter() - t0) / steps * 1e3, compile_s, None


def bench_torchdiffeq(data, adjoint, steps):
    import torch
    import torchdiffeq

    torch.manual_seed(0)
    torch.set_num_threads(2)

    class Func(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)
            )

        def forward(self, t, y):
            return self.net(y**3)

    func = Func()
    ts = torch.tensor(np.asarray(data.ts), dtype=torch.float32)
    ys = torch.tensor(np.asarray(data.ys), dtype=torch.float32)
    odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    opt = torch.optim.Adam(func.parameters(), lr=0.05)

    def step():
        opt.zero_grad()
        pred = odeint(func, ys[0], ts, rtol=1e-3, atol=1e-6, method="dopri5")
        loss = ((pred - ys) ** 2).sum()
        loss.backward()
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    n = max(steps // 4, 10)  # torch is slow; fewer steps give the same per-step figure
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1e3, first, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", nargs="*", help="run only the contenders whose name contains one of these"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    args = parser.parse_args()
    data = nde.datasets.spiral()

    contenders = {
        "raw diffrax (Tsit5, filter_jit loop)": lambda: bench_raw_diffrax(data, args.steps),
        "neuraldiffeq fit, default (Direct, steps_per_call='auto')": lambda: bench_neuraldiffeq(
            data, nde.Direct(), args.steps, "auto"
        ),
        "neuraldiffeq fit, Direct, steps_per_call=1": lambda: bench_neuraldiffeq(
            data, nde.Direct(), args.steps
        ),
        "neuraldiffeq fit, Direct, steps_per_call=10": lambda: bench_neuraldiffeq(
            data, nde.Direct(), args.steps, 10
        ),
        "neuraldiffeq fit, Backsolve": lambda: bench_neuraldiffeq(
            data, nde.Backsolve(), args.steps
        ),
        "neuraldiffeq fit, Interpolating": lambda: bench_neuraldiffeq(
            data, nde.Interpolating(), args.steps
        ),
        "neuraldiffeq fit, Quadrature": lambda: bench_neuraldiffeq(
            data, nde.Quadrature(), args.steps
        ),
    }
    try:
        if args.no_torch:
            raise ImportError
        import torchdiffeq  # noqa: F401

        contenders["torchdiffeq odeint (dopri5)"] = lambda: bench_torchdiffeq(
            data, False, args.steps
        )
        contenders["torchdiffeq odeint_adjoint (dopri5)"] = lambda: bench_torchdiffeq(
            data, True, args.steps
        )
    except ImportError:
        print("torchdiffeq not installed (pip install '.[bench]'): skipping the PyTorch peers")

    if args.only:
        raw_name = "raw diffrax (Tsit5, filter_jit loop)"
        contenders = {
            k: v for k, v in contenders.items() if k == raw_name or any(w in k for w in args.only)
        }
    # round robin (repeat r of every contender, then repeat r + 1): a load that drifts over
    # minutes on a shared machine hits every contender alike
    runs = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            runs[name].append(run())
            print(f"  {name}: {runs[name][-1][0]:.3f} ms/step", flush=True)
    results = {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in runs.items()
    }

    raw = results["raw diffrax (Tsit5, filter_jit loop)"][0]
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"diffrax {diffrax.__version__}, median of {args.repeats} repeats, {args.steps} steps"
    )
    print("| contender | ms/step | vs raw diffrax | first call / compile (s) |")
    print("|---|---|---|---|")
    for name, (ms, first) in results.items():
        print(f"| {name} | {ms:.3f} | {ms / raw:.2f}x | {first:.2f} |")


if __name__ == "__main__":
    main()
