"""FFJORD benchmarks (issue #5).

Two parts:

- `nll`: train `nde.FFJORD` (ConcatSquash 64-64-64 tanh, t1 = 0.5 trainable, exact trace) on
  FFJORD's toy densities through `nde.fit` + `nde.MaximumLikelihood`, then report the held-out NLL
  with the exact trace at rtol = atol = 1e-5 against a full-covariance Gaussian baseline.
- `speed`: time one training step (loss + gradient; wall and process CPU time; `--threads 1`:
  both sides on one thread) of ours against a reference PyTorch
  implementation in the style of the FFJORD code (torchdiffeq `odeint_adjoint`, ConcatSquash
  64-64-64 tanh, dopri5 rtol = atol = 1e-5, batch 100), Hutchinson and exact trace, side by side
  in one process, from the same weights (copied from JAX to torch), on the same batch.

- `profile`: where our training step's time goes (process CPU time, medians, so that a shared
  machine's waiting is not counted): the forward solve alone, the whole step, one evaluation of
  the dynamics (field + trace estimator) and the gradient of a plain loop of as many
  evaluations as the solve makes; then the whole step under other XLA CPU options (YNNPACK for
  everything, for dots only (ours), for nothing; XLA's code limited to AVX2, as on a CPU without
  AVX-512). Loss and one gradient entry are printed per variant: they must agree.

    python benchmarks/ffjord.py nll --data 8gaussians checkerboard --steps 3000
    python benchmarks/ffjord.py speed --repeats 5
    python benchmarks/ffjord.py profile --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import equinox as eqx
import jax
import numpy as np
from one_thread import add_threads_option, apply_threads

import neuraldiffeq as nde
from neuraldiffeq.demos.ffjord import (  # the FFJORD toy setting, shared with the demo
    build_flow,
    optimizer_for,
)
from neuraldiffeq.models.cnf import mean_nll

HERE = os.path.dirname(os.path.abspath(__file__))


# -- held-out NLL -----------------------------------------------------------------------------


def gaussian_nll(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out NLL of the maximum-likelihood full-covariance Gaussian."""
    mean = train.mean(0)
    cov = np.cov(train, rowvar=False)
    d = test - mean
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    return float(np.mean(0.5 * (maha + logdet + train.shape[1] * np.log(2 * np.pi))))


def train_flow(
    name: str, steps: int, batch: int, lr: float, rtol: float, seed: int, progress: bool = True
):
    train = nde.datasets.toy_2d(name, 100_000, jax.random.key(1000 + seed))
    flow = build_flow(seed, "exact", rtol)
    optimizer = optimizer_for(steps, lr)

    result = nde.fit(
        flow,
        train,
        nde.MaximumLikelihood(batch_size=batch),
        optimizer=optimizer,
        steps=steps,
        key=jax.random.key(seed),
        progress=progress,
        steps_per_call=50,
    )
    # result.model is the last iterate: MaximumLikelihood is a stochastic strategy
    return result.model, result, np.asarray(train)


