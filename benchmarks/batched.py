"""Batched solves where every sample needs its own number of steps, against torchode and torchdyn.

Two parts, each side by side in one process on the same problem, from the same weights:

- `vdp`: a batch of van der Pol oscillators, mu log-uniform in [0.1, 30] (a stiffness spread
  that makes one sample need ~30 Dopri5 steps and another ~550), plus a small MLP correction
  (2 -> 32 -> 32 -> 2, tanh: a universal differential equation, so that a training step has
  weights to differentiate). Saved at 11 times on [0, 10]; Dopri5, rtol = atol = 1e-5, max_steps
  1024 everywhere.
  Timed: the forward solve, and a training step (mean-square loss against the pure van der Pol
  trajectories + gradient with respect to the MLP, discretise-then-optimise on every side).
    * ours: `jax.vmap` of `nde.NeuralODE(...)(ts, y0, mu)` over the batch (the documented way to
      batch a model: each sample is its own solve with its own adaptive steps), `jax.jit`, with
      `nde.Direct()` (O(log max_steps) checkpoints, steps recomputed between them) and with
      `nde.Direct(checkpoints=max_steps)` (every step kept, as torch's autograd keeps them);
      and `NeuralODE.batched` (the same per-sample steps, the batch stepped inside the loop and
      moved to smaller batches as samples finish: `neuraldiffeq.solve.batched`), with
      `nde.Direct()` and `nde.Direct(checkpoints=256)` (more memory, fewer re-run steps);
      our rows must agree with the first (values and gradients) to rounding;
    * torchode: its parallel solver (`AutoDiffAdjoint`, `IntegralController`, per-sample step
      sizes and the same per-sample RMS error norm as diffrax);
    * torchdiffeq: `odeint` on the batch as one system (shared steps: its only way).
- `classifier`: a neural ODE classifier on our `circles` toy set (label: inner or outer circle),
  field MLP 2 -> 64 -> 64 -> 2 (tanh) over t in [0, 1], a linear read-out, cross-entropy; Tsit5,
  rtol = atol = 1e-4. Timed: loss + gradient. Ours: `nde.ODEBlock` vmapped over the batch;
  torchdyn: `torchdyn.core.NeuralODE` (sensitivity "autograd"), one solve for the batch.

Both parts check that the sides solve the same problem: the final states (and the losses) must
agree to a stated tolerance, else the script exits with an error. Torch runs single-threaded (at
these sizes its fastest; the machine may be shared) on its default device (the CPU unless
`torch.set_default_device` says otherwise, as `on_accelerator.sh` does). Medians over `--repeats`,
wall and process CPU time.

    python benchmarks/batched.py --repeats 5
    python benchmarks/batched.py --quick            # a short dry run (batch 16, 1 repeat)
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

import neuraldiffeq as nde

T1, N_SAVE = 10.0, 11
RTOL = ATOL = 1e-5
MU_RANGE = (0.1, 30.0)
MAX_STEPS = 1024  # every side; the stiffest sample of 256 needs ~550


def median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median process CPU seconds of `fn()` after a warm-up call.

    CPU time is reported too because a shared machine's wall times are noisy: it counts the
    work done, wherever the scheduler put it (for jax, all of its threads together).
    """
    out = fn()  # warm-up (compiles ours)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


# -- the van der Pol batch --------------------------------------------------------------------


class VanDerPolUDE(eqx.Module):
    """dy/dt = van der Pol(mu) + scale * mlp(y), for one sample y (2,) and its mu (args)."""

    mlp: eqx.nn.MLP
    scale: float = eqx.field(static=True)

    def __call__(self, t, y, mu):
        x, v = y[0], y[1]
        vdp = jnp.stack([v, mu * (1 - x**2) * v - x])
        return vdp + self.scale * self.mlp(y)


