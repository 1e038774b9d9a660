"""Seconds per loss-and-gradient of the stiff-network demo: BDF (sparse Jacobian) against
diffrax's Kvaerno5 (dense Jacobian and LU), by size.

The demo's problem (`neuraldiffeq.demos.stiff_network`: Robertson's kinetics in `cells`
compartments, 3·cells species, one rate law a network), its solve settings (rtol 1e-6,
atol 1e-10, `nde.Direct()`), its loss. For each size and solver: the forward solve's steps,
the compile time, and the median wall and CPU seconds of one compiled loss-and-gradient
evaluation and of one loss evaluation. On a shared machine run it under `taskset -c N`: XLA's
CPU thread pool then cannot wait on a core that another job holds (without it, wall times on a
busy 2-core machine come out 10-50x the CPU time).

    taskset -c 1 python benchmarks/stiff_network_gradient.py --cells 40 60 --solvers bdf kvaerno5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(fn, repeats):
    fn()  # compiled by the first call
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[40, 60])
    parser.add_argument("--solvers", nargs="+", default=["bdf", "kvaerno5"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from neuraldiffeq.demos import stiff_network as sn

    for cells in args.cells:
        data, field, strategy = sn.problem(cells)
        for name in args.solvers:
            print(json.dumps(one(sn, data, field, strategy, name, args.repeats)), flush=True)


def one(sn, data, field, strategy, name: str, repeats: int) -> dict:
    import equinox as eqx
    import jax

    import neuraldiffeq as nde

    settings = dict(rtol=sn.RTOL, atol=sn.ATOL, max_steps=4000, sensitivity=nde.Direct())
    extra = {"jacobian": "sparse"} if name == "bdf" else {}
    model = nde.NeuralODE(field, config=nde.SolveConfig(name, **extra, **settings))
    model = model.resolve_solver(data.ts, data.ys[0])
    stats = eqx.filter_jit(lambda m: m.solve(data.ts, data.ys[0]).stats)(model)
    prepared = strategy.prepare(model, data)
    loss = eqx.filter_jit(lambda m: strategy.loss(m, prepared, None))
    grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: strategy.loss(m, prepared, None)))
    start = time.perf_counter()
    jax.block_until_ready(grad(model))
    compile_s = time.perf_counter() - start
    grad_wall, grad_cpu = measure(lambda: jax.block_until_ready(grad(model)), repeats)
    loss_wall, loss_cpu = measure(lambda: jax.block_until_ready(loss(model)), repeats)
    return {
        "cells": data.ys.shape[1] // 3,
        "species": int(data.ys.shape[1]),
        "solver": name,
        "steps": int(stats["num_steps"]),
        "rejected": int(stats["num_rejected_steps"]),
        "grad_compile_s": compile_s,
        "grad_s": grad_wall,
        "grad_cpu_s": grad_cpu,
        "loss_s": loss_wall,
        "loss_cpu_s": loss_cpu,
    }


if __name__ == "__main__":
    main()