def run_nll(args) -> None:
    rows = []
    for name in args.data:
        t0 = time.perf_counter()
        flow, result, train = train_flow(
            name, args.steps, args.batch, args.lr, args.rtol, args.seed, progress=args.progress
        )
        train_s = time.perf_counter() - t0
        test = nde.datasets.toy_2d(name, args.n_test, jax.random.key(2000 + args.seed))
        exact = _with(flow, rtol=1e-5, atol=1e-5, trace="exact")
        t0 = time.perf_counter()
        nll = mean_nll(exact, test, batch_size=1000)
        eval_s = time.perf_counter() - t0
        row = {
            "data": name,
            "steps": args.steps,
            "batch": args.batch,
            "heldout_nll_exact": nll,
            "gaussian_nll": gaussian_nll(train, np.asarray(test)),
            "t1": float(flow.t1),
            "train_seconds": train_s,
            "eval_seconds": eval_s,
            "final_minibatch_loss": float(np.mean(result.losses[-50:])),
            "skipped": result.skipped,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(args.out, exist_ok=True)
        nde.save(os.path.join(args.out, f"ffjord_{name}.eqx"), flow)
        with open(os.path.join(args.out, f"nll_{name}.json"), "w") as f:
            json.dump(row, f, indent=2)


def _with(flow: nde.FFJORD, **changes) -> nde.FFJORD:
    """The same flow (same trained weights and t1) with other solver or trace settings."""
    new = nde.FFJORD(
        flow.field,
        t1=float(flow.t1),
        train_t1=flow.sqrt_t1 is not None,
        trace=changes.get("trace", flow.trace),
        probe=flow.probe,
        solver=flow.solver,
        rtol=changes.get("rtol", flow.rtol),
        atol=changes.get("atol", flow.atol),
        max_steps=changes.get("max_steps", 10000),
        sensitivity=flow.sensitivity,
        base=flow.base,
        dim=flow.dim,
    )
    if flow.sqrt_t1 is not None:
        new = eqx.tree_at(lambda f: f.sqrt_t1, new, flow.sqrt_t1)
    return new


# -- speed against the PyTorch reference ------------------------------------------------------


def _torch_reference(field, trace: str):
    """FFJORD's ODEfunc (ConcatSquash layers, tanh, divergence_bf / divergence_approx) in torch,
    with the weights of our `field` copied in."""
    import torch

    class ConcatSquash(torch.nn.Module):  # FFJORD's ConcatSquashLinear
        def __init__(self, din, dout):
            super().__init__()
            self._layer = torch.nn.Linear(din, dout)
            self._hyper_bias = torch.nn.Linear(1, dout, bias=False)
            self._hyper_gate = torch.nn.Linear(1, dout)

        def forward(self, t, x):
            tt = t.view(1, 1)
            return self._layer(x) * torch.sigmoid(self._hyper_gate(tt)) + self._hyper_bias(tt)

    class ODEfunc(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = torch.nn.ModuleList(layers)
            self.e = None
            self.nfe = 0

        def forward(self, t, states):
            self.nfe += 1
            z = states[0]
            with torch.set_grad_enabled(True):
                z.requires_grad_(True)
                dz = z
                for i, layer in enumerate(self.layers):
                    dz = layer(t, dz)
                    if i < len(self.layers) - 1:
                        dz = torch.tanh(dz)
                if trace == "exact":  # divergence_bf
                    div = 0.0
                    for i in range(z.shape[1]):
                        div += torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i]
                else:  # divergence_approx
                    e_dzdx = torch.autograd.grad(dz, z, self.e, create_graph=True)[0]
                    div = (e_dzdx * self.e).sum(1)
            return dz, -div.view(-1, 1)

    layers = []
    for layer in field.layers:
        tl = ConcatSquash(layer.linear.in_features, layer.linear.out_features)
        with torch.no_grad():
            tl._layer.weight.copy_(torch.tensor(np.asarray(layer.linear.weight)))
            tl._layer.bias.copy_(torch.tensor(np.asarray(layer.linear.bias)))
            tl._hyper_gate.weight.copy_(torch.tensor(np.asarray(layer.gate.weight)))
            tl._hyper_gate.bias.copy_(torch.tensor(np.asarray(layer.gate.bias)))
            tl._hyper_bias.weight.copy_(torch.tensor(np.asarray(layer.shift.weight)))
        layers.append(tl)
    return ODEfunc(layers)


def time_torch(field, x, t1: float, trace: str, repeats: int) -> dict:
    """Median seconds of one training step (NLL + backward) of the torch reference."""
    import torch
    from torchdiffeq import odeint_adjoint

    func = _torch_reference(field, trace)
    xt = torch.tensor(np.asarray(x))
    integration = torch.tensor([0.0, t1])

    def step():
        func.zero_grad()
        func.e = torch.randint(0, 2, xt.shape).to(xt) * 2 - 1  # Rademacher, as ours
        zero = torch.zeros(xt.shape[0], 1)
        z_t, dlogp_t = odeint_adjoint(
            func, (xt, zero), integration, atol=1e-5, rtol=1e-5, method="dopri5"
        )
        z1, delta = z_t[-1], dlogp_t[-1]
        logpz = -0.5 * z1.pow(2).sum(1, keepdim=True) - np.log(2 * np.pi)
        loss = -(logpz - delta).mean()
        loss.backward()
        return float(loss.detach())

    step()  # warm-up
    times, cpus = [], []
    for _ in range(repeats):
        func.nfe = 0
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "impl": "PyTorch reference (torchdiffeq odeint_adjoint)",
        "trace": trace,
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpus),
        "loss": loss,
        "nfe_forward_plus_backward": func.nfe,
    }


