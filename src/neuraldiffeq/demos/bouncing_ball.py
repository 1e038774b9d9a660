"""A bouncing ball: recover gravity and the restitution coefficient from noisy heights.

SciMLSensitivity's "Bouncing Ball Hybrid ODE Optimization", and torchdiffeq's `odeint_event`
example. A ball dropped from 10 m (at rest) falls under gravity g; at the floor (height 0,
falling) its velocity is reversed and scaled by the restitution coefficient e. The truth is
g = 9.81, e = 0.8; the observations are its height at `--points` times on [0, `--t1`] with
Gaussian noise of `--noise` m (seeded). Both parameters are fitted from a wrong start
(g = 9.0, e = 0.75) by differentiating through the bounce times (`nde.HybridODE`, an
`nde.Event` whose jump holds the trainable e): Adam, then L-BFGS. Everything runs in float64.
Writes `model.eqx`, `metrics.json` (fitted values, relative errors, bounce times) and `fit.png`
(the data, the fit, the truth and the bounce times, and the loss).
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..io.outputs import prepare_out, stop_if_interrupted, write_outputs

TRUE_G, TRUE_E = 9.81, 0.8
START_G, START_E = 9.0, 0.75
HEIGHT = 10.0


class Fall(eqx.Module):
    """Free fall with a trainable gravity: d(height)/dt = v, dv/dt = -g.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.bouncing_ball import Fall
        >>> [round(float(v), 4) for v in Fall(jnp.array(9.81))(0.0, jnp.array([1.0, 2.0]), None)]
        [2.0, -9.81]
    """

    g: jax.Array

    def __call__(self, t, y, args):
        return jnp.stack([y[1], -self.g + 0 * y[0]])


class Bounce(eqx.Module):
    """The jump at the floor with a trainable restitution: v <- -e v.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.bouncing_ball import Bounce
        >>> Bounce(jnp.array(0.8))(0.0, jnp.array([0.0, -10.0]), None).tolist()
        [0.0, 8.0]
    """

    e: jax.Array

    def __call__(self, t, y, args):
        return jnp.stack([y[0], -self.e * y[1]])


class Floor(eqx.Module):
    """The event condition: the height (crossed downwards at a bounce). A module rather than a
    function, so that `model.eqx` holds no pickled code.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.bouncing_ball import Floor
        >>> float(Floor()(0.0, jnp.array([2.0, -1.0]), None))
        2.0
    """

    def __call__(self, t, y, args):
        return y[0]


def ball(g: float, e: float, max_events: int = 24) -> nde.HybridODE:
    """The bouncing ball as an `nde.HybridODE` with trainable g (field) and e (jump).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.bouncing_ball import ball
        >>> sol = ball(9.81, 0.8).solve(jnp.linspace(0.0, 2.0, 3), jnp.array([10.0, 0.0]))
        >>> round(float(sol.event_ts[0]), 6)  # sqrt(2 * 10 / 9.81)
        1.427843
    """
    bounce = nde.Event(Floor(), direction="down", jump=Bounce(jnp.array(e)))
    return nde.HybridODE(Fall(jnp.array(g)), bounce, max_events=max_events, rtol=1e-8, atol=1e-8)


def heights_l2(pred, target, mask=None):
    """Sum of squared errors of the heights alone (the velocity is not observed)."""
    return jnp.sum((pred[..., 0] - target[..., 0]) ** 2)


def observations(points: int, t1: float, noise: float, seed: int) -> nde.TimeSeries:
    """Noisy heights of the true ball; the first row is the known start (10 m, at rest), the
    velocity column is not observed (the misfit ignores it)."""
    ts = jnp.linspace(0.0, t1, points)
    ys = np.array(ball(TRUE_G, TRUE_E)(ts, jnp.array([HEIGHT, 0.0])))
    rng = np.random.default_rng(seed)
    ys[1:, 0] += noise * rng.standard_normal(points - 1)
    ys[:, 1] = 0.0
    ys[0] = (HEIGHT, 0.0)
    return nde.TimeSeries(ts, ys)


def fit_ball(
    data: nde.TimeSeries, steps: int, lbfgs_steps: int, *, progress: bool = False, **start
) -> nde.FitResult:
    """The demo's fit: the ball from `START_G`, `START_E` (or `g=`, `e=`), Adam (lr 0.02) for
    `steps` then L-BFGS for `lbfgs_steps`, on the squared height misfit."""
    strategy = nde.Trajectory(loss_fn=heights_l2)
    stages = [nde.Stage(strategy, optax.adam(0.02), steps)] if steps > 0 else []
    if lbfgs_steps > 0:
        stages.append(nde.Stage(strategy, optax.lbfgs(), lbfgs_steps))
    model = ball(start.get("g", START_G), start.get("e", START_E))
    return nde.fit(model, data, stages, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=81, help="observed heights")
    parser.add_argument("--t1", type=float, default=8.0, help="end of the observations (s)")
    parser.add_argument("--noise", type=float, default=0.05, help="noise on the heights (m)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps")
    parser.add_argument("--lbfgs-steps", type=int, default=40, help="L-BFGS steps after Adam")
    parser.add_argument("--out", default="out/bouncing-ball", help="output folder")


def run(args: argparse.Namespace) -> dict:
    with jax.enable_x64(True):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    out = prepare_out(args.out)
    data = observations(args.points, args.t1, args.noise, args.seed)
    result = fit_ball(data, args.steps, args.lbfgs_steps, progress=args.progress)
    model = result.model
    g, e = float(model.field.g), float(model.events[0].jump.e)
    errors = {"g": abs(g / TRUE_G - 1), "e": abs(e / TRUE_E - 1)}
    y0 = jnp.array([HEIGHT, 0.0])
    fitted = model.solve(data.ts, y0, throw=False)
    truth = ball(TRUE_G, TRUE_E).solve(data.ts, y0)
    n = int(fitted.n_events)
    print(f"g = {g:.5f} ({errors['g']:.1e} off), e = {e:.5f} ({errors['e']:.1e} off)")
    metrics = {
        "demo": "bouncing-ball",
        "true": {"g": TRUE_G, "e": TRUE_E},
        "start": {"g": START_G, "e": START_E},
        "fitted": {"g": g, "e": e},
        "relative_errors": errors,
        "bounce_times": np.asarray(fitted.event_ts[:n]).tolist(),
        "true_bounce_times": np.asarray(truth.event_ts[: int(truth.n_events)]).tolist(),
        "data": {"points": args.points, "t1": args.t1, "noise": args.noise, "seed": args.seed},
        **result.metrics(),
    }

    def draw(path):
        _plot(path, data, model, fitted, result, g, e)

    paths = write_outputs(out, model, metrics, [("fit.png", draw)])
    print("wrote " + ", ".join(paths))
    stop_if_interrupted(result, paths)
    return metrics


def _plot(path, data, model, fitted, result, g, e) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = jnp.linspace(float(data.ts[0]), float(data.ts[-1]), 800)
    y0 = jnp.array([HEIGHT, 0.0])
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=[2.2, 1])
    ax.plot(np.asarray(data.ts), np.asarray(data.ys)[:, 0], "o", ms=3, color="k", label="data")
    truth = ball(TRUE_G, TRUE_E)(dense, y0)
    ax.plot(np.asarray(dense), np.asarray(truth)[:, 0], "-", color="0.6", lw=3, label="truth")
    ax.plot(np.asarray(dense), np.asarray(model(dense, y0))[:, 0], "--", color="C1", label="fit")
    start = ball(START_G, START_E)(dense, y0)
    ax.plot(np.asarray(dense), np.asarray(start)[:, 0], ":", color="C0", label="start")
    for i, t in enumerate(np.asarray(fitted.event_ts[: int(fitted.n_events)])):
        ax.axvline(
            t, color="C3", lw=0.8, alpha=0.6, label="fitted bounce times" if i == 0 else None
        )
    ax.set_xlabel("t (s)")
    ax.set_ylabel("height (m)")
    ax.set_title(f"bouncing ball: g = {g:.4f} (true {TRUE_G}), e = {e:.4f} (true {TRUE_E})")
    ax.legend(fontsize=8, loc="upper right")
    ax_loss.semilogy(np.asarray(result.losses))
    ax_loss.set_xlabel("step (Adam, then L-BFGS)")
    ax_loss.set_title("training loss (squared height misfit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
