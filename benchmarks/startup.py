"""Start-up time (issue #17), each figure from fresh Python processes, median over `--repeats`.

1. `python -c "import neuraldiffeq"`: wall time of the whole process (interpreter start
   included; `python -c pass` shown as the floor).
2. `neuraldiffeq demo spiral --steps 30`: total wall time of a first run (empty compilation
   cache) and of a second run (the cache the first one filled); the ratio second / first.
3. The first `nde.fit` call on the spiral (30 points, MLP 2 -> 50 -> 2 on u**3, Tsit5, Adam
   0.05, one step: trace + compile + one step), timed inside the process after the imports and
   the data and model are built: cold (empty cache) and warm (the cache of a previous process).
   `fit` uses `nde.transforms.cube` for u**3 (neuraldiffeq's code only: a warm process reads the
   traced step back); `fit-user` the same model with `lambda y: y**3`, user code, which is
   traced in every process (only its compile comes from the cache). `fit-lapack`: `fit` with
   `scipy.linalg.cython_lapack` imported before the timer: JAX's `Exported.call` initialises
   its CPU LAPACK kernels when it lowers (jax/_src/export/_export.py,
   `_ensure_backends_initialized`), and that imports scipy's LAPACK; the difference between
   the two warm figures is what that costs a warm first fit.

4. (`--only trace`) Where the first call's time goes, in one process, cache off: the model
   check in `prepare` (a shape-only trace of the solve), tracing the loss alone (the diffrax
   solve), the loss and its gradient (equinox/JAX autodiff), the whole fused step (the optimizer
   and fit's bookkeeping), the callback stripping, lowering and XLA compilation.

With the cache on, `fit` also keeps the traced step (jax.export) of a model made only of
neuraldiffeq's and its dependencies' code next to the compiled programs (`compilation.exported`),
so a warm first call skips tracing as well as compiling; the demo also reads back its dataset's
reference solve and its final evaluations.

5. (`--only cli`) The first fit a user sees: `neuraldiffeq fit osc.csv --time time` on an
   81-row CSV of a noisy damped oscillator (two columns and the time; written by
   `oscillator_csv`, seed 0), cold (empty cache) then warm, each a fresh process: wall time,
   user + system CPU time (load-independent, unlike wall time on a shared machine), the number
   of XLA compilations, and each stage's time to its first step and its wall time (from the
   run's metrics.json). `--compare-src OTHER/src` runs another tree's code in the same loop
   (alternating), for same-run ratios, and says whether both fitted the same losses.

Every repeat uses a new, empty cache directory for its cold run. The first call with the cache
switched off is measured once, as a reference.

    python benchmarks/startup.py --repeats 5
    python benchmarks/record.py startup -- python benchmarks/startup.py --repeats 5
    python benchmarks/startup.py --only cli --repeats 3 --compare-src /path/to/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


FIRST_FIT = """
import sys, time
import equinox as eqx, jax, jax.numpy as jnp, optax
import neuraldiffeq as nde
if sys.argv[1] != "off":
    nde.enable_compilation_cache(sys.argv[1])
if len(sys.argv) > 3:  # what an exported step's first call initialises on the CPU (LAPACK)
    import scipy.linalg.cython_lapack
data = nde.datasets.spiral()
mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
input_fn = (lambda y: y**3) if sys.argv[2] == "user" else nde.transforms.cube
model = nde.NeuralODE(nde.autonomous(mlp, input_fn=input_fn), "tsit5", rtol=1e-3, atol=1e-6)
jax.block_until_ready(data.ys)
t = time.perf_counter()
result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05), steps=1,
                 progress=False)
print(time.perf_counter() - t)
"""

TRACE = """
import time, statistics
import equinox as eqx, jax, jax.numpy as jnp, numpy as np, optax
import neuraldiffeq as nde
from neuraldiffeq.compilation.cacheable import _strip_jaxpr
from neuraldiffeq.fitting.loop import StageRun as _StageRun, make_steps as _make_steps
from neuraldiffeq.fitting.stage import Stage
data = nde.datasets.spiral()
mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
model = nde.NeuralODE(nde.autonomous(mlp, input_fn=nde.transforms.cube), "tsit5", rtol=1e-3,
                      atol=1e-6)