def vdp_problem(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lo, hi = np.log(MU_RANGE[0]), np.log(MU_RANGE[1])
    mu = np.exp(rng.uniform(lo, hi, batch)).astype(np.float32)
    y0 = np.stack([rng.uniform(1.0, 2.5, batch), rng.uniform(-1.0, 1.0, batch)], 1)
    ts = np.linspace(0.0, T1, N_SAVE, dtype=np.float32)
    mlp = eqx.nn.MLP(2, 2, 32, 2, activation=jnp.tanh, key=jax.random.key(seed))
    return ts, y0.astype(np.float32), mu, mlp


def ours_vdp(ts, y0, mu, mlp, repeats: int, sensitivity, label: str, batched: bool) -> dict:
    model = nde.NeuralODE(
        VanDerPolUDE(mlp, 0.1),
        "dopri5",
        rtol=RTOL,
        atol=ATOL,
        max_steps=MAX_STEPS,
        sensitivity=sensitivity,
    )
    ts, y0, mu = jnp.asarray(ts), jnp.asarray(y0), jnp.asarray(mu)
    if batched:  # the library's batched solve: the same per-sample steps
        batched_fn = lambda ts, y0, mu: model.batched(ts, y0, mu)  # noqa: E731
    else:  # each sample its own adaptive solve
        batched_fn = jax.vmap(model, in_axes=(None, 0, 0))
    # targets: the pure van der Pol trajectories (no MLP), tightly solved
    pure = nde.NeuralODE(VanDerPolUDE(mlp, 0.0), "dopri5", rtol=1e-7, atol=1e-7, max_steps=100_000)
    target = jax.jit(jax.vmap(pure, in_axes=(None, 0, 0)))(ts, y0, mu)

    forward = jax.jit(batched_fn)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        ys = m.batched(ts, y0, mu) if batched else jax.vmap(m, in_axes=(None, 0, 0))(ts, y0, mu)
        return jnp.mean((ys - target) ** 2)

    train = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(forward(ts, y0, mu))
    compile_forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(train(params))
    compile_train = time.perf_counter() - t0
    fwd_s, fwd_cpu, ys = median_time(lambda: jax.block_until_ready(forward(ts, y0, mu)), repeats)
    train_s, train_cpu, (value, grads) = median_time(
        lambda: jax.block_until_ready(train(params)), repeats
    )
    steps = jax.jit(jax.vmap(lambda y, m: model.solve(ts, y, m).stats["num_steps"]))(y0, mu)
    how = "NeuralODE.batched" if batched else "jax.vmap of NeuralODE"
    return {
        "impl": f"neuraldiffeq ({how}, per-sample steps, {label})",
        "forward_s": fwd_s,
        "train_s": train_s,
        "forward_cpu_s": fwd_cpu,
        "train_cpu_s": train_cpu,
        "compile_forward_s": compile_forward,
        "compile_train_s": compile_train,
        "loss": float(value),
        "steps_min_median_max": [int(np.min(steps)), int(np.median(steps)), int(np.max(steps))],
        "final": np.asarray(ys[:, -1]),
        "target": np.asarray(target),
        "grad_norm": float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads)))),
        "grads": [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)],
    }


def torch_mlp(mlp):
    """The eqx MLP's weights in a torch Sequential (same activations)."""
    import torch

    layers = []
    for i, lin in enumerate(mlp.layers):
        t = torch.nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            t.weight.copy_(torch.tensor(np.asarray(lin.weight)))
            t.bias.copy_(torch.tensor(np.asarray(lin.bias)))
        layers.append(t)
        if i < len(mlp.layers) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def torch_vdp(ts, y0, mu, mlp, target, repeats: int, which: str) -> dict:
    import torch

    net = torch_mlp(mlp)
    y0_t, mu_t, ts_t = torch.tensor(y0), torch.tensor(mu), torch.tensor(ts)
    target_t = torch.tensor(np.asarray(target))  # (B, T, 2)

    def field(t, y, mu):  # y (B, 2), mu (B,)
        x, v = y[:, 0], y[:, 1]
        vdp = torch.stack([v, mu * (1 - x**2) * v - x], 1)
        return vdp + 0.1 * net(y)

    if which == "torchode":
        import torchode as to

        term = to.ODETerm(field, with_args=True)
        method = to.Dopri5(term=term)
        controller = to.IntegralController(atol=ATOL, rtol=RTOL, term=term)
        solver = to.AutoDiffAdjoint(method, controller, max_steps=MAX_STEPS)
        t_eval = ts_t.repeat(len(y0), 1)

        def solve():
            sol = solver.solve(to.InitialValueProblem(y0=y0_t, t_eval=t_eval), args=mu_t)
            return sol.ys, sol.stats["n_steps"]  # (B, T, 2)

        label = "torchode (AutoDiffAdjoint, IntegralController, per-sample steps)"
    else:
        from torchdiffeq import odeint

        def solve():
            ys = odeint(lambda t, y: field(t, y, mu_t), y0_t, ts_t, rtol=RTOL, atol=ATOL)
            return ys.transpose(0, 1), None  # (B, T, 2)

        label = "torchdiffeq (odeint, the batch as one system)"

    def forward():
        with torch.no_grad():
            return solve()

    def train():
        net.zero_grad()
        ys, _ = solve()
        loss = torch.mean((ys - target_t) ** 2)
        loss.backward()
        return float(loss.detach())

    fwd_s, fwd_cpu, (ys, steps) = median_time(forward, repeats)
    train_s, train_cpu, value = median_time(train, repeats)
    grad_norm = float(torch.sqrt(sum(torch.sum(p.grad**2) for p in net.parameters())))
    row = {
        "impl": label,
        "forward_s": fwd_s,
        "train_s": train_s,
        "forward_cpu_s": fwd_cpu,
        "train_cpu_s": train_cpu,
        "loss": value,
        "final": ys[:, -1].cpu().numpy(),
        "grad_norm": grad_norm,
    }
    if steps is not None:
        s = steps.cpu().numpy()
        row["steps_min_median_max"] = [int(s.min()), int(np.median(s)), int(s.max())]
    return row


