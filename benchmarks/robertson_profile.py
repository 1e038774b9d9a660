"""Where our BDF's time goes on Robertson × ngroups, against CVODE's own counters.

One process, pydiffsol's problem and settings (`robertson_ngroups.py`). For ours: the solve's
CPU time, its accepted and rejected steps, and how many field evaluations (outside
Jacobians), Jacobians (3 JVPs each: the block pattern's colours) and factorisations of the
Newton matrix it made (counted by a subclass of `BDF` whose Jacobian, factorisation and field
pass through a counting host callback; the counting run is not the timed one). Then the CPU
cost of each of those operations alone at this size (each compiled in a loop of `--inner`
calls) and of one block solve, which gives the part of the solve they explain; the rest is the
step's own work (prediction, difference update, error norms, diffrax's loop and controller).
For CVODE (CasADi): its CPU time and its counters (`integrator.stats()`).

    taskset -c 1 python benchmarks/robertson_profile.py --ngroups 10000
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

from robertson_ngroups import T_FINAL, TOL, K, block_pattern, cvode_integrator, y0_of


def cpu_timed(fn, repeats):
    fn()
    cpu = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        cpu.append(time.process_time() - start)
    return statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngroups", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=200)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    from neuraldiffeq.solve.bdf import BDF
    from neuraldiffeq.solve.jacobian import SparsityPattern, sparse_jacobian

    ng = args.ngroups
    counts: collections.Counter = collections.Counter()

    def counter(name):
        @jax.custom_jvp
        def counted(x):
            def host(v):
                counts[name] += 1
                return v

            return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

        counted.defjvp(lambda p, t: (counted(p[0]), t[0]))
        return counted

    count_f, count_jac, count_factor = counter("f"), counter("jac"), counter("factor")

    def field(t, u, log_k, count=False):
        k1, k2, k3 = jnp.exp(log_k)
        x, y, z = u[:ng], u[ng : 2 * ng], u[2 * ng :]
        out = jnp.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])
        return count_f(out) if count else out

    class CountingBDF(BDF):
        def _jacobian(self, f, y):
            return count_jac(super()._jacobian(f, y))

        def _factorise(self, jac, c):
            return jax.tree_util.tree_map(count_factor, super()._factorise(jac, c))

    pattern = SparsityPattern(*block_pattern(ng), 3 * ng)
    y0, log_k = jnp.asarray(y0_of(ng)), jnp.log(jnp.asarray(K))

    def make(solver_cls, count):
        @jax.jit
        def solve(y0, log_k):
            term = diffrax.ODETerm(lambda t, u, a: field(t, u, a, count))
            sol = diffrax.diffeqsolve(
                term, solver_cls(jacobian=pattern), 0.0, T_FINAL, None, y0, args=log_k,
                saveat=diffrax.SaveAt(t1=True),
                stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL), max_steps=100_000,
            )  # fmt: skip
            return sol.ys[-1], sol.stats

        return solve

    solve = make(BDF, False)
    ours_cpu = cpu_timed(lambda: jax.block_until_ready(solve(y0, log_k)), args.repeats)
    _, stats = jax.block_until_ready(solve(y0, log_k))
    counting = make(CountingBDF, True)
    jax.block_until_ready(counting(y0, log_k))
    counts.clear()
    jax.block_until_ready(counting(y0, log_k))
    ours = {
        "cpu_s": ours_cpu,
        "accepted": int(stats["num_accepted_steps"]),
        "rejected": int(stats["num_rejected_steps"]),
        "f_evals": counts["f"] - counts["jac"],  # a Jacobian evaluates f once (its JVPs' primal)
        "jacobians": counts["jac"],
        "factorisations": counts["factor"],
    }

    # the CPU cost of each operation alone at this size
    solver = BDF(jacobian=pattern)
    values = sparse_jacobian(field, 0.0, y0 + 0.1, log_k, pattern)
    factor = solver._factorise(values, jnp.asarray(1e-3))

    def per_call(body, init):
        loop = jax.jit(lambda x: jax.lax.fori_loop(0, args.inner, lambda i, c: body(c), x))
        return cpu_timed(lambda: jax.block_until_ready(loop(init)), args.repeats) / args.inner

    u = y0 + 0.1
    unit = {
        "f": per_call(lambda v: v + 1e-12 * field(0.0, v, log_k), u),
        "jacobian": per_call(
            lambda v: v + 1e-12 * sparse_jacobian(field, 0.0, v, log_k, pattern)[: 3 * ng], u
        ),
        "factorisation": per_call(
            lambda j: j + 1e-12 * solver._factorise(j, jnp.asarray(1e-3)).reshape(-1), values
        ),
        "solve": per_call(lambda r: solver._apply(factor, r), u),
        "vector_pass": per_call(lambda v: v * 1.0000001 + 1e-12, u),
    }
    newton = ours["f_evals"]  # one field evaluation per Newton iteration (and the first step)
    explained = {
        "f_and_solve_in_newton": newton * (unit["f"] + unit["solve"]),
        "jacobians": ours["jacobians"] * unit["jacobian"],
        "factorisations": ours["factorisations"] * unit["factorisation"],
    }
    explained["rest"] = ours_cpu - sum(explained.values())
    ours["per_step_rest_in_vector_passes"] = explained["rest"] / (
        (ours["accepted"] + ours["rejected"]) * unit["vector_pass"]
    )

    # CVODE through CasADi, as the benchmark
    integrator = cvode_integrator(ng)
    cvode_cpu = cpu_timed(lambda: integrator(x0=y0_of(ng)), args.repeats)
    st = integrator.stats()
    cvode = {
        "cpu_s": cvode_cpu,
        "steps": int(st["nsteps"]),
        "error_test_failures": int(st["netfails"]),
        "f_evals": int(st["nfevals"]),
        "jacobians": int(st["n_call_jacF"]),
        "linear_setups": int(st["nlinsetups"]),
        "newton_iterations": int(st["nniters"]),
        "f_cpu_s": st["t_proc_daeF"],
        "jacobian_cpu_s": st["t_proc_jacF"],
    }

    print(f"Robertson x {ng} ({3 * ng} states), t_final = {T_FINAL:g}, rtol = atol = {TOL:g}; "
          f"CPU seconds, medians of {args.repeats}")  # fmt: skip
    print(json.dumps({"ours": ours}))
    print(json.dumps({"ours_unit_cpu_s": unit}))
    print(json.dumps({"ours_explained_cpu_s": explained}))
    print(json.dumps({"cvode": cvode}))
    print(f"CPU time CVODE / ours: {cvode_cpu / ours_cpu:.2f}")
    print(f"| | steps (rejected) | f evaluations | Jacobians | factorisations | CPU (s) |\n"
          f"|---|---|---|---|---|---|\n"
          f"| ours | {ours['accepted'] + ours['rejected']} ({ours['rejected']}) | "
          f"{ours['f_evals']} | {ours['jacobians']} | {ours['factorisations']} | "
          f"{ours_cpu:.3f} |\n"
          f"| CVODE | {cvode['steps']} ({cvode['error_test_failures']}) | {cvode['f_evals']} | "
          f"{cvode['jacobians']} | {cvode['linear_setups']} | {cvode_cpu:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
