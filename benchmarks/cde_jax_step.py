"""The JAX side of benchmarks/cde.py alone: ms per neural CDE training step, wall and CPU time.

Same step as `benchmarks/cde.py` (spirals, hidden 8, field MLP 8 -> 128 -> 8·3, batch 32 of
128 series x 100 points, one Adam update), without torchcde, for before/after comparisons on a
busy machine: CPU time (all threads of this process) moves far less with the load than wall
time. Compare two versions of the library in the same period by alternating runs, e.g.

    git archive 9d7057f src | tar -x -C /tmp/base
    for v in /tmp/base/src src; do PYTHONPATH=$v python benchmarks/cde_jax_step.py; done

`--options` compiles with `nde.compiler_options()` (the YNNPACK dots-only setting).
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import optax
from jax_step import training_step  # benchmarks/jax_step.py: the step benchmarks/cde.py times

import neuraldiffeq as nde
from neuraldiffeq.demos.cde import spiral_data

SENSITIVITIES = {
    "direct": lambda: nde.Direct(),
    "direct99": lambda: nde.Direct(checkpoints=99),
    "backsolve": lambda: nde.Backsolve(),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", choices=tuple(SENSITIVITIES), default="direct")
    parser.add_argument("--solver", choices=("midpoint", "dopri5"), default="midpoint")
    parser.add_argument("--options", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    ts, ys, labels = spiral_data(128, 100, drop=0.0, key=0)
    dt = float(ts[1] - ts[0])
    settings = (
        dict(solver="midpoint", dt0=dt, max_steps=None)
        if args.solver == "midpoint"
        else dict(solver="dopri5", rtol=1e-3, atol=1e-6)
    )
    model = nde.NeuralCDE(
        2,
        8,
        2,
        width_size=128,
        depth=1,
        key=jax.random.key(0),
        sensitivity=SENSITIVITIES[args.sensitivity](),
        **settings,
    )
    strategy = nde.Classification(batch_size=args.batch)
    prepared = strategy.prepare(model, ((ts, ys), labels))
    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    options = nde.compiler_options() if args.options else None
    step = training_step(strategy, prepared, static, optimizer, options)
    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, jax.random.key(0)))
    compile_s = time.perf_counter() - t0
    key = jax.random.key(1)
    wall, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            key, sub = jax.random.split(key)
            params, opt_state, value = step(params, opt_state, sub)
        value.block_until_ready()
        wall.append((time.perf_counter() - t0) / args.steps * 1e3)
        cpu.append((time.process_time() - c0) / args.steps * 1e3)
    print(
        f"{args.solver} {args.sensitivity} options={args.options} batch={args.batch}: wall "
        f"median {statistics.median(wall):.2f} ms/step (min {min(wall):.2f}), CPU "
        f"{statistics.median(cpu):.2f} ms/step; compile {compile_s:.1f} s, loss {float(value):.4f}"
    )


if __name__ == "__main__":
    main()
