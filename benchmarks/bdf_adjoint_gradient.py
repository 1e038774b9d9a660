"""BDF's continuous adjoint (`nde.Quadrature`) against the discrete one (`nde.Direct`) and
forward mode (`nde.Forward`) on Robertson × ngroups: cost in forward solves, agreement, memory.

The problem of `benchmarks/robertson_ngroups.py` (pydiffsol's: Robertson's kinetics duplicated
`ngroups` times, t_final = 1e10, float64) at its gradient tolerances (rtol 1e-10, atol 1e-14;
others by `--rtol`, `--atol`), the block pattern given, the linear solve by size (SuperLU
above 200 states). L = Σ x_final +
1e4·Σ y_final, differentiated with respect to log(k1, k2, k3). For each ngroups and
sensitivity: the median seconds (wall and CPU) of one compiled loss-and-gradient after a
warm-up, over the median seconds of one compiled forward solve (no derivatives); the largest
relative deviation of each gradient from Direct's, and at ngroups ≤ 10 from float64 finite
differences of a high-precision scipy solve (`robertson_ngroups.reference_gradient`).

`--memory`: the peak resident set of a fresh process that compiles and runs one gradient per
sensitivity (the child's VmHWM), with the import's own high-water mark, so that the solve's
share is the difference. Quadrature keeps the forward solve's dense output: its buffers hold
`max_steps` steps of 6 state-sized vectors, so `--max-steps` sets its memory.

    taskset -c 1 python benchmarks/bdf_adjoint_gradient.py --ngroups 10 1000 --repeats 3
    taskset -c 1 python benchmarks/bdf_adjoint_gradient.py --rtol 1e-8 --atol 1e-8 \
        --adjoint-atol 1e-8
    taskset -c 1 python benchmarks/bdf_adjoint_gradient.py --ngroups 1000 --memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import robertson_ngroups as rn  # noqa: E402

SENSITIVITIES = ("quadrature", "direct", "forward")


def problem(ng: int, sensitivity: str, max_steps: int, adjoint_atol: float | None = None):
    """(loss-and-gradient, forward solve, y0, log k), both jitted."""
    import diffrax
    import jax
    import jax.numpy as jnp

    import neuraldiffeq as nde
    from neuraldiffeq.solve.jacobian import SparsityPattern

    field, _ = rn.ours(ng)  # the field only (its solve config is not used here)
    pattern = SparsityPattern(*rn.block_pattern(ng), 3 * ng)
    chosen = {
        "quadrature": nde.Quadrature(atol=adjoint_atol),
        "direct": nde.Direct(),
        "forward": nde.Forward(),
    }

    def config(s):
        return nde.SolveConfig("bdf", rtol=rn.GRAD_RTOL, atol=rn.GRAD_ATOL, max_steps=max_steps,
                               jacobian=pattern, sensitivity=s)  # fmt: skip

    def final(cfg, y0, log_k):
        sol = cfg.diffeqsolve(diffrax.ODETerm(field), 0.0, rn.T_FINAL, y0, args=log_k,
                              saveat=diffrax.SaveAt(t1=True))  # fmt: skip
        return sol.ys[-1], sol.stats["num_steps"]

    def loss(log_k, y0):
        y, _ = final(config(chosen[sensitivity]), y0, log_k)
        return jnp.sum(y[:ng]) + 1e4 * jnp.sum(y[ng : 2 * ng])

    grad = jax.jit(jax.value_and_grad(loss))
    forward = jax.jit(lambda y0, log_k: final(config(nde.Direct()), y0, log_k))
    return grad, forward, jnp.asarray(rn.y0_of(ng)), jnp.log(jnp.asarray(rn.K))


def run(ng: int, args) -> list[dict]:
    import jax

    rows, grads = [], {}
    _, forward, y0, log_k = problem(ng, "direct", args.max_steps)
    forward_s, (_, steps) = rn.timed(
        lambda: jax.block_until_ready(forward(y0, log_k)), args.repeats
    )
    forward_cpu = rn.LAST_CPU[0]
    fd = rn.reference_gradient(ng) if ng <= 10 else None
    for name in args.sensitivities:
        if name == "forward" and ng > args.forward_max:
            continue
        grad, *_ = problem(ng, name, args.max_steps, args.adjoint_atol)
        grad_s, (_, g) = rn.timed(
            lambda grad=grad: jax.block_until_ready(grad(log_k, y0)), args.repeats
        )
        grads[name] = np.asarray(g)
        row = {
            "ngroups": ng,
            "sensitivity": name,
            "forward_steps": int(steps),
            "grad_s": grad_s,
            "grad_cpu_s": rn.LAST_CPU[0],
            "forward_s": forward_s,
            "forward_cpu_s": forward_cpu,
            "grad_over_forward_cpu": rn.LAST_CPU[0] / forward_cpu,
            "grad": grads[name].tolist(),
        }
        if fd is not None:
            row["max_rel_err_vs_fd"] = float(np.max(np.abs(grads[name] - fd) / np.abs(fd)))
        if "direct" in grads:
            dev = np.abs(grads[name] - grads["direct"]) / np.abs(grads["direct"])
            row["max_rel_dev_from_direct"] = float(np.max(dev))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if "direct" in grads:  # (rows printed before Direct's gradient existed)
        for name, g in grads.items():
            dev = float(np.max(np.abs(g - grads["direct"]) / np.abs(grads["direct"])))
            print(f"ngroups {ng}: {name} vs direct, max relative deviation {dev:.2e}")
    return rows


def memory_child(ng: int, sensitivity: str, max_steps: int, adjoint_atol) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    before = rn._high_water_mb()
    grad, _, y0, log_k = problem(ng, sensitivity, max_steps, adjoint_atol)
    jax.block_until_ready(grad(log_k, y0))
    print(json.dumps({"ngroups": ng, "sensitivity": sensitivity, "max_steps": max_steps,
                      "peak_rss_mb": rn._high_water_mb(), "after_import_mb": before}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngroups", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--sensitivities", nargs="+", default=list(SENSITIVITIES),
                        choices=SENSITIVITIES)  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=4096)
    parser.add_argument("--rtol", type=float, default=rn.GRAD_RTOL)
    parser.add_argument("--atol", type=float, default=rn.GRAD_ATOL)
    parser.add_argument("--adjoint-atol", type=float, default=1e-10,
                        help="Quadrature(atol=...): the adjoint solve's atol (it is in units of "
                        "dL/dy, O(1) to 1e4 here; the forward's 1e-14 stalls it)")  # fmt: skip
    parser.add_argument("--forward-max", type=int, default=1000, help="largest ngroups for Forward")
    parser.add_argument("--memory", action="store_true", help="peak memory, one child each")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    rn.GRAD_RTOL, rn.GRAD_ATOL = args.rtol, args.atol  # (the problem reads them there)
    if args.child is not None:
        memory_child(int(args.child[0]), args.child[1], args.max_steps, args.adjoint_atol)
        return
    print(f"Robertson x ngroups, t_final = {rn.T_FINAL:g}, rtol = {rn.GRAD_RTOL:g}, atol = "
          f"{rn.GRAD_ATOL:g} (Quadrature's adjoint solve: atol {args.adjoint_atol:g}), float64, "
          "BDF "
          f"with the block pattern, max_steps = {args.max_steps}; "
          f"median of {args.repeats} runs after a warm-up. Shared machine: compare the CPU-time "
          "ratios, not absolute times.")  # fmt: skip
    for ng in args.ngroups:
        if args.memory:
            for name in args.sensitivities:
                if name == "forward" and ng > args.forward_max:
                    continue
                command = [sys.executable, __file__, "--child", str(ng), name, "--max-steps",
                           str(args.max_steps), "--adjoint-atol", str(args.adjoint_atol),
                           "--rtol", str(args.rtol), "--atol", str(args.atol)]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                print(out.stdout.strip().splitlines()[-1], flush=True)
        else:
            run(ng, args)


if __name__ == "__main__":
    main()