strategy = nde.Trajectory()
def timed(label, fn):
    t = time.perf_counter(); out = fn(); print(f"{label}: {time.perf_counter() - t:.3f} s")
    return out
prepared = timed("prepare (model check, a shape-only trace)", lambda: strategy.prepare(model, data))
run = _StageRun(model, Stage(strategy, optax.adam(0.05), 10), prepared, jax.random.key(0))
params = run.carry[0]
loss = lambda p: strategy.loss(eqx.combine(p, run.static), prepared, None)
timed("trace the loss (diffrax solve)", lambda: jax.make_jaxpr(loss)(params))
timed("trace loss + gradient (autodiff)", lambda: jax.make_jaxpr(jax.value_and_grad(loss))(params))
step = _make_steps(run.static, strategy, run.optimizer, "auto")
closed = timed("trace the fused step (+ optimizer, bookkeeping)",
               lambda: jax.make_jaxpr(step)(run.carry, prepared, np.int32(1)))
jaxpr, n = timed("strip error callbacks", lambda: _strip_jaxpr(closed.jaxpr))
fun = jax.extend.core.jaxpr_as_fun(jax.extend.core.ClosedJaxpr(jaxpr, closed.consts))
leaves = jax.tree_util.tree_leaves((run.carry, prepared, np.int32(1)))
lowered = timed("re-trace the stripped program and lower it",
                lambda: jax.jit(fun).trace(*leaves).lower())
timed("XLA compile", lambda: lowered.compile())
"""


CLI_FIT = """
import json, sys
import jax
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: compiles.append(seconds)
    if event == "/jax/core/compile/backend_compile_duration" else None)
