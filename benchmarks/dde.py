"""`nde.solve_dde` accuracy and speed: the issue-#4 targets.

1. y'(t) = −y(t − 1), history 1, t ∈ [0, 10]: global error against the exact piecewise-polynomial
   solution at 1001 points, adaptive Tsit5 at rtol = atol = 1e-8 (target ≤ 1e-6); and the observed
   convergence order of Tsit5 with constant steps h = 1/2 … 1/32 that divide the lag (target ≥ 4).
2. Mackey–Glass y' = β·y(t−τ)/(1 + y(t−τ)ⁿ) − γ·y, β = 0.2, γ = 0.1, n = 10, τ = 17, history 0.5,
   t ∈ [0, 500]: the solution at rtol 1e-6 (atol 1e-6) against a reference at rtol 1e-10
   (atol 1e-10), max error over [0, 100] (target ≤ 1e-4) and over [0, 500]; wall time per solve
   after compilation (median of `--repeats`).

Float64 throughout. No Python library solves DDEs to compare against (diffrax issues #406, #721);
the exact solution and a tight-tolerance run are the references.

    python benchmarks/dde.py --repeats 20
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import neuraldiffeq as nde


def exact_negative_feedback(t: float) -> float:
    n = int(np.floor(t)) + 1
    return sum((-1) ** k * (t - (k - 1)) ** k / math.factorial(k) for k in range(n + 1))


def negative_feedback(t, y, y_lagged, args):
    return -y_lagged[0]


def mackey_glass(t, y, y_lagged, args):
    lagged = y_lagged[0]
    return 0.2 * lagged / (1.0 + lagged**10) - 0.1 * y


def timed(fn, repeats):
    out = fn()
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)  # a script, not a test: global x64 is fine here
    print(f"machine: {platform.machine()}, jax {jax.__version__} on {jax.devices()[0].platform}")

    # 1a. adaptive accuracy
    ts = jnp.linspace(0.0, 10.0, 1001)
    exact = np.array([exact_negative_feedback(float(t)) for t in ts])
    solve = jax.jit(
        lambda: nde.solve_dde(
            negative_feedback, jnp.ones(1), [1.0], 0.0, 10.0, ts, rtol=1e-8, atol=1e-8
        )
    )
    sol, seconds = timed(solve, args.repeats)
    err = float(np.max(np.abs(np.asarray(sol.ys[:, 0]) - exact)))
    print("\n## y' = -y(t-1), history 1, t in [0, 10]\n")
    print("| run | max error vs exact | steps (accepted) | ms / solve |\n|---|---|---|---|")
    print(
        f"| Tsit5 adaptive, rtol = atol = 1e-8 | {err:.2e} | {int(sol.num_steps)} "
        f"({int(sol.num_accepted_steps)}) | {seconds * 1e3:.2f} |"
    )

    # 1b. convergence order with constant steps dividing the lag
    hs = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
    errors = []
    for h in hs:
        fixed = jax.jit(
            lambda h=h: nde.solve_dde(
                negative_feedback,
                jnp.ones(1),
                [1.0],
                0.0,
                10.0,
                ts,
                dt0=h,
                max_steps=400,
            )
        )
        out = fixed()
        errors.append(float(np.max(np.abs(np.asarray(out.ys[:, 0]) - exact))))
    print("\n| h (Tsit5, constant steps) | max error | observed order |\n|---|---|---|")
    for i, (h, e) in enumerate(zip(hs, errors, strict=True)):
        order = "" if i == 0 else f"{math.log2(errors[i - 1] / e):.2f}"
        print(f"| 1/{int(round(1 / h))} | {e:.2e} | {order} |")

    # 2. Mackey-Glass
    ts = jnp.linspace(0.0, 500.0, 5001)

    def mg(rtol):
        return jax.jit(
            lambda: nde.solve_dde(
                mackey_glass,
                jnp.array([0.5]),
                [17.0],
                0.0,
                500.0,
                ts,
                rtol=rtol,
                atol=rtol,
                max_steps=40_000,
            )
        )

    reference = mg(1e-10)()
    sol, seconds = timed(mg(1e-6), args.repeats)
    diff = np.abs(np.asarray(sol.ys[:, 0]) - np.asarray(reference.ys[:, 0]))
    first = np.asarray(ts) <= 100.0
    print("\n## Mackey-Glass (beta 0.2, gamma 0.1, n 10, tau 17, history 0.5, t in [0, 500])\n")
    print(
        "| run | max error on [0, 100] | max error on [0, 500] | steps (accepted) | "
        "ms / solve (median) |\n|---|---|---|---|---|"
    )
    print(
        f"| Tsit5 rtol = atol = 1e-6 vs rtol 1e-10 reference ({int(reference.num_steps)} steps)"
        f" | {diff[first].max():.2e} | {diff.max():.2e} | {int(sol.num_steps)} "
        f"({int(sol.num_accepted_steps)}) | {seconds * 1e3:.2f} |"
    )


if __name__ == "__main__":
    main()
