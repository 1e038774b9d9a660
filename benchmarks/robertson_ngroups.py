"""Robertson × ngroups: the public stiff benchmark of pydiffsol, our BDF against its peers.

The problem is pydiffsol's (its `bench/` code: `robertson_ode_str`, `setup`): Robertson's
kinetics (k1 = 0.04, k2 = 3e7, k3 = 1e4) duplicated `ngroups` times as independent groups, the
state laid out as all x, then all y, then all z (x = 1, y = z = 0), solved in float64 from t = 0
to t_final = 1e10 with rtol = atol = 1e-8, the final state only. Side by side, in one process:

- ours: `nde.SolveConfig("bdf", rtol=1e-8, atol=1e-8, jacobian=pattern)`, the block pattern
  given (3 colours: three JVPs per Jacobian), the linear solve by size (dense LU up to 200
  states, SciPy's SuperLU above); the solve compiled once with `jax.jit`, then timed. The time
  to detect the same pattern from the field (`jacobian="sparse"`) is reported separately, and
  so is the same solve with `BDF(reuse_jacobian=False)` (Jacobian and Newton matrix afresh
  at every step: the solver before it kept them);
- scipy `solve_ivp(method="BDF")` given the same sparsity (`jac_sparsity`), a NumPy field;
- CVODE through CasADi (`integrator("cvodes")`, as pydiffsol's benchmark calls it);
- pydiffsol's BDF (dense matrices below 20 groups, faer sparse above, as in its benchmark);
- diffrax `Kvaerno5` with its dense Jacobian (up to `--kvaerno-max` groups; slower ones are
  stopped after `--kvaerno-timeout` seconds and reported as a lower bound).

Each time is the median of `--repeats` runs after one warm-up (compilation excluded for the
JAX solvers; peers' set-up excluded), with the largest deviation of each final state from
CVODE's. Then, for ours:

- gradient of L = Σ x_final + 1e4·Σ y_final with respect to log(k1, k2, k3), forward mode
  (`nde.Forward()`), at rtol 1e-10, atol 1e-14 (at atol 1e-8 the final x ~ 2e-7 and y ~ 1e-12
  are below the error control, and finite differences would measure it), checked against
  float64 central finite differences of a high-precision solve (scipy Radau, rtol 1e-13;
  `reference_gradient`) at ngroups = 10, and timed against one forward solve
  at the same tolerances at ngroups = 1,000;
- peak memory (resident set) of a fresh process that solves ngroups = 10,000 once (`--memory`
  runs that child), and what importing JAX and compiling take in the same child.

    python benchmarks/robertson_ngroups.py --ngroups 1 10 100 1000 10000 --repeats 3

`--implicit radau5 kvaerno5` runs instead the other implicit solvers, each with its dense
Jacobian (the default: `jax.jacfwd` and a dense LU in every Newton matrix) and with the block
pattern given (`jacobian=pattern`, `linear_solve="auto"`: dense LU of the matrix from the
sparse Jacobian up to 200 unknowns, else the independent blocks; Radau IIA's three stages make
3·states unknowns), each in a fresh child process stopped after `--implicit-timeout` seconds
(compilation included; reported as a lower bound), the final state compared with CVODE's;
above `--implicit-dense-max` groups the dense Jacobian is not run (its n×n matrix alone
would take gigabytes):

    taskset -c 1 python benchmarks/robertson_ngroups.py --ngroups 10 100 1000 \\
        --implicit radau5 kvaerno5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from neuraldiffeq.solve.linear import DENSE_MAX

K = (0.04, 3e7, 1e4)
T_FINAL = 1e10
TOL = 1e-8
GRAD_RTOL, GRAD_ATOL = 1e-10, 1e-14


def rober_np(ng):
    k1, k2, k3 = K

    def f(t, u):
        x, y, z = u[:ng], u[ng : 2 * ng], u[2 * ng :]
        return np.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])

    return f


def block_pattern(ng):
    """The Jacobian's pattern: each group's 3×3 block (x, y, z of group i at i, ng+i, 2ng+i)."""
    idx = np.arange(ng)
    members = [idx, ng + idx, 2 * ng + idx]
    rows = np.concatenate([a for a in members for _ in members])
    cols = np.concatenate([b for _ in members for b in members])
    return rows, cols


def y0_of(ng):
    y0 = np.zeros(3 * ng)
    y0[:ng] = 1.0
    return y0


#: CPU seconds (this process, all threads) of the last `timed` call's runs: the median.
LAST_CPU: list[float] = [float("nan")]


def timed(fn, repeats):
    """Median wall seconds of `repeats` runs after a warm-up, and the last output; the median
    CPU seconds go to LAST_CPU[0] (on a shared machine the wall time counts other jobs' time
    slices, the CPU time does not)."""
    fn()  # warm-up: compilation / set-up
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    LAST_CPU[0] = statistics.median(cpu)
    return statistics.median(times), out


# -- the solvers -----------------------------------------------------------------------------------


def ours(ng, *, sensitivity=None, pattern=None, linear_solve="auto", rtol=TOL, atol=TOL,
         reuse=True):  # fmt: skip
    import diffrax
    import jax
    import jax.numpy as jnp

    import neuraldiffeq as nde
    from neuraldiffeq.solve.bdf import BDF
    from neuraldiffeq.solve.jacobian import SparsityPattern

    def field(t, u, log_k):
        k1, k2, k3 = jnp.exp(log_k)
        x, y, z = u[:ng], u[ng : 2 * ng], u[2 * ng :]
        return jnp.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])

    if pattern is None:
        pattern = SparsityPattern(*block_pattern(ng), 3 * ng)
    config = nde.SolveConfig(
        BDF(reuse_jacobian=reuse), rtol=rtol, atol=atol, max_steps=100_000, jacobian=pattern,
        linear_solve=linear_solve,
        sensitivity=sensitivity or nde.Direct(),
    )  # fmt: skip

    @jax.jit
    def solve(y0, log_k):
        sol = config.diffeqsolve(
            diffrax.ODETerm(field), 0.0, T_FINAL, y0, args=log_k, saveat=diffrax.SaveAt(t1=True)
        )
        return sol.ys[-1], sol.stats["num_steps"]

    return field, solve


def kvaerno5(ng):
    import diffrax
    import jax
    import jax.numpy as jnp

    def field(t, u, args):
        k1, k2, k3 = K
        x, y, z = u[:ng], u[ng : 2 * ng], u[2 * ng :]
        return jnp.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])

    @jax.jit
    def solve(y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Kvaerno5(), 0.0, T_FINAL, None, y0,
            stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL), max_steps=100_000,
        )  # fmt: skip
        return sol.ys[-1]

    return solve


def _kvaerno_child(ng, repeats, queue):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    solve = kvaerno5(ng)
    y0 = jnp.asarray(y0_of(ng))
    seconds, y = timed(lambda: jax.block_until_ready(solve(y0)), repeats)
    queue.put((seconds, np.asarray(y).tolist()))


def implicit(ng, solver, sparse):
    """`solver` ("radau5", "kvaerno5", ...) by name through nde.SolveConfig, with its dense
    Jacobian or the block pattern (`sparse`)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    import neuraldiffeq as nde
    from neuraldiffeq.solve.jacobian import SparsityPattern

    def field(t, u, args):
        k1, k2, k3 = K
        x, y, z = u[:ng], u[ng : 2 * ng], u[2 * ng :]
        return jnp.concatenate([-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y])

    structure = {}
    if sparse:
        structure = dict(jacobian=SparsityPattern(*block_pattern(ng), 3 * ng), linear_solve="auto")
    config = nde.SolveConfig(solver, rtol=TOL, atol=TOL, max_steps=100_000,
                             sensitivity=nde.Direct(), **structure)  # fmt: skip

    @jax.jit
    def solve(y0):
        sol = config.diffeqsolve(diffrax.ODETerm(field), 0.0, T_FINAL, y0,
                                 saveat=diffrax.SaveAt(t1=True))  # fmt: skip
        return sol.ys[-1], sol.stats["num_steps"]

    return solve


