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
   traced in every process (only its compile comes from the cache).

4. (`--only trace`) Where the first call's time goes, in one process, cache off: the model
   check in `prepare` (a shape-only trace of the solve), tracing the loss alone (the diffrax
   solve), the loss and its gradient (equinox/JAX autodiff), the whole fused step (the optimizer
   and fit's bookkeeping), the callback stripping, lowering and XLA compilation.

With the cache on, `fit` also keeps the traced step (jax.export) of a model made only of
neuraldiffeq's and its dependencies' code next to the compiled programs (`compilation.exported`),
so a warm first call skips tracing as well as compiling; the demo also reads back its dataset's
reference solve and its final evaluations.

Every repeat uses a new, empty cache directory for its cold run. The first call with the cache
switched off is measured once, as a reference.

    python benchmarks/startup.py --repeats 5
    python benchmarks/record.py startup -- python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
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


def env_with(cache_dir: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
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
    parser.add_argument("--only", nargs="*", default=["import", "fit", "fit-user", "demo", "trace"])
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, repeats {args.repeats}")
    results = {}
    if "import" in args.only:
        floor = [process_seconds("pass") for _ in range(args.repeats)]
        results["import"] = [process_seconds("import neuraldiffeq") for _ in range(args.repeats)]
        print(f"python -c pass: {median(floor)}")
        print(f"python -c 'import neuraldiffeq': {median(results['import'])}")
    for variant in ("fit", "fit-user"):
        if variant not in args.only:
            continue
        code = "user" if variant == "fit-user" else "library"
        cold, warm, off = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(python_seconds(FIRST_FIT, cache, code))
                warm.append(python_seconds(FIRST_FIT, cache, code))
        off.append(python_seconds(FIRST_FIT, "off", code))
        label = "first fit call" + (" (user code: lambda y: y**3)" if code == "user" else "")
        print(f"{label}, no cache: {median(off)}")
        print(f"{label}, cold cache: {median(cold)}")
        print(f"{label}, warm cache: {median(warm)}")
    if "trace" in args.only:
        out = subprocess.run(
            [sys.executable, "-c", TRACE], capture_output=True, text=True, env=env_with(None)
        )
        print("first fit call, one process, no cache:\n" + out.stdout + out.stderr[-2000:])
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
