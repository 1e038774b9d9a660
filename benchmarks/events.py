"""Bouncing ball, loss and gradient through the bounce times: nde.HybridODE vs torchdiffeq.

The problem of torchdiffeq's `examples/bouncing_ball.py` (its `odeint_event`), side by side in one
process: a ball dropped from 10 m at rest, gravity g = 9.81, restitution e = 0.8, float64, dopri5
at rtol = atol = 1e-8 in both. The loss is the sum of the first four bounce times plus the squared
height at t = 8 s (just after the fourth bounce); one step is the loss and its gradient with respect
to (g, e).

- torchdiffeq: `odeint_event` for each bounce (its event time is differentiated by the
  implicit-function theorem), the jump v <- -e v, then `odeint` to t = 8; reverse mode through
  `odeint` (not the adjoint), as in its example. After a bounce the height is set to |height|,
  so that its event function starts positive (torchdiffeq takes an event function's sign at the
  start of a solve as its reference; round-off below zero would end the next solve at once);
- neuraldiffeq: one compiled `jax.value_and_grad` of the same loss through `nde.HybridODE`
  (sensitivity `Direct`), built from the field, and again with the events on an
  `nde.SecondOrderNeuralODE` of q'' = -g (`nde.HybridODE(model, events)`).

Both gradients are compared with the closed form. Prints the median time per step of each and
the ratio. Run: `python benchmarks/events.py --repeats 20` (needs `torch` and `torchdiffeq`, the
`bench` extra).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402

import neuraldiffeq as nde  # noqa: E402

G, E, H0, T_END, BOUNCES = 9.81, 0.8, 10.0, 8.0, 4
TOL = 1e-8


def closed_form(p):
    """The loss in closed form (and its gradient, by jax.grad): the reference for both."""
    g, e = p[0], p[1]
    t, v = jnp.sqrt(2 * H0 / g), jnp.sqrt(2 * H0 * g)
    total = t
    for _ in range(BOUNCES - 1):
        v = e * v
        t = t + 2 * v / g
        total = total + t
    v = e * v
    s = T_END - t
    return total + (v * s - 0.5 * g * s * s) ** 2


class Fall(eqx.Module):
    g: jax.Array

    def __call__(self, t, y, args):
        return jnp.stack([y[1], -self.g + 0 * y[0]])


class Bounce(eqx.Module):
    e: jax.Array

    def __call__(self, t, y, args):
        return jnp.stack([y[0], -self.e * y[1]])


class Gravity(eqx.Module):
    """The acceleration of a second-order model: q'' = -g."""

    g: jax.Array

    def __call__(self, y):
        return jnp.stack([-self.g + 0 * y[0]])


def jax_step(base: str = "field"):
    def loss(p):
        floor = nde.Event(lambda t, y, args: y[0], direction="down", jump=Bounce(p[1]))
        settings = dict(solver="dopri5", rtol=TOL, atol=TOL, sensitivity=nde.Direct())
        if base == "field":
            model = nde.HybridODE(Fall(p[0]), floor, max_events=BOUNCES + 1, **settings)
        else:  # the same ball, with events on a SecondOrderNeuralODE (HybridODE(model, ...))
            fall = nde.SecondOrderNeuralODE(Gravity(p[0]), **settings)
            model = nde.HybridODE(fall, floor, max_events=BOUNCES + 1)
        sol = model.solve(jnp.array([0.0, T_END]), jnp.array([H0, 0.0]), throw=False)
        return jnp.sum(sol.event_ts[:BOUNCES]) + sol.ys[-1, 0] ** 2

    step = jax.jit(jax.value_and_grad(loss))

    def run(p):
        value, grad = step(p)
        return float(value), np.asarray(jax.block_until_ready(grad))

    return run


def torch_step():
    import torch
    from torchdiffeq import odeint, odeint_event

    torch.set_default_dtype(torch.float64)

    class Ball(torch.nn.Module):
        def __init__(self, g, e):
            super().__init__()
            self.g = torch.nn.Parameter(torch.tensor(g))
            self.e = torch.nn.Parameter(torch.tensor(e))

        def forward(self, t, state):
            pos, vel = state
            return vel, -self.g * torch.ones_like(pos)

        def event_fn(self, t, state):
            return state[0]

    def run(p):
        ball = Ball(float(p[0]), float(p[1]))
        state = (torch.tensor(H0), torch.tensor(0.0))
        t0, total = torch.tensor(0.0), torch.tensor(0.0)
        for _ in range(BOUNCES):
            t0, solution = odeint_event(
                ball,
                state,
                t0,
                event_fn=ball.event_fn,
                reverse_time=False,
                atol=TOL,
                rtol=TOL,
                odeint_interface=odeint,
                method="dopri5",
            )
            total = total + t0
            pos, vel = (s[-1] for s in solution)
            state = (pos.abs(), -ball.e * vel)  # the bounce; |pos|: see the module docstring
        tt = torch.stack([t0, torch.tensor(T_END)])
        final = odeint(ball, state, tt, atol=TOL, rtol=TOL, method="dopri5")
        loss = total + final[0][-1] ** 2
        loss.backward()
        return loss.item(), np.array([ball.g.grad.item(), ball.e.grad.item()])

    return run


def timed(run, p, repeats):
    run(p)  # warm up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(p)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    p = jnp.array([G, E])
    want_value = float(closed_form(p))
    want_grad = np.asarray(jax.grad(closed_form)(p))
    print(f"closed form: loss {want_value:.10f}, gradient (g, e) {want_grad.tolist()}")
    rows = {}
    makers = (
        ("neuraldiffeq", jax_step),
        ("nde 2nd-order", lambda: jax_step("second_order")),
        ("torchdiffeq", torch_step),
    )
    for name, make in makers:
        seconds, (value, grad) = timed(make(), p, args.repeats)
        rows[name] = seconds
        error = float(np.max(np.abs(grad - want_grad)))
        print(
            f"{name:>14}: {seconds * 1e3:9.2f} ms per loss-and-gradient step (median of "
            f"{args.repeats}); loss error {abs(value - want_value):.1e}, gradient error "
            f"{error:.1e}"
        )
    print(f"ratio torchdiffeq / neuraldiffeq: {rows['torchdiffeq'] / rows['neuraldiffeq']:.1f}x")
    ratio = rows["torchdiffeq"] / rows["nde 2nd-order"]
    print(f"ratio torchdiffeq / neuraldiffeq (SecondOrderNeuralODE base): {ratio:.1f}x")


if __name__ == "__main__":
    main()
