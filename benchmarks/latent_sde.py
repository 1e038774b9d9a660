"""Latent SDE training step: neuraldiffeq (JAX/diffrax) vs torchsde, side by side in one process.

Problem (torchsde's `examples/latent_sde_lorenz.py`, Li et al. 2020 section 7.2): `--batch`
paths of the stochastic Lorenz system observed at 100 times on [0, 2], normalised, noise 0.01
(`nde.datasets.stochastic_lorenz`; the same array for both contenders). Model, identical on both
sides: a GRU encoder (hidden `--hidden`) read backwards giving a `--context`-sized context per
observation time; q(z0) from the first context by a linear layer; posterior drift MLP
(latent + context -> hidden -> hidden -> latent, softplus), prior drift MLP (latent -> hidden
-> hidden -> latent), one diffusion MLP per latent component (1 -> hidden -> 1, sigmoid); a linear
map to the 3 observed coordinates; learnable p(z0). Loss = -(log-likelihood - KL), with the path
KL integrated alongside the latent state; Itô Euler–Maruyama with constant steps `--dt`;
gradients by backpropagating through the solver (neuraldiffeq `Direct()`, torchsde `sdeint`);
one Adam(1e-2) update per step. Brownian motion: ours the model's default for `Direct()` (one
increment per grid step, `nde.GridBrownianPath`), with `--tree` also a row with diffrax's
`VirtualBrownianTree` (`brownian="tree"`); torchsde its default (a Brownian interval).

Per contender: `--steps` steps after a warm-up (compilation for JAX), timed; the table shows
the median over `--repeats` repeats of the mean step time.

    python benchmarks/latent_sde.py --batch 128 --steps 3 --repeats 3 \
        --torch-steps 1 --torch-repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import equinox as eqx
import jax
import numpy as np
import optax
from one_thread import add_threads_option, apply_threads

import neuraldiffeq as nde

LR = 1e-2
#: median CPU time (all threads of the process) per step, by contender: steadier than wall
#: time on a shared machine
CPU_MS: dict[str, float] = {}


def build(args, key=0, brownian="auto"):
    return nde.LatentSDE(
        args.latent,
        3,
        context_size=args.context,
        hidden_size=args.hidden,
        obs_std=0.01,
        dt0=args.dt,
        brownian=brownian,
        key=jax.random.key(key),
    )


def bench_neuraldiffeq(data, args, brownian="auto"):
    model = build(args, brownian=brownian)
    strategy = nde.ELBO()
    prepared = strategy.prepare(model, data)
    optimizer = optax.adam(LR)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def step(params, opt_state, prepared, key):
        def loss_of(p):
            return strategy.loss(eqx.combine(p, static), prepared, key)

        value, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    params, opt_state, value = step(params, opt_state, prepared, jax.random.key(0))
    value.block_until_ready()
    compile_s = time.perf_counter() - t0
    times, cpu, key = [], [], jax.random.key(1)
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            key, sub = jax.random.split(key)
            params, opt_state, value = step(params, opt_state, prepared, sub)
        value.block_until_ready()
        times.append((time.perf_counter() - t0) / args.steps)
        cpu.append((time.process_time() - c0) / args.steps)
    CPU_MS[brownian] = statistics.median(cpu) * 1e3
    return statistics.median(times) * 1e3, compile_s, float(value)


def bench_fit(data, args):
    """The same step through `nde.fit` (what a user calls), per step after the first call."""
    result = nde.fit(
        build(args),
        data,
        nde.ELBO(),
        optimizer=optax.adam(LR),
        steps=args.steps + 1,
        progress=False,
    )
    return (result.times[-1] - result.times[0]) / args.steps * 1e3


def bench_torchsde(data, args):
    import torch
    import torchsde
    from torch import nn

    torch.manual_seed(0)
    latent, context, hidden = args.latent, args.context, args.hidden

    class TorchLatentSDE(nn.Module):
        sde_type, noise_type = "ito", "diagonal"

        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(input_size=6, hidden_size=hidden)  # values and mask, as ours
            self.ctx_out = nn.Linear(hidden, context)
            self.qz0 = nn.Linear(context, 2 * latent)
            self.f_net = nn.Sequential(
                nn.Linear(latent + context, hidden),
                nn.Softplus(),
                nn.Linear(hidden, hidden),
                nn.Softplus(),
                nn.Linear(hidden, latent),
            )
            self.h_net = nn.Sequential(
                nn.Linear(latent, hidden),
                nn.Softplus(),
                nn.Linear(hidden, hidden),
                nn.Softplus(),
                nn.Linear(hidden, latent),
            )
            self.g_nets = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(1, hidden), nn.Softplus(), nn.Linear(hidden, 1), nn.Sigmoid()
                )
                for _ in range(latent)
            )
            self.projector = nn.Linear(latent, 3)
            self.pz0_mean = nn.Parameter(torch.zeros(1, latent))
            self.pz0_logstd = nn.Parameter(torch.zeros(1, latent))
            self._ctx = None

        def f(self, t, y):  # posterior drift, context piecewise constant as ours
            ts, ctx = self._ctx
            i = min(int(torch.searchsorted(ts, t, right=True)), len(ts) - 1)
            return self.f_net(torch.cat((y, ctx[i]), dim=1))

        def h(self, t, y):
            return self.h_net(y)

        def g(self, t, y):
            parts = torch.split(y, 1, dim=1)
            return torch.cat([net(p) for net, p in zip(self.g_nets, parts, strict=True)], dim=1)

        def forward(self, xs, ts):  # xs (T, B, 3)
            inputs = torch.cat([xs, torch.ones_like(xs)], dim=-1)
            out, _ = self.gru(torch.flip(inputs, dims=(0,)))
            ctx = torch.flip(self.ctx_out(out), dims=(0,))
            self._ctx = (ts, ctx)
            qz0_mean, qz0_logstd = self.qz0(ctx[0]).chunk(2, dim=1)
            z0 = qz0_mean + qz0_logstd.exp() * torch.randn_like(qz0_mean)
            zs, log_ratio = torchsde.sdeint(self, z0, ts, dt=args.dt, logqp=True, method="euler")
            pred = self.projector(zs)
            log_pxs = torch.distributions.Normal(pred, 0.01).log_prob(xs).sum(dim=(0, 2)).mean()
            qz0 = torch.distributions.Normal(qz0_mean, qz0_logstd.exp())
            pz0 = torch.distributions.Normal(self.pz0_mean, self.pz0_logstd.exp())
            kl0 = torch.distributions.kl_divergence(qz0, pz0).sum(dim=1).mean()
            return log_pxs, kl0 + log_ratio.sum(dim=0).mean()

    model = TorchLatentSDE()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    xs = torch.tensor(np.swapaxes(np.asarray(data.ys), 0, 1), dtype=torch.float32)
    ts = torch.tensor(np.asarray(data.ts), dtype=torch.float32)

    def step():
        optimizer.zero_grad()
        log_pxs, kl = model(xs, ts)
        loss = -log_pxs + kl
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up
    times, cpu = [], []
    for _ in range(args.torch_repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.torch_steps):
            value = step()
        times.append((time.perf_counter() - t0) / args.torch_steps)
        cpu.append((time.process_time() - c0) / args.torch_steps)
    CPU_MS["torchsde"] = statistics.median(cpu) * 1e3
    return statistics.median(times) * 1e3, value, torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--latent", type=int, default=4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-steps", type=int, default=2)
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--no-fit", action="store_true", help="skip the nde.fit measurement")
    parser.add_argument(
        "--tree", action="store_true", help="also time our step with brownian='tree'"
    )
    add_threads_option(parser)
    args = parser.parse_args()
    apply_threads(args, parser)
    data = nde.datasets.stochastic_lorenz(args.batch, key=jax.random.key(0))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(
        f"batch {args.batch}, latent {args.latent}, context {args.context}, hidden {args.hidden}, "
        f"100 observations on [0, 2], dt {args.dt} ({int(round(2 / args.dt))} Euler steps); "
        f"neuraldiffeq {args.steps} steps x {args.repeats} repeats, torchsde {args.torch_steps} "
        f"steps x {args.torch_repeats} repeats"
    )
    ours, compile_s, loss_ours = bench_neuraldiffeq(data, args)
    print(f"neuraldiffeq jitted step: {ours:.1f} ms (compile {compile_s:.1f} s)", flush=True)
    rows = [("neuraldiffeq (jitted step)", ours, CPU_MS["auto"])]
    if args.tree:
        tree, tree_compile_s, _ = bench_neuraldiffeq(data, args, brownian="tree")
        print(f"neuraldiffeq jitted step, brownian='tree': {tree:.1f} ms", flush=True)
        rows.append(("neuraldiffeq (jitted step, brownian='tree')", tree, CPU_MS["tree"]))
    if not args.no_fit:
        fit_ms = bench_fit(data, args)
        print(f"neuraldiffeq nde.fit: {fit_ms:.1f} ms / step", flush=True)
        rows.append(("neuraldiffeq nde.fit + nde.ELBO", fit_ms, None))
    theirs, loss_theirs, threads = bench_torchsde(data, args)
    print(f"torchsde: {theirs:.1f} ms / step (torch threads {threads})", flush=True)
    rows.append(("torchsde sdeint (euler, logqp=True)", theirs, CPU_MS["torchsde"]))
    print(
        "\n| contender | median ms / training step | vs torchsde | median CPU ms / step | "
        "vs torchsde (CPU) |\n|---|---|---|---|---|"
    )
    for name, ms, cpu_ms in rows:
        ratio = "1.0x" if name.startswith("torchsde") else f"{theirs / ms:.1f}x faster"
        cpu_ratio = "" if cpu_ms is None else f"{CPU_MS['torchsde'] / cpu_ms:.1f}x"
        cpu_text = "" if cpu_ms is None else f"{cpu_ms:.1f}"
        print(f"| {name} | {ms:.1f} | {ratio} | {cpu_text} | {cpu_ratio} |")
    print(
        f"\nJAX compile time of the step: {compile_s:.1f} s; last losses: ours {loss_ours:.4g}, "
        f"torchsde {loss_theirs:.4g} (same data and model, different initial weights)"
    )


if __name__ == "__main__":
    main()
