"""Stiff forward solves: Robertson's kinetics with our implicit solver vs scipy's BDF and Radau.

ROBER (k1 = 0.04, k2 = 3e7, k3 = 1e4, y0 = (1, 0, 0)) solved from t = 0 to t = 1e5 in float64,
saving the state at t = 1e5 only, at two tolerance pairs (rtol/atol = 1e-6/1e-10 and
1e-8/1e-12):

- ours: `nde.SolveConfig("kvaerno5", rtol=..., atol=...).diffeqsolve(...)`, the whole solve
  compiled once with `jax.jit`, then timed (median of `--repeats` calls);
- the same solve with diffrax's `PIDController(pcoeff=0.3, icoeff=0.4)` (the coefficients
  diffrax's documentation suggests for stiff problems) instead of the plain integral controller
  that `SolveConfig` builds: a diagnosis of the rejected steps, not what a model does today;
- our `Radau5` (Radau IIA, order 5, `neuraldiffeq.solve.dae`) with M = I, i.e. on the ODE
  form, through `nde.SolveConfig` as well;
- our mass-matrix `Radau5` on the DAE form of the same problem (0 = y1 + y2 + y3 - 1 in place
  of y3's equation), for its cost (scipy has no DAE solver to compare with);
- scipy `solve_ivp(method="BDF")` and `method="Radau"`, given the analytic Jacobian (as a fair
  user would), timed the same way, in the same process.

Reported per run: median wall time, steps taken (ours: accepted + rejected steps; scipy: its
`t` array length - 1, i.e. accepted steps, and its RHS / Jacobian / LU counts), the error of the
state at t = 1e5 against a tight Radau reference (rtol 1e-13, atol 1e-17, scaled per species by
its largest value over the span), and the time ratios scipy / ours.

    python benchmarks/stiff.py --repeats 10
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import neuraldiffeq as nde
from neuraldiffeq.solve.dae import Radau5

K1, K2, K3 = 0.04, 3e7, 1e4
Y0 = (1.0, 0.0, 0.0)
T1 = 1e5
#: per-species scale for the error: their largest values over [0, 1e5] (y2 peaks near 3.65e-5)
SCALE = np.array([1.0, 3.65e-5, 1.0])


def rober_jax(t, y, args):
    r1, r2, r3 = K1 * y[0], K2 * y[1] ** 2, K3 * y[1] * y[2]
    return jnp.stack([-r1 + r3, r1 - r2 - r3, r2])


def rober_dae(t, y, args):
    r1, r2, r3 = K1 * y[0], K2 * y[1] ** 2, K3 * y[1] * y[2]
    return jnp.stack([-r1 + r3, r1 - r2 - r3, y[0] + y[1] + y[2] - 1.0])


def rober_np(t, y):
    r1, r2, r3 = K1 * y[0], K2 * y[1] ** 2, K3 * y[1] * y[2]
    return np.array([-r1 + r3, r1 - r2 - r3, r2])


def rober_jac(t, y):
    return np.array(
        [
            [-K1, K3 * y[2], K3 * y[1]],
            [K1, -2 * K2 * y[1] - K3 * y[2], -K3 * y[1]],
            [0.0, 2 * K2 * y[1], 0.0],
        ]
    )


def median_time(fn, repeats):
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def compare(rtol, atol, repeats, error):
    """The rows of one tolerance pair: ours, the PID diagnosis, scipy BDF and Radau."""
    rows, ratios = [], []
    config = nde.SolveConfig(
        "kvaerno5", rtol=rtol, atol=atol, max_steps=100_000, sensitivity=nde.Direct()
    )

    @jax.jit
    def ours(y0, config=config):
        sol = config.diffeqsolve(
            diffrax.ODETerm(rober_jax), 0.0, T1, y0, saveat=diffrax.SaveAt(t1=True)
        )
        return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.result

    # The diagnosis of the rejected steps: the same solve with diffrax's PIDController
    # given the proportional/integral coefficients diffrax's docs suggest for stiff
    # problems (SolveConfig builds the plain integral controller, pcoeff=0, icoeff=1).
    @jax.jit
    def ours_pid(y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rober_jax),
            config.solver,
            0.0,
            T1,
            None,
            y0,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4),
            max_steps=100_000,
        )
        return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.result

    # The DAE form (conservation law in place of y3's equation, M = diag(1, 1, 0)) with our
    # mass-matrix Radau IIA solver: no scipy counterpart, shown for its cost.
    dae_config = config.replace(solver=Radau5((1.0, 1.0, 0.0)))

    @jax.jit
    def ours_dae(y0):
        sol = dae_config.diffeqsolve(
            diffrax.ODETerm(rober_dae), 0.0, T1, y0, saveat=diffrax.SaveAt(t1=True)
        )
        return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.result

    radau_config = config.replace(solver=Radau5())  # M = I: the ODE form

    @jax.jit
    def ours_radau(y0):
        sol = radau_config.diffeqsolve(
            diffrax.ODETerm(rober_jax), 0.0, T1, y0, saveat=diffrax.SaveAt(t1=True)
        )
        return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.result

    y0 = jnp.array(Y0)
    for label, fn in (
        ("ours: kvaerno5 via nde.SolveConfig", ours),
        ("(diagnosis) kvaerno5, PIDController pcoeff 0.3 icoeff 0.4", ours_pid),
        ("ours: radau5 (neuraldiffeq.solve.dae.Radau5, M = I) via nde.SolveConfig", ours_radau),
        ("ours: radau5 on the DAE form (mass matrix diag(1, 1, 0))", ours_dae),
    ):
        compile_start = time.perf_counter()
        jax.block_until_ready(fn(y0))
        compile_s = time.perf_counter() - compile_start
        out, seconds = median_time(lambda fn=fn: jax.block_until_ready(fn(y0)), repeats)
        y, steps, accepted, result = out
        assert result == diffrax.RESULTS.successful, result
        if fn is ours:
            t_ours = seconds
        elif fn is ours_pid:
            t_pid = seconds
        elif fn is ours_radau:
            t_radau = seconds
        rows.append(
            (
                f"{label} (jit; first call {compile_s:.1f} s)",
                rtol,
                atol,
                seconds,
                f"{int(steps)} ({int(accepted)} accepted)",
                "-",
                error(y),
            )
        )
    for method in ("BDF", "Radau"):
        sol, t_sp = median_time(
            lambda method=method: solve_ivp(
                rober_np, (0.0, T1), Y0, method=method, rtol=rtol, atol=atol, jac=rober_jac
            ),
            repeats,
        )
        assert sol.success, sol.message
        rows.append(
            (
                f"scipy {method} (analytic Jacobian)",
                rtol,
                atol,
                t_sp,
                f"{len(sol.t) - 1} accepted",
                f"{sol.nfev} f, {sol.njev} J, {sol.nlu} LU",
                error(sol.y[:, -1]),
            )
        )
        ratios.append((method, rtol, atol, t_sp / t_ours, t_sp / t_pid, t_sp / t_radau))

    return rows, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)  # a script, not a test: global x64 is fine here
    print(f"machine: {platform.machine()}, jax {jax.__version__} on {jax.devices()[0].platform}")

    ref = solve_ivp(rober_np, (0.0, T1), Y0, method="Radau", rtol=1e-13, atol=1e-17, jac=rober_jac)
    y_ref = ref.y[:, -1]
    print(f"reference: scipy Radau rtol 1e-13 atol 1e-17, y(1e5) = {y_ref.tolist()}")

    def error(y):
        return float(np.max(np.abs((np.asarray(y) - y_ref) / SCALE)))

    rows, ratios = [], []
    for rtol, atol in ((1e-6, 1e-10), (1e-8, 1e-12)):
        more_rows, more_ratios = compare(rtol, atol, args.repeats, error)
        rows += more_rows
        ratios += more_ratios

    print(
        "\n## ROBER to t = 1e5, float64, state at t = 1e5 only\n\n"
        "| solver | rtol | atol | ms / solve (median) | steps | evaluations | "
        "scaled max error at 1e5 |\n|---|---|---|---|---|---|---|"
    )
    for name, rtol, atol, seconds, steps, evals, err in rows:
        print(
            f"| {name} | {rtol:.0e} | {atol:.0e} | {seconds * 1e3:.2f} | {steps} | {evals} | "
            f"{err:.1e} |"
        )
    print(
        "\n| scipy method | rtol | atol | scipy time / ours (SolveConfig) | "
        "scipy time / ours (PID 0.3/0.4) | scipy time / ours (radau5) |\n|---|---|---|---|---|---|"
    )
    for method, rtol, atol, ratio, ratio_pid, ratio_radau in ratios:
        print(
            f"| {method} | {rtol:.0e} | {atol:.0e} | {ratio:.1f}x | {ratio_pid:.1f}x | "
            f"{ratio_radau:.1f}x |"
        )


if __name__ == "__main__":
    main()