def run_vdp(args) -> list[dict]:
    ts, y0, mu, mlp = vdp_problem(args.batch)
    rows = []
    # nde.Direct() keeps O(log max_steps) checkpoints and recomputes steps between them;
    # checkpoints=MAX_STEPS keeps every step, as torch's autograd does (same gradient).
    for sensitivity, label, batched in (
        (nde.Direct(), "Direct()", False),
        (nde.Direct(checkpoints=MAX_STEPS), f"Direct(checkpoints={MAX_STEPS})", False),
        (nde.Direct(), "Direct()", True),
        (nde.Direct(checkpoints=256), "Direct(checkpoints=256)", True),
    ):
        if batched or not args.batched_only:
            rows.append(ours_vdp(ts, y0, mu, mlp, args.repeats, sensitivity, label, batched))
    target = rows[0]["target"]  # handed to torch, so every side fits the same numbers
    for r in rows:
        r.pop("target")
    # our rows compute the same gradient (the same steps): relative difference to the first
    first = rows[0]["grads"]
    scale = max(float(np.max(np.abs(g))) for g in first)
    for r in rows:
        grads = r.pop("grads")
        r["grad_max_rel_diff_vs_first"] = (
            max(float(np.max(np.abs(a - b))) for a, b in zip(grads, first, strict=True)) / scale
        )
    for which in () if args.no_torch else ("torchode", "torchdiffeq"):
        rows.append(torch_vdp(ts, y0, mu, mlp, target, args.torch_repeats, which))
    return rows


def circles(batch: int, seed: int = 0):
    x = np.asarray(nde.datasets.toy_2d("circles", batch, jax.random.key(seed)))
    y = (np.linalg.norm(x, axis=1) < 2.25).astype(np.int32)  # radii 3 and 1.5
    return x, y