def _implicit_child(ng, solver, sparse, repeats, queue):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    solve = implicit(ng, solver, sparse)
    y0 = jnp.asarray(y0_of(ng))
    start = time.perf_counter()
    jax.block_until_ready(solve(y0))
    compile_s = time.perf_counter() - start
    seconds, (y, steps) = timed(lambda: jax.block_until_ready(solve(y0)), repeats)
    queue.put((compile_s, seconds, LAST_CPU[0], int(steps), np.asarray(y).tolist()))


def run_implicit(ng, args) -> dict:
    """Each of `args.implicit` with its dense and its sparse Jacobian at ngroups, in children
    stopped after `args.implicit_timeout` seconds."""
    row: dict = {"ngroups": ng, "states": 3 * ng}
    try:
        reference = casadi_cvode(ng)()
    except Exception as error:  # a peer that cannot run is reported, not hidden
        row["cvode_error"] = f"{type(error).__name__}: {error}"[:200]
        reference = None
    context = multiprocessing.get_context("spawn")
    for solver in args.implicit:
        for sparse in (False, True):
            key = f"{solver}_{'sparse' if sparse else 'dense'}"
            if not sparse and ng > args.implicit_dense_max:
                unknowns = 3 * ng * (3 if solver == "radau5" else 1)
                row[f"{key}_s"] = f"not run ({unknowns**2 * 8 / 1e9:.0f} GB per matrix)"
                continue
            queue = context.Queue()
            repeats = 1 if ng >= 100 else args.repeats
            child = context.Process(target=_implicit_child,
                                    args=(ng, solver, sparse, repeats, queue))  # fmt: skip
            start = time.perf_counter()
            child.start()
            child.join(args.implicit_timeout)
            if child.is_alive():
                child.terminate()
                child.join()
                row[f"{key}_s"] = f">{args.implicit_timeout:g}"  # stopped: a lower bound
                continue
            if queue.empty():
                row[f"{key}_s"] = f"failed (exit code {child.exitcode})"
                continue
            compile_s, seconds, cpu, steps, y = queue.get()
            row.update({f"{key}_s": seconds, f"{key}_cpu_s": cpu, f"{key}_steps": steps,
                        f"{key}_compile_s": compile_s,
                        f"{key}_child_wall_s": time.perf_counter() - start})  # fmt: skip
            if reference is not None:
                row[f"{key}_max_dev"] = float(np.max(np.abs(np.asarray(y) - reference)))
    return row


