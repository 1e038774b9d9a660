"""Cost of one fit step against the batch on ONE device, for the scaling cost model.

Measures the step time T(b) of the two problems of `benchmarks/scaling.py` at several batch
sizes b on one device, fits T(b) = t_fix + c * b (t_fix: the per-step cost that does not shrink
with the batch, e.g. solver-step kernel launches and the optimizer; c: the time per example)
through the two largest (where the device is saturated), and from that and a ring all-reduce
of the parameter gradient computes the per-device batch at which n devices would be >= 90%
efficient (docs/howto/scaling.md, "What it costs"). Meant for an accelerator; on a CPU it runs
but says little (its "devices" share the cores).

Problems: the 128-series trajectory fit (MLP 2 -> 32 -> 2 on u**3, Tsit5 rtol 1e-3) with b
series, and the FFJORD toy flow of the `ffjord` demo (ConcatSquash 64-64-64, dopri5 rtol 1e-4,
Hutchinson trace, untrained) on b samples. Each batch size: 1 + --steps steps, the first
(compilation) dropped, median of the rest.

    python benchmarks/step_cost.py --results benchmarks/results/DATE-step-cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import neuraldiffeq as nde  # noqa: E402
from neuraldiffeq.demos.ffjord import build_flow  # noqa: E402


def n_params(model) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))


def trajectory(b: int):
    spiral = nde.datasets.spiral()
    scales = 1.0 + 0.5 * jnp.arange(b) / b
    batch = nde.TimeSeries(spiral.ts, spiral.ys[None] * scales[:, None, None])
    mlp = eqx.nn.MLP(2, 2, 32, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(
        nde.autonomous(mlp, input_fn=lambda y: y**3), "tsit5", rtol=1e-3, atol=1e-6
    )
    return model, batch, nde.Trajectory()


def ffjord(b: int):
    samples = nde.datasets.toy_2d("8gaussians", b, jax.random.key(1))
    return build_flow(0, "hutchinson", 1e-4), samples, nde.MaximumLikelihood()


def step_ms(problem, b: int, steps: int) -> tuple[float, int]:
    model, data, strategy = problem(b)
    result = nde.fit(
        model, data, strategy, optimizer=optax.adam(1e-3), steps=1 + steps, progress=False
    )
    dt = np.diff(np.asarray(result.times))  # step k's wall time (compilation in step 0)
    return 1e3 * statistics.median(dt), n_params(model)


def ring_allreduce_s(n: int, params: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce of `params` float32: 2(n-1)/n of the bytes over the slowest link, and
    2(n-1) latency-bound hops."""
    return 2 * (n - 1) / n * 4 * params / bandwidth + 2 * (n - 1) * latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--traj-batches", type=int, nargs="+", default=[256, 4096, 16384, 65536, 262144]
    )
    parser.add_argument(
        "--ffjord-batches", type=int, nargs="+", default=[1024, 16384, 65536, 262144]
    )
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    # all-reduce time of p float32 on n GPUs: a ring over NVLink (150 GB/s, 5 us per hop) in
    # one node of 8; for 64 = 8 nodes x 8, hierarchical: that ring, then a ring over the 8
    # nodes on InfiniBand (25 GB/s, 10 us per hop)
    links = {
        8: lambda p: ring_allreduce_s(8, p, 150e9, 5e-6),
        64: lambda p: ring_allreduce_s(8, p, 150e9, 5e-6) + ring_allreduce_s(8, p, 25e9, 10e-6),
    }
    rows, fits = [], {}
    for name, problem, batches in (
        ("trajectory", trajectory, args.traj_batches),
        ("ffjord", ffjord, args.ffjord_batches),
    ):
        times = []
        for b in batches:
            ms, p = step_ms(problem, b, args.steps)
            times.append(ms)
            rows.append((name, b, ms))
            print(f"{name} batch {b}: {ms:.3f} ms/step ({p} parameters)", flush=True)
        # from the two largest batches: below them the device is not saturated (T grows less)
        (b1, b2), (t1, t2) = batches[-2:], np.asarray(times[-2:]) / 1e3
        c = (t2 - t1) / (b2 - b1)
        t_fix = t1 - c * b1
        fits[name] = {"params": p, "c_us": c * 1e6, "t_fix_ms": t_fix * 1e3}
        for n, allreduce in links.items():
            t_ar = allreduce(p)
            b90 = ((9 - 10 / n) * max(t_fix, 0.0) + 9 * t_ar) / c if c > 0 else float("inf")
            fits[name][f"t_ar_{n}_us"] = t_ar * 1e6
            fits[name][f"b90_{n}"] = b90
    print(json.dumps(fits, indent=1))
    if args.results:
        lines = [
            "# Step cost against the batch on one device (issue #18 cost model)",
            "",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            f"Command: `python {' '.join(sys.argv)}`  ",
            f"Machine: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
            f"{platform.platform()}, jax {jax.__version__}",
            "",
            "| problem | batch | ms/step (median) |",
            "|---|---|---|",
            *[f"| {name} | {b} | {ms:.3f} |" for name, b, ms in rows],
            "",
            "Fit T(b) = t_fix + c b; all-reduce t_ar: 8 GPUs a ring on NVLink (150 GB/s, 5 us"
            " per hop), 64 GPUs that plus a ring over 8 nodes on InfiniBand (25 GB/s, 10 us);"
            " per-device batch for 90% efficiency"
            " b90 = ((9 - 10/n) t_fix + 9 t_ar) / c:",
            "",
            "```json",
            json.dumps(fits, indent=1),
            "```",
            "",
        ]
        with open(args.results, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