from neuraldiffeq.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "compiles": len(compiles), "compile_s": sum(compiles)}))
"""


def oscillator_csv(path: str, n: int = 81, t1: float = 20.0, noise: float = 0.05) -> None:
    """A noisy damped oscillator x'' + 2 zeta x' + x = 0 (zeta 0.1), x(0) = 1, x'(0) = 0:
    `n` rows of time, x and v on [0, t1], Gaussian noise of standard deviation `noise` (seed 0)."""
    import numpy as np

    zeta = 0.1
    t = np.linspace(0.0, t1, n)
    wd = np.sqrt(1.0 - zeta**2)
    decay = np.exp(-zeta * t)
    x = decay * np.cos(wd * t)
    v = decay * (-zeta * np.cos(wd * t) - wd * np.sin(wd * t))
    ys = np.stack([x, v], 1) + noise * np.random.default_rng(0).standard_normal((n, 2))
    with open(path, "w") as f:
        f.write("time,x,v\n")
        f.writelines(f"{ti:.6g},{a:.6g},{b:.6g}\n" for ti, (a, b) in zip(t, ys, strict=True))


def cli_fit(src: str, csv: str, cache: str, out: str) -> dict:
    """One `neuraldiffeq fit` process: wall, user + system CPU, compilations, stages."""
    command = [sys.executable, "-c", CLI_FIT, "fit", csv, "--time", "time", "--out", out]
    before = os.times()
    t = time.perf_counter()
    run = subprocess.run(
        command + ["--no-progress"], capture_output=True, text=True, env=env_with(cache, src)
    )
    wall = time.perf_counter() - t
    after = os.times()
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {
        "wall": wall,
        "cpu": cpu,
        "compiles": stats["compiles"],
        "stages": [(s["name"], s["compile_seconds"], s["wall_seconds"]) for s in metrics["stages"]],
        "losses": [(s["first_loss"], s["final_loss"], s["best_loss"]) for s in metrics["stages"]],
        "train_mse": metrics["train_mse"],
    }


def cli_section(repeats: int, compare: str | None) -> None:
    trees = {"this tree": SRC} | ({"--compare-src": compare} if compare else {})
    runs: dict[str, dict[str, list[dict]]] = {t: {"cold": [], "warm": []} for t in trees}
    with tempfile.TemporaryDirectory() as work:
        csv = os.path.join(work, "osc.csv")
        oscillator_csv(csv)
        for repeat in range(repeats):
            for tree, src in trees.items():  # alternating: both see the same load
                with tempfile.TemporaryDirectory() as cache:
                    for kind in ("cold", "warm"):
                        out = os.path.join(work, f"out-{repeat}-{kind}")
                        runs[tree][kind].append(cli_fit(src, csv, cache, out))
    for tree, kinds in runs.items():
        print(f"neuraldiffeq fit osc.csv --time time ({tree}: {trees[tree]}):")
        for kind, results in kinds.items():
            print(f"  {kind} wall: {median([r['wall'] for r in results])}")
            print(f"  {kind} user+sys CPU: {median([r['cpu'] for r in results])}")
            print(f"  {kind} XLA compilations: {[r['compiles'] for r in results]}")
            for i, (name, _, _) in enumerate(results[0]["stages"]):
                first = median([r["stages"][i][1] for r in results])
                print(f"  {kind} stage {name}: to first step {first}; "
                      f"wall {median([r['stages'][i][2] for r in results])}")  # fmt: skip
        cold = kinds["cold"][0]
        print(f"  losses (first, final, best per stage): {cold['losses']}")
        print(f"  train MSE: {cold['train_mse']!r}")
    if compare:
        mine, other = (runs[t]["cold"] for t in trees)
        same = all(a["losses"] == b["losses"] for a in mine for b in other)
        print(f"same losses in every run, both trees: {same}")
        for kind in ("cold", "warm"):
            for what in ("wall", "cpu"):
                a = statistics.median(r[what] for r in runs["this tree"][kind])
                b = statistics.median(r[what] for r in runs["--compare-src"][kind])
                print(f"{kind} {what}: this tree / --compare-src = {a / b:.2f}")


def env_with(cache_dir: str | None, src: str = SRC) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NEURALDIFFEQ_CACHE_DIR", None)
    if cache_dir is not None:
        env["NEURALDIFFEQ_CACHE_DIR"] = cache_dir
    return env


def python_seconds(code: str, *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env_with(None),
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def process_seconds(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env_with(None), check=True)
    return time.perf_counter() - t


def demo_seconds(cache_dir: str, out_dir: str) -> float:
    command = [sys.executable, "-m", "neuraldiffeq", "demo", "spiral", "--steps", "30"]
    command += ["--out", out_dir, "--no-progress"]
    t = time.perf_counter()
    subprocess.run(command, capture_output=True, env=env_with(cache_dir), check=True)
    return time.perf_counter() - t


def median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in xs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", nargs="*", default=["import", "fit", "fit-user", "demo", "trace", "cli"]
    )
    parser.add_argument(
        "--compare-src", default=None, help="another tree's src/ to run beside this one (cli)"
    )
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, repeats {args.repeats}")
    results = {}
    if "import" in args.only:
        floor = [process_seconds("pass") for _ in range(args.repeats)]
        results["import"] = [process_seconds("import neuraldiffeq") for _ in range(args.repeats)]
        print(f"python -c pass: {median(floor)}")
        print(f"python -c 'import neuraldiffeq': {median(results['import'])}")
    for variant in ("fit", "fit-user", "fit-lapack"):
        if variant not in args.only:
            continue
        code = "user" if variant == "fit-user" else "library"
        extra = ("lapack",) if variant == "fit-lapack" else ()
        cold, warm, off = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(python_seconds(FIRST_FIT, cache, code, *extra))
                warm.append(python_seconds(FIRST_FIT, cache, code, *extra))
        off.append(python_seconds(FIRST_FIT, "off", code, *extra))
        label = "first fit call" + (" (user code: lambda y: y**3)" if code == "user" else "")
        label += " (scipy's LAPACK imported before the timer)" if extra else ""
        print(f"{label}, no cache: {median(off)}")
        print(f"{label}, cold cache: {median(cold)}")
        print(f"{label}, warm cache: {median(warm)}")
    if "trace" in args.only:
        out = subprocess.run(
            [sys.executable, "-c", TRACE], capture_output=True, text=True, env=env_with(None)
        )
        print("first fit call, one process, no cache:\n" + out.stdout + out.stderr[-2000:])
    if "cli" in args.only:
        cli_section(args.repeats, args.compare_src)
    if "demo" in args.only:
        first, second = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
                first.append(demo_seconds(cache, out))
                second.append(demo_seconds(cache, out))
        ratio = statistics.median(second) / statistics.median(first)
        print(f"demo spiral --steps 30, first run: {median(first)}")
        print(f"demo spiral --steps 30, second run: {median(second)}")
        print(f"second / first (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
