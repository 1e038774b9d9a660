# ruff: noqa: E501 (long measurement print lines)
"""Where a latent SDE training step (benchmarks/latent_sde.py, `--batch`, default 64) can spend
its time.

Prints: the matrix-product FLOP count of one training step (posterior and prior drift MLPs,
diffusion nets, GRU encoder; backward counted as twice the forward); the throughput of one
(64, 128) @ (128, 128) float32 product in a chained loop (jnp.dot and torch.mm) and of one large
product; the drift/diffusion networks alone over 200 Euler steps, forward + backward, with
softplus and with the identity (the matrix-product floor), in JAX (lax.scan, no checkpointing)
and PyTorch (autograd); 200 increments of diffrax's VirtualBrownianTree (what one solve draws);
and the GRU encoder, forward and forward + backward (JAX's scan of `eqx.nn.GRUCell`, what
`nde.LatentSDE` runs, and `torch.nn.GRU`, what the torchsde side runs).

    python benchmarks/latent_sde_floor.py --batch 128 --threads 1
"""

import argparse
import statistics
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from one_thread import add_threads_option, apply_threads

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=64)
add_threads_option(parser)
options = parser.parse_args()
apply_threads(options, parser)  # before JAX's first computation
B, L, C, H, N = options.batch, 4, 64, 128, 200
macs_step = B * ((L + C) * H + H * H + H * L + L * H + H * H + H * L + L * (H + H))
gru = B * 100 * 3 * (6 * H + H * H) + B * 100 * H * C

print(
    f"MACs per Euler step {macs_step / 1e6:.3f}M -> fwd {2 * macs_step * N / 1e9:.3f} GFLOP over {N} steps; GRU+ctx fwd {2 * gru / 1e9:.3f} GFLOP;"
    f" fwd+bwd (x3) total {3 * 2 * (macs_step * N + gru) / 1e9:.2f} GFLOP"
)
key = jax.random.split(jax.random.key(0), 8)


def w(k, i, o):
    return jax.random.normal(k, (i, o)) / np.sqrt(i)


P = dict(
    f1=w(key[0], L + C, H),
    f2=w(key[1], H, H),
    f3=w(key[2], H, L),
    h1=w(key[3], L, H),
    h2=w(key[4], H, H),
    h3=w(key[5], H, L),
    g1=jax.random.normal(key[6], (L, H)),
    g2=jax.random.normal(key[7], (L, H)) / 10,
)
ctx = jax.random.normal(key[0], (N, B, C))
z0 = jax.random.normal(key[1], (B, L))
dW = jax.random.normal(key[2], (N, B, L)) * 0.1


def make(act):
    def loss(P):
        def body(z, inp):
            c, dw = inp
            f = act(act(jnp.concatenate([z, c], -1) @ P["f1"]) @ P["f2"]) @ P["f3"]
            h = act(act(z @ P["h1"]) @ P["h2"]) @ P["h3"]
            g = jax.nn.sigmoid(jnp.einsum("blh,lh->bl", act(z[..., None] * P["g1"]), P["g2"]))
            u = (f - h) / g
            return z + 0.01 * f + g * dw, 0.5 * jnp.sum(u**2)

        z, kl = jax.lax.scan(body, z0, (ctx, dW))
        return jnp.sum(z**2) + jnp.sum(kl)

    return jax.jit(jax.value_and_grad(loss))


def t_jax(fn, n=5, r=5):
    jax.block_until_ready(fn(P))
    ws, cs = [], []
    for _ in range(r):
        t0 = time.perf_counter()
        c0 = time.process_time()
        for _ in range(n):
            out = fn(P)
        jax.block_until_ready(out)
        ws.append((time.perf_counter() - t0) / n * 1e3)
        cs.append((time.process_time() - c0) / n * 1e3)
    return min(ws), statistics.median(cs)


import torch  # noqa: E402

tP = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in P.items()}
tctx, tz0, tdW = (torch.tensor(np.asarray(x)) for x in (ctx, z0, dW))