def print_implicit(rows, args) -> None:
    header = ["ngroups", "states"]
    for solver in args.implicit:
        header += [f"{solver} dense (s)", f"{solver} sparse (s)", "dense / sparse", "steps",
                   "sparse max dev vs CVODE"]  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def cell(value, fmt="{:.4f}"):
        return value if isinstance(value, str) else ("n/a" if value is None else fmt.format(value))

    for row in rows:
        cells = [str(row["ngroups"]), str(row["states"])]
        for solver in args.implicit:
            dense, sparse = row.get(f"{solver}_dense_s"), row.get(f"{solver}_sparse_s")
            if isinstance(dense, float) and isinstance(sparse, float):
                ratio = f"{dense / sparse:.1f}"
            elif isinstance(dense, str) and dense.startswith(">") and isinstance(sparse, float):
                ratio = f">{float(dense[1:]) / sparse:.0f}"
            else:
                ratio = "n/a"
            cells += [cell(dense), cell(sparse), ratio,
                      cell(row.get(f"{solver}_sparse_steps"), "{}"),
                      cell(row.get(f"{solver}_sparse_max_dev"), "{:.1e}")]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print("(times: median solve after compiling, wall; '>N': the child, compiling included, was "
          "stopped after N s; dense / sparse: how many times longer the dense Jacobian's solve "
          "takes)")  # fmt: skip


def cvode_integrator(ng):
    """CasADi's CVODES integrator of the problem (its `stats()` hold CVODE's counters)."""
    import casadi

    x, y, z = (casadi.MX.sym(name, ng) for name in "xyz")
    k1, k2, k3 = K
    ode = {
        "x": casadi.vertcat(x, y, z),
        "ode": casadi.vertcat(-k1 * x + k3 * y * z, k1 * x - k2 * y**2 - k3 * y * z, k2 * y**2),
    }
    return casadi.integrator("F", "cvodes", ode, 0.0, T_FINAL, {"abstol": TOL, "reltol": TOL})