class BatchField(eqx.Module):
    """The MLP on every row of a batch (B, 2): the batch as one system, as torchdyn solves it."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y)


def run_classifier(args) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torchdyn.core import NeuralODE as TorchdynODE

    x, labels = circles(args.batch)
    k1, k2 = jax.random.split(jax.random.key(1))
    mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jnp.tanh, key=k1)
    readout = eqx.nn.Linear(2, 2, key=k2)
    xj, yj = jnp.asarray(x), jnp.asarray(labels)
    settings = dict(t1=1.0, solver="tsit5", rtol=1e-4, atol=1e-4, sensitivity=nde.Direct())
    rows = []
    for label, field, per_sample in (
        ("nde.ODEBlock, one batched system (as torchdyn)", BatchField(mlp), False),
        ("nde.ODEBlock vmapped, per-sample steps", nde.autonomous(mlp), True),
    ):
        model = (nde.ODEBlock(field, **settings), readout)

        def loss(m, per_sample=per_sample):
            block, head = m
            z = jax.vmap(block)(xj) if per_sample else block(xj)
            logits = jax.vmap(head)(z)
            picked = jnp.take_along_axis(logits, yj[:, None], 1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, -1) - picked), z

        params, static = eqx.partition(model, eqx.is_inexact_array)
        step = jax.jit(
            jax.value_and_grad(lambda p, s=static: loss(eqx.combine(p, s)), has_aux=True)
        )
        t0 = time.perf_counter()
        jax.block_until_ready(step(params))
        compile_s = time.perf_counter() - t0
        wall, cpu, ((value, z), _) = median_time(
            lambda f=step, p=params: jax.block_until_ready(f(p)), args.repeats
        )
        rows.append(
            {
                "impl": f"neuraldiffeq ({label}, Tsit5)",
                "train_s": wall,
                "train_cpu_s": cpu,
                "compile_s": compile_s,
                "loss": float(value),
                "final": np.asarray(z),
            }
        )

    net = torch_mlp(mlp)
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(np.asarray(readout.weight)))
        head.bias.copy_(torch.tensor(np.asarray(readout.bias)))
    node = TorchdynODE(net, solver="tsit5", sensitivity="autograd", atol=1e-4, rtol=1e-4)
    xt, yt = torch.tensor(x), torch.tensor(labels, dtype=torch.long)
    t_span = torch.tensor([0.0, 1.0])

    def torch_step():
        net.zero_grad()
        head.zero_grad()
        _, traj = node(xt, t_span)
        zt = traj[-1]
        out = F.cross_entropy(head(zt), yt)
        out.backward()
        return float(out.detach()), zt.detach().cpu().numpy()

    wall, cpu, (torch_value, zt) = median_time(torch_step, args.torch_repeats)
    rows.append(
        {
            "impl": "torchdyn NeuralODE (tsit5, sensitivity='autograd', one batched system)",
            "train_s": wall,
            "train_cpu_s": cpu,
            "loss": torch_value,
            "final": zt,
        }
    )
    return rows


# -- checks and report ------------------------------------------------------------------------


def check_same(rows: list[dict], tol: float, what: str) -> list[str]:
    """Every other row's final states against the first's: max abs difference <= tol (times
    the states' scale when above 1), else a failure message."""
    ours = rows[0]["final"]
    scale = max(1.0, float(np.max(np.abs(ours))))
    failures = []
    for r in rows[1:]:
        diff = float(np.max(np.abs(r["final"] - ours)))
        r["max_abs_diff_final_vs_first"] = diff
        r["loss_rel_diff_vs_first"] = abs(r["loss"] - rows[0]["loss"]) / abs(rows[0]["loss"])
        if not diff <= tol * scale:
            failures.append(f"{what}: {r['impl']} final states differ from ours by {diff:.3g}")
    return failures


def add_ratios(rows: list[dict], ours: list[dict], keys: tuple[str, ...]) -> None:
    """peer time / our time, for each of our rows (wall and CPU)."""
    for r in rows:
        if r in ours:
            continue
        for o in ours:
            tag = "" if len(ours) == 1 else f" vs {o['impl']}"
            for k in keys:
                for suffix in ("_s", "_cpu_s"):
                    if k + suffix in r and k + suffix in o:
                        r[f"{k}{suffix[:-2]}_ratio{tag}"] = r[k + suffix] / o[k + suffix]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--part", choices=("vdp", "classifier", "all"), default="all")
    parser.add_argument(
        "--batched-only",
        action="store_true",
        help="of ours, only NeuralODE.batched (skips the two jax.vmap rows)",
    )
    parser.add_argument("--no-torch", action="store_true", help="ours only")
    parser.add_argument("--quick", action="store_true", help="batch 16, one repeat: a dry run")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.torch_repeats = 16, 1, 1

    import torch

    if args.part in ("classifier", "all") and not args.no_torch:
        try:
            import torchdyn.core  # noqa: F401
        except Exception as error:  # noqa: BLE001 — any import failure: say why and how to fix
            sys.exit(
                f"torchdyn cannot be imported ({type(error).__name__}: {error}). If that is "
                "'operator torchvision::nms does not exist': torchdyn's dependencies pulled "
                "PyPI's torchvision, which does not load beside the CPU build of torch, and "
                "torchdyn's NeuralODE does not need it: `pip uninstall -y torchvision`. Or run "
                "--part vdp."
            )
    torch.set_num_threads(1)
    failures = []
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax on "
        f"{jax.devices()[0].device_kind}, torch on {torch.get_default_device()} (1 CPU thread)",
        "jax": jax.__version__,
        "torch": torch.__version__,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch_repeats": args.torch_repeats,
    }
    if args.part in ("vdp", "all"):
        rows = run_vdp(args)
        # The stiffest samples jump between branches of the limit cycle; a phase error of a
        # tolerance-sized step there moves the state a lot, hence a looser bound than rtol.
        failures += check_same(rows, 5e-2, "vdp")
        # our rows make the same steps: their gradients may differ by rounding only
        failures += [
            f"vdp: {r['impl']} gradient differs from the first row's by "
            f"{r['grad_max_rel_diff_vs_first']:.3g} (relative)"
            for r in rows
            if r.get("grad_max_rel_diff_vs_first", 0.0) > 1e-4
        ]
        ours = [r for r in rows if r["impl"].startswith("neuraldiffeq")]
        add_ratios(rows, ours, ("forward", "train"))
        report["vdp"] = rows
    if args.part in ("classifier", "all"):
        rows = run_classifier(args)
        failures += check_same(rows, 1e-2, "classifier")
        add_ratios(rows, rows[:2], ("train",))
        report["classifier"] = rows
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    for part in ("vdp", "classifier"):
        for r in report.get(part, []):
            r.pop("final", None)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    if failures:
        sys.exit("the sides do not solve the same problem:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