def time_jax(flow: nde.FFJORD, x, repeats: int, label: str) -> dict:
    """Median seconds of one compiled training step (NLL + gradient) of ours."""
    strategy = nde.MaximumLikelihood()
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def loss(p, x, key):
        return strategy.loss(eqx.combine(p, static), x, key)

    # compiled as nde.fit compiles its step (nde.compiler_options(): see neuraldiffeq/_compile.py)
    step = jax.jit(jax.value_and_grad(loss), compiler_options=nde.compiler_options())
    key = jax.random.key(3)
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, x, key))
    compile_s = time.perf_counter() - t0
    times, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        value, _ = jax.block_until_ready(step(params, x, key))
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    _, stats = eqx.filter_jit(lambda f, x, k: f.log_prob_and_stats(x, k))(flow, x, key)
    return {
        "impl": f"neuraldiffeq FFJORD ({label})",
        "trace": flow.trace,
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpus),
        "compile_s": compile_s,
        "loss": float(value),
        "forward_nfe": int(stats.nfe),
    }


def run_speed(args) -> None:
    import torch

    # One thread: on small batches torch is fastest single-threaded (no pool overhead), and
    # the machine is shared, where spinning worker threads only slow it down.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.weights:
        trained = nde.load(args.weights)
        field, t1 = trained.field, float(trained.t1)
    else:
        field, t1 = nde.ConcatSquashMLP(2, (64, 64, 64), key=jax.random.key(0)), 0.5
    x = nde.datasets.toy_2d(args.data, args.batch, jax.random.key(7))
    rows = []
    for trace in ("hutchinson", "exact"):
        for label, sensitivity in (("Direct", nde.Direct()), ("Backsolve", nde.Backsolve())):
            flow = nde.FFJORD(
                field,
                t1=t1,
                trace=trace,
                solver="dopri5",
                rtol=1e-5,
                atol=1e-5,
                sensitivity=sensitivity,
            )
            rows.append(time_jax(flow, x, args.repeats, label))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(time_torch(field, x, t1, trace, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
        ref = rows[-1]["median_s"]
        ref_cpu = rows[-1]["median_cpu_s"]
        for r in rows[-3:-1]:
            r["speedup_vs_torch"] = ref / r["median_s"]
            r["cpu_speedup_vs_torch"] = ref_cpu / r["median_cpu_s"]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax on "
        f"{jax.devices()[0].device_kind}, torch on {torch.get_default_device()}",
        "load_average_1min_at_end": os.getloadavg()[0],
        "jax": jax.__version__,
        "torch": torch.__version__,
        "batch": args.batch,
        "repeats": args.repeats,
        "weights": args.weights or "initial",
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    name = (
        "speed_"
        + (os.path.splitext(os.path.basename(args.weights))[0] if args.weights else "initial")
        + ".json"
    )
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


# -- where the time goes ----------------------------------------------------------------------

_YNN = "xla_cpu_experimental_ynn_fusion_type"
PROFILE_OPTIONS = {
    "XLA defaults (YNNPACK fusions)": None,
    "nde.compiler_options() (YNNPACK for dots only)": "ours",
    "no YNNPACK fusions": {_YNN: ""},
    "nde.compiler_options() + XLA code for AVX2 only": {
        _YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
        "xla_cpu_max_isa": "AVX2",
    },
}


def _cpu_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def _profile_trace(field, x, key, trace: str, repeats: int) -> None:
    import jax.numpy as jnp

    from neuraldiffeq.models.cnf import _Dynamics

    opts = nde.compiler_options()
    flow = nde.FFJORD(
        field, t1=0.5, trace=trace, solver="dopri5", rtol=1e-5, atol=1e-5, sensitivity=nde.Direct()
    )
    strategy = nde.MaximumLikelihood()
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def loss(p, x, key):
        return strategy.loss(eqx.combine(p, static), x, key)

    _, stats = eqx.filter_jit(lambda f, x, k: f.log_prob_and_stats(x, k))(flow, x, key)
    nfe = int(stats.nfe)
    forward = jax.jit(loss, compiler_options=opts)
    print(f"\n{trace} trace ({nfe} evaluations in the forward solve)")
    ms = _cpu_ms(lambda: forward(params, x, key), repeats)
    print(f"  forward solve (loss only): {ms:.2f} ms")
    probe = jax.random.rademacher(key, x.shape, dtype=x.dtype) if trace == "hutchinson" else None
    dyn = _Dynamics(field, None, trace, False)
    zero = jnp.zeros(x.shape[:1], x.dtype)

    def evals(d, x, n):
        def body(i, y):
            dz, tr = d(0.1 * i, y, (probe, None))
            return (y[0] + 1e-3 * dz, y[1] + 1e-3 * tr)

        y = jax.lax.fori_loop(0, n, body, (x, zero))
        return jnp.sum(y[0] ** 2) + jnp.sum(y[1])

    loop = eqx.filter_jit(evals, compiler_options=opts)
    loop_grad = eqx.filter_jit(eqx.filter_grad(evals), compiler_options=opts)
    one = _cpu_ms(lambda: loop(dyn, x, 1), repeats)
    many = _cpu_ms(lambda: loop(dyn, x, nfe), repeats)
    many_grad = _cpu_ms(lambda: loop_grad(dyn, x, nfe), repeats)
    print(f"  a loop of 1 / {nfe} evaluations (field + trace): {one:.2f} / {many:.2f} ms")
    print(f"  its gradient: {many_grad:.2f} ms ({many_grad / many:.1f}x the loop)")
    rows = []
    for label, options in PROFILE_OPTIONS.items():
        options = opts if options == "ours" else options
        step = jax.jit(jax.value_and_grad(loss), compiler_options=options)
        t0 = time.perf_counter()
        value, grads = jax.block_until_ready(step(params, x, key))
        compile_s = time.perf_counter() - t0
        entry = float(jax.tree_util.tree_leaves(grads)[5].ravel()[3])
        rows.append((label, step, compile_s, float(value), entry))
    for label, step, compile_s, value, entry in rows:
        ms = _cpu_ms(lambda step=step: step(params, x, key), repeats)
        print(
            f"  training step, {label}: {ms:.2f} ms (compile {compile_s:.0f} s; loss "
            f"{value:.7f}, a gradient entry {entry:.7g})"
        )


def run_profile(args) -> None:
    field = nde.ConcatSquashMLP(2, (64, 64, 64), key=jax.random.key(0))
    x = nde.datasets.toy_2d(args.data, args.batch, jax.random.key(7))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"batch {args.batch}, ConcatSquash 64-64-64 tanh, dopri5 rtol = atol = 1e-5, Direct()")
    print("process CPU time, median of", args.repeats)
    for trace in ("hutchinson", "exact"):
        _profile_trace(field, x, jax.random.key(3), trace, args.repeats)
    print(f"\nload at the end {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    nll = sub.add_parser("nll", help="train and report held-out NLL (exact trace)")
    nll.add_argument(
        "--data", nargs="+", default=["8gaussians", "checkerboard", "pinwheel", "2spirals", "rings"]
    )
    nll.add_argument("--steps", type=int, default=3000)
    nll.add_argument("--batch", type=int, default=512)
    nll.add_argument("--lr", type=float, default=3e-3)
    nll.add_argument("--rtol", type=float, default=1e-4, help="training tolerance (rtol = atol)")
    nll.add_argument("--n-test", type=int, default=20_000)
    nll.add_argument("--seed", type=int, default=0)
    nll.add_argument("--no-progress", dest="progress", action="store_false")
    nll.set_defaults(func=run_nll)
    speed = sub.add_parser("speed", help="time a training step against the PyTorch reference")
    speed.add_argument("--batch", type=int, default=100)
    speed.add_argument("--repeats", type=int, default=5)
    speed.add_argument("--data", default="8gaussians")
    speed.add_argument("--weights", default=None, help="a trained flow (.eqx) to time instead")
    add_threads_option(speed)
    speed.set_defaults(func=run_speed)
    profile = sub.add_parser("profile", help="where our training step's time goes (CPU time)")
    profile.add_argument("--batch", type=int, default=100)
    profile.add_argument("--repeats", type=int, default=20)
    profile.add_argument("--data", default="8gaussians")
    profile.set_defaults(func=run_profile)
    for p in (nll, speed, profile):
        p.add_argument("--out", default=os.path.join(HERE, "out", "ffjord"))
    args = parser.parse_args()
    if args.part == "speed":
        apply_threads(args, speed)  # before JAX's first computation
    args.func(args)


if __name__ == "__main__":
    main()