def casadi_cvode(ng):
    integrator = cvode_integrator(ng)
    y0 = y0_of(ng)
    return lambda: np.asarray(integrator(x0=y0)["xf"]).ravel()


def pydiffsol_bdf(ng):
    import pydiffsol as ds

    u_i = f"(0:{ng}): x = 1,\n({ng}:{2 * ng}): y = 0,\n({2 * ng}:{3 * ng}): z = 0,\n"
    code = (
        "k1 { 0.04 } k2 { 30000000 } k3 { 10000 }\nu_i {\n" + u_i + "}\nF_i {\n"
        "-k1 * x_i + k3 * y_i * z_i,\nk1 * x_i - k2 * y_i * y_i - k3 * y_i * z_i,\n"
        "k2 * y_i * y_i,\n}\n"
    )
    matrix = ds.nalgebra_dense if ng < 20 else ds.faer_sparse  # as pydiffsol's benchmark
    ode = ds.Ode(code, matrix_type=matrix, scalar_type=ds.f64, ode_solver=ds.bdf)
    ode.rtol, ode.atol = TOL, TOL
    return lambda: np.asarray(ode.solve_dense(np.array([]), np.array([T_FINAL])).ys[:, -1])


def scipy_bdf(ng):
    import scipy.sparse as sp
    from scipy.integrate import solve_ivp

    rows, cols = block_pattern(ng)
    sparsity = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(3 * ng, 3 * ng))
    f, y0 = rober_np(ng), y0_of(ng)
    return lambda: solve_ivp(
        f, (0.0, T_FINAL), y0, method="BDF", rtol=TOL, atol=TOL, jac_sparsity=sparsity
    ).y[:, -1]


# -- the runs --------------------------------------------------------------------------------------


def run_size(ng, args) -> dict:
    import jax
    import jax.numpy as jnp

    from neuraldiffeq.solve.jacobian import detect_pattern

    row: dict = {"ngroups": ng, "states": 3 * ng}
    field, solve = ours(ng)
    y0, log_k = jnp.asarray(y0_of(ng)), jnp.log(jnp.asarray(K))
    start = time.perf_counter()
    detected = detect_pattern(field, 0.0, y0, log_k)
    row["detect_s"] = time.perf_counter() - start
    # the detected pattern lies inside the block pattern (z' does not depend on x or z)
    assert np.all(detected.rows % ng == detected.cols % ng) and detected.nnz == 8 * ng, detected
    start = time.perf_counter()
    jax.block_until_ready(solve(y0, log_k))
    row["ours_compile_s"] = time.perf_counter() - start
    row["ours_s"], (y_ours, steps) = timed(
        lambda: jax.block_until_ready(solve(y0, log_k)), args.repeats
    )
    row["ours_cpu_s"] = LAST_CPU[0]
    row["ours_steps"] = int(steps)
    y_ours = np.asarray(y_ours)
    # the same solve evaluating and factorising the Newton matrix at every step
    _, solve_fresh = ours(ng, reuse=False)
    jax.block_until_ready(solve_fresh(y0, log_k))
    row["ours_no_reuse_s"], (y_fresh, steps_fresh) = timed(
        lambda: jax.block_until_ready(solve_fresh(y0, log_k)), args.repeats
    )
    row["ours_no_reuse_steps"] = int(steps_fresh)
    if 3 * ng > DENSE_MAX and not args.skip_superlu:  # the general sparse path: SuperLU
        _, solve_lu = ours(ng, linear_solve="sparse")
        row["ours_superlu_s"], _ = timed(
            lambda: jax.block_until_ready(solve_lu(y0, log_k)), args.repeats
        )

    peers = {"cvode": casadi_cvode, "pydiffsol": pydiffsol_bdf, "scipy": scipy_bdf}
    finals = {}
    for name, make in peers.items():
        if ng > args.scipy_max and name == "scipy":
            continue
        try:
            fn = make(ng)
        except Exception as error:  # a peer that cannot run is reported, not hidden
            row[f"{name}_error"] = f"{type(error).__name__}: {error}"[:200]
            continue
        row[f"{name}_s"], finals[name] = timed(fn, args.repeats)
        row[f"{name}_cpu_s"] = LAST_CPU[0]
    if ng <= args.kvaerno_max:
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=_kvaerno_child, args=(ng, 1 if ng >= 100 else args.repeats, queue)
        )
        child.start()
        child.join(args.kvaerno_timeout)
        if child.is_alive():
            child.terminate()
            child.join()
            row["kvaerno5_s"] = f">{args.kvaerno_timeout}"  # stopped: a lower bound
        else:
            seconds, y = queue.get()
            row["kvaerno5_s"], finals["kvaerno5"] = seconds, np.asarray(y)
    reference = finals.get("cvode", y_ours)
    row["ours_max_dev"] = float(np.max(np.abs(y_ours - reference)))
    for name, y in finals.items():
        row[f"{name}_max_dev"] = float(np.max(np.abs(np.asarray(y) - reference)))
    return row