def t_torch(act, r=3):
    ws, cs = [], []
    for _ in range(r + 1):
        t0 = time.perf_counter()
        c0 = time.process_time()
        z = tz0
        kl = 0
        for i in range(N):
            f = act(act(torch.cat([z, tctx[i]], -1) @ tP["f1"]) @ tP["f2"]) @ tP["f3"]
            h = act(act(z @ tP["h1"]) @ tP["h2"]) @ tP["h3"]
            g = torch.sigmoid(torch.einsum("blh,lh->bl", act(z[..., None] * tP["g1"]), tP["g2"]))
            u = (f - h) / g
            kl = kl + 0.5 * (u**2).sum()
            z = z + 0.01 * f + g * tdW[i]
        loss = (z**2).sum() + kl
        loss.backward()
        ws.append((time.perf_counter() - t0) * 1e3)
        cs.append((time.process_time() - c0) * 1e3)
    return min(ws[1:]), statistics.median(cs[1:])


M = 1000
flop = 2 * 64 * 128 * 128


def jax_loop(a, w):
    return jax.lax.fori_loop(0, M, lambda i, x: jnp.dot(x, w) * 0.01 + a, a)


f = jax.jit(jax_loop)
a = jnp.ones((64, 128), jnp.float32)
w = jnp.ones((128, 128), jnp.float32) * 0.01
f(a, w).block_until_ready()
res = []
for _ in range(7):
    t0 = time.perf_counter()
    c0 = time.process_time()
    f(a, w).block_until_ready()
    res.append(((time.perf_counter() - t0), time.process_time() - c0))
wall = min(r[0] for r in res)
cpu = statistics.median(r[1] for r in res)
print(
    f"jax  jnp.dot (64x128)@(128x128) chained x{M}: {wall / M * 1e6:.1f} us/matmul (min wall) -> {flop * M / wall / 1e9:.1f} GFLOP/s; cpu-time {cpu / M * 1e6:.1f} us"
)


# independent large batched version: the whole batch at once, 8 at a time
def jax_big(a, w):
    return jnp.dot(a, w)


g = jax.jit(jax_big)
A = jnp.ones((64 * 64, 128))
g(A, w).block_until_ready()
res = []
for _ in range(7):
    t0 = time.perf_counter()
    g(A, w).block_until_ready()
    res.append(time.perf_counter() - t0)
print(
    f"jax  jnp.dot (4096x128)@(128x128) once: {min(res) * 1e6:.0f} us -> {2 * 4096 * 128 * 128 / min(res) / 1e9:.1f} GFLOP/s"
)
print("torch threads", torch.get_num_threads())
x = torch.ones(64, 128)
W = torch.ones(128, 128) * 0.01
b = torch.ones(64, 128)
res = []
with torch.no_grad():
    for _ in range(7):
        t0 = time.perf_counter()
        c0 = time.process_time()
        y = x
        for _ in range(M):
            y = torch.addmm(b, y, W, alpha=0.01)
        res.append((time.perf_counter() - t0, time.process_time() - c0))
wall = min(r[0] for r in res)
cpu = statistics.median(r[1] for r in res)
print(
    f"torch addmm (64x128)@(128x128) chained x{M}: {wall / M * 1e6:.1f} us/matmul -> {flop * M / wall / 1e9:.1f} GFLOP/s; cpu-time {cpu / M * 1e6:.1f} us"
)
res = []
with torch.no_grad():
    for _ in range(7):
        t0 = time.perf_counter()
        y = x
        for _ in range(M):
            y = torch.mm(y, W)
        res.append(time.perf_counter() - t0)
print(
    f"torch mm (64x128)@(128x128) chained x{M}: {min(res) / M * 1e6:.1f} us/matmul -> {flop * M / min(res) / 1e9:.1f} GFLOP/s"
)
X = torch.ones(4096, 128)
res = []
for _ in range(7):
    t0 = time.perf_counter()
    torch.mm(X, W)
    res.append(time.perf_counter() - t0)
print(
    f"torch mm (4096x128)@(128x128) once: {min(res) * 1e6:.0f} us -> {2 * 4096 * 128 * 128 / min(res) / 1e9:.1f} GFLOP/s"
)

