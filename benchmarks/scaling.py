"""Steps per second of a data-parallel fit (`nde.fit(..., devices=n)`) at 1, 2 and 4 devices.

Problem: 128 spiral-like series (the DiffEqFlux spiral, scaled), 30 points on [0, 1.5], MLP
2 -> 32 -> 2 (tanh) on u**3, Tsit5 at rtol 1e-3, atol 1e-6, `nde.Trajectory()` on the whole
batch, Adam(0.01). Each device count runs in its own process, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=n` (JAX fixes its device count at import), so
on a CPU the n virtual devices share the same cores: this measures the overhead of splitting
the batch (the sharded program plus its all-reduce), not a speed-up. On an accelerator machine
with n real devices, the same script measures the scaling.

Second problem (`--problem ffjord`): FFJORD's toy flow (ConcatSquash 64-64-64 tanh, t1 = 0.5,
Hutchinson trace, dopri5 at rtol = atol = 1e-4, fixed 2000-step cap) trained by
`nde.MaximumLikelihood(batch_size=1024)` on 8 Gaussians, the 1024 samples of each step sharded
over the devices.

One fit of `1 + 3 * --steps` steps per device count; the first step (compilation) is dropped,
the rest are cut into 3 blocks, and the table shows the median over the blocks of steps/s.

    python benchmarks/scaling.py --steps 20 --results benchmarks/results/DATE-scaling.md
    python benchmarks/scaling.py --problem ffjord --steps 5 --results ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys
import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
import neuraldiffeq as nde

n, steps, problem = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
assert jax.device_count() >= n, (jax.device_count(), n)
if problem == "trajectory":
    spiral = nde.datasets.spiral()
    scales = 1.0 + 0.5 * jnp.arange(128) / 128
    data = nde.TimeSeries(spiral.ts, spiral.ys[None] * scales[:, None, None])
    mlp = eqx.nn.MLP(2, 2, 32, 1, activation=jnp.tanh, key=jax.random.key(0))
    model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3), "tsit5", rtol=1e-3,
                          atol=1e-6)
    strategy = nde.Trajectory()
else:
    data = nde.datasets.toy_2d("8gaussians", 100_000, jax.random.key(1))
    field = nde.ConcatSquashMLP(2, (64, 64, 64), jnp.tanh, key=jax.random.key(0))
    model = nde.FFJORD(field, t1=0.5, trace="hutchinson", solver="dopri5", rtol=1e-4, atol=1e-4,
                       max_steps=2000)
    strategy = nde.MaximumLikelihood(batch_size=1024)
result = nde.fit(model, data, strategy, optimizer=optax.adam(1e-3), steps=1 + 3 * steps,
                 progress=False, devices=n, key=jax.random.key(0))
times = np.asarray(result.times)
rates = [steps / (times[1 + (b + 1) * steps - 1] - times[b * steps]) for b in range(3)]
print("RESULT " + json.dumps({"rates": rates, "compile": result.stages[0].compile_seconds,
                              "loss": float(result.losses[-1])}))
"""


TITLES = {
    "trajectory": "128-series trajectory fit",
    "ffjord": "FFJORD toy flow, batch 1024",
}


def run(n: int, steps: int, problem: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(here, "..", "src"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(steps), problem],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block (3 blocks)")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--problem", choices=["trajectory", "ffjord"], default="trajectory")
    parser.add_argument("--results", default=None, help="write a Markdown result file here")
    args = parser.parse_args()
    rows = []
    for n in args.devices:
        out = run(n, args.steps, args.problem)
        rate = statistics.median(out["rates"])
        rows.append((n, rate, out["rates"], out["compile"], out["loss"]))
        print(
            f"{n} device(s): {rate:.2f} steps/s (blocks {out['rates']}), compile "
            f"{out['compile']:.1f} s",
            flush=True,
        )
    base = rows[0][1]
    table = [
        "| devices | steps/s (median of 3 blocks) | blocks | vs first | compile s | loss |",
        "|---|---|---|---|---|---|",
    ]
    for n, rate, rates, comp, loss in rows:
        blocks = ", ".join(f"{r:.2f}" for r in rates)
        table.append(
            f"| {n} | {rate:.2f} | {blocks} | {rate / base:.2f}x | {comp:.1f} | {loss:.6g} |"
        )
    print("\n".join(table))
    if args.results:
        import jax

        text = [
            f"# Data-parallel scaling (issue #18): {TITLES[args.problem]}",
            "",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            f"Command: `python {' '.join(sys.argv)}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"({platform.platform()}), jax {jax.__version__}, devices: {jax.devices()} "
            f"(virtual CPU devices share the cores); load average at the end "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            "",
            *table,
            "",
            "",
        ]
        with open(args.results, "w") as f:
            f.write("\n".join(text))


if __name__ == "__main__":
    main()