def gradient_check(ng, repeats) -> dict:
    import jax
    import jax.numpy as jnp

    import neuraldiffeq as nde

    # at the benchmark's atol = 1e-8 the final x (~2e-7) and y (~1e-12) carry absolute errors
    # near their own size, so finite differences would measure the error control, not the
    # derivative: the gradient runs are at rtol 1e-10, atol 1e-14
    _, solve = ours(ng, sensitivity=nde.Forward(), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    y0, log_k = jnp.asarray(y0_of(ng)), jnp.log(jnp.asarray(K))

    def loss(lk):
        y, _ = solve(y0, lk)
        return jnp.sum(y[:ng]) + 1e4 * jnp.sum(y[ng : 2 * ng])

    grad = jax.jit(jax.grad(loss))
    out: dict = {"ngroups": ng}
    out["grad_s"], g = timed(lambda: jax.block_until_ready(grad(log_k)), repeats)
    out["forward_s"], _ = timed(lambda: jax.block_until_ready(solve(y0, log_k)), repeats)
    out["grad_over_forward"] = out["grad_s"] / out["forward_s"]
    if ng <= 10:
        fd = reference_gradient(ng)
        out["grad"] = np.asarray(g).tolist()
        out["fd_reference"] = fd.tolist()
        out["max_rel_err_vs_fd"] = float(np.max(np.abs(np.asarray(g) - fd) / np.abs(fd)))
    return out


def reference_gradient(ng, eps=1e-4) -> np.ndarray:
    """dL/dlog(k) by float64 central finite differences of a high-precision solve: scipy's
    Radau at rtol 1e-13, atol 1e-25 with the exact Jacobian, of one group (the groups are
    independent and identical, so L is ng times one group's x + 1e4·y). Step 1e-4 in log k:
    truncation ~eps², solve error / eps ~1e-9, both far below the 1e-5 checked."""
    import scipy.integrate

    def one_group(log_k):
        k1, k2, k3 = np.exp(log_k)

        def f(t, u):
            x, y, z = u
            return [-k1 * x + k3 * y * z, k1 * x - k2 * y * y - k3 * y * z, k2 * y * y]

        def jac(t, u):
            x, y, z = u
            return [[-k1, k3 * z, k3 * y], [k1, -2 * k2 * y - k3 * z, -k3 * y], [0, 2 * k2 * y, 0]]

        sol = scipy.integrate.solve_ivp(f, (0.0, T_FINAL), [1.0, 0.0, 0.0], method="Radau",
                                        jac=jac, rtol=1e-13, atol=1e-25)  # fmt: skip
        x, y, _ = sol.y[:, -1]
        return ng * (x + 1e4 * y)

    log_k = np.log(np.asarray(K))
    return np.array([
        (one_group(log_k + eps * e) - one_group(log_k - eps * e)) / (2 * eps)
        for e in np.eye(3)
    ])  # fmt: skip


def _high_water_mb() -> float:
    """This process's peak resident set (VmHWM, which starts afresh at exec; ru_maxrss does
    not: it keeps the parent's peak)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(ng) -> None:
    """Solve once at ngroups (compiling included) and print the peak resident set."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    before = _high_water_mb()
    _, solve = ours(ng)
    y, steps = jax.block_until_ready(solve(jnp.asarray(y0_of(ng)), jnp.log(jnp.asarray(K))))
    print(json.dumps({"ngroups": ng, "peak_rss_mb": _high_water_mb(), "after_import_mb": before,
                      "steps": int(steps)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngroups", type=int, nargs="+", default=[1, 10, 100, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kvaerno-max", type=int, default=1000)
    parser.add_argument("--kvaerno-timeout", type=float, default=300.0)
    parser.add_argument("--scipy-max", type=int, default=10000)
    parser.add_argument("--memory", type=int, default=None, help="(child) peak memory run")
    parser.add_argument("--skip-gradient", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-superlu", action="store_true")
    parser.add_argument(
        "--implicit",
        nargs="+",
        default=None,
        help="instead: these solvers (e.g. radau5 kvaerno5), dense vs sparse",
    )
    parser.add_argument("--implicit-timeout", type=float, default=120.0)
    parser.add_argument(
        "--implicit-dense-max",
        type=int,
        default=1000,
        help="largest ngroups given a dense Jacobian (its matrix takes n² memory)",
    )
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.memory is not None:
        memory_child(args.memory)
        return
    print(f"Robertson x ngroups, t_final = {T_FINAL:g}, rtol = atol = {TOL:g}, float64 "
          f"(pydiffsol's benchmark settings); python {platform.python_version()}, "
          f"jax {jax.__version__}; median of {args.repeats} runs after a warm-up")  # fmt: skip
    print("The machine is shared with other jobs: absolute times are noisy, ratios less so.")
    if args.implicit:
        rows = []
        for ng in args.ngroups:
            rows.append(run_implicit(ng, args))
            print(json.dumps(rows[-1]), flush=True)
        print_implicit(rows, args)
        return
    rows = []
    for ng in args.ngroups:
        row = run_size(ng, args)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ratio(row, peer, kind="s"):
        value = row.get(f"{peer}_{kind}")
        if isinstance(value, str):
            return f"{value[1:]}s/ours>{float(value[1:]) / row['ours_s']:.1f}"
        return "n/a" if value is None else f"{value / row[f'ours_{kind}']:.2f}"

    header = ("ngroups", "states", "ours (s)", "ours CPU (s)", "steps", "peer time / ours: CVODE",
              "pydiffsol BDF", "scipy BDF", "diffrax Kvaerno5", "CPU time: CVODE / ours",
              "pydiffsol / ours", "ours with SuperLU (s)", "detect pattern (s)",
              "no reuse / reuse")  # fmt: skip
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {row['ngroups']} | {row['states']} | {row['ours_s']:.4f} | "
              f"{row['ours_cpu_s']:.4f} | {row['ours_steps']} "
              f"| {ratio(row, 'cvode')} | {ratio(row, 'pydiffsol')} | {ratio(row, 'scipy')} | "
              f"{ratio(row, 'kvaerno5')} | {ratio(row, 'cvode', 'cpu_s')} | "
              f"{ratio(row, 'pydiffsol', 'cpu_s')} | "
              f"{row.get('ours_superlu_s', float('nan')):.4f} | {row['detect_s']:.2f} | "
              f"{row['ours_no_reuse_s'] / row['ours_s']:.2f} |")  # fmt: skip
    print("(a ratio above 1: the peer is slower; below 1: ours is slower. Wall times count other "
          "jobs' time slices on a shared machine, CPU times do not; run under `taskset -c N` "
          "to hold every solver to one core)")  # fmt: skip

    if not args.skip_gradient:
        for ng in (10, 1000):
            print(json.dumps(gradient_check(ng, args.repeats)), flush=True)
    if not args.skip_memory:
        child = subprocess.run(
            [sys.executable, __file__, "--memory", "10000"], capture_output=True, text=True
        )
        print((child.stdout + child.stderr).strip().splitlines()[-1])


if __name__ == "__main__":
    main()