fl = 3 * 2 * macs_step * N / 1e9
import neuraldiffeq as nde  # noqa: E402
from neuraldiffeq.models.latent_sde import softplus as nde_softplus  # noqa: E402

for name, ja, ta in [
    ("softplus", jax.nn.softplus, torch.nn.functional.softplus),
    ("softplus (nde.LatentSDE's)", nde_softplus, torch.nn.functional.softplus),
    ("identity", lambda x: x, lambda x: x),
]:
    jw, jc = t_jax(make(ja))
    tw, tc = t_torch(ta)
    print(
        f"{name}: jax wall min {jw:.1f} ms (cpu {jc:.1f}) = {fl / jw * 1e3:.1f} GFLOP/s; torch wall min {tw:.1f} ms (cpu {tc:.1f}) = {fl / tw * 1e3:.1f} GFLOP/s",
        flush=True,
    )


def timed(name, f, *args, n=5, r=5):
    f = eqx.filter_jit(f)
    jax.block_until_ready(f(*args))
    cs, ws = [], []
    for _ in range(r):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            out = f(*args)
        jax.block_until_ready(out)
        cs.append((time.process_time() - c0) / n * 1e3)
        ws.append((time.perf_counter() - t0) / n * 1e3)
    print(f"{name}: wall min {min(ws):.1f} ms (cpu {statistics.median(cs):.1f})", flush=True)


bm = diffrax.VirtualBrownianTree(
    0.0,
    2.0,
    tol=0.01 / 16,
    shape=jax.ShapeDtypeStruct((B * (L + 1),), jnp.float32),
    key=jax.random.key(0),
    levy_area=diffrax.BrownianIncrement,
)
grid = jnp.linspace(0, 2, N + 1)
spans = jnp.stack([grid[:-1], grid[1:]], -1)
timed(
    f"VirtualBrownianTree, {N} increments of shape ({B * (L + 1)},) (tol dt/16)",
    lambda s: jax.lax.scan(
        lambda c, x: (c + bm.evaluate(x[0], x[1]), None), jnp.zeros(B * (L + 1)), s
    )[0],
    spans,
)
cell = eqx.nn.GRUCell(6, H, key=jax.random.key(0))
xs = jnp.ones((100, B, 6))


def gru_loss(cell, xs):
    def step(h, x):
        h = jax.vmap(cell)(x, h)
        return h, h

    return jnp.sum(jax.lax.scan(step, jnp.zeros((B, H)), xs, reverse=True)[1] ** 2)


timed(f"GRU encoder (100 steps, batch {B}, hidden 128), forward", gru_loss, cell, xs)
timed("GRU encoder, forward + backward", eqx.filter_value_and_grad(gru_loss), cell, xs)
tgru, txs = torch.nn.GRU(6, H), torch.ones(100, B, 6)
cs, ws = [], []
for _ in range(6):
    t0, c0 = time.perf_counter(), time.process_time()
    out, _ = tgru(torch.flip(txs, dims=(0,)))
    (out**2).sum().backward()
    cs.append((time.process_time() - c0) * 1e3)
    ws.append((time.perf_counter() - t0) * 1e3)
print(
    f"torch.nn.GRU, forward + backward: wall min {min(ws[1:]):.1f} ms "
    f"(cpu {statistics.median(cs[1:]):.1f})",
    flush=True,
)

# the FLOPs of torchsde's training step by PyTorch's own counter (benchmarks/latent_sde.py)
import sys  # noqa: E402

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, "benchmarks")
import latent_sde as bench  # noqa: E402

settings = argparse.Namespace(
    batch=B, latent=L, context=C, hidden=H, dt=0.01, torch_steps=1, torch_repeats=1
)
with FlopCounterMode(display=False) as counter:
    bench.bench_torchsde(nde.datasets.stochastic_lorenz(B, key=jax.random.key(0)), settings)
print(
    f"torch FlopCounterMode: {counter.get_total_flops() / 2 / 1e9:.3f} GFLOP per training step "
    "(warm-up + one timed step, halved)"
)
