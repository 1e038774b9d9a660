"""Discover missing physics: a UDE's network becomes a formula, and the formula extrapolates.

SciML's "Automatically Discover Missing Physics by Embedding Machine Learning into Differential
Equations" (the UDE paper's Lotka-Volterra example), step by step:

1. data: Lotka-Volterra, dx/dt = 1.3 x - 0.9 x y, dy/dt = 0.8 x y - 1.8 y, observed at 21 times
   on t in [0, 5] with 5% noise (of each state's mean);
2. a universal ODE: the linear terms known (1.3 x, -1.8 y), a network for the rest, fitted to
   the data together with its initial state (`fit_ude`: Adam with warm-up and cosine decay
   from 3e-2, then L-BFGS): the first observation is as noisy as the others, and solving from
   it made the network absorb the error of the start;
3. `nde.discover`: PySINDy's STLSQ on the network's output along the fitted trajectory, over
   polynomials of degree <= 2, the sparsity chosen by cross-validation -> ideally
   `dx = -0.9 x*y`, `dy = 0.8 x*y`;
4. the formula replaces the network (its coefficients trainable) and `nde.fit` refines them
   (L-BFGS, with the initial state again); terms whose refitted coefficient fell below the
   discovery's threshold are pruned and the rest refitted again (sequential thresholding on the
   trajectory);
5. extrapolation to t = 20, each model from its own fitted initial state: the formula against
   the network and the truth.

With `--seeds N` the whole pipeline runs for N noise seeds (from `--first-seed`, default 0) and
`metrics.json` reports how many selected exactly the two bilinear terms, the refitted
coefficients' errors and the extrapolation errors. `discovery.png` shows the first seed;
`model.eqx` is its refitted model (its fitted initial state is in `metrics.json`).
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..inference.plots import plot_discovery
from ..io.outputs import prepare_out, write_outputs

ALPHA, BETA, GAMMA, DELTA = 1.3, 0.9, 0.8, 1.8  # SciML's p = [1.3, 0.9, 0.8, 1.8]
U0 = (0.44249296, 4.6280594)  # SciML's initial state
#: the missing terms: output -> {term: coefficient}
MISSING = {"dx": {"x*y": -BETA}, "dy": {"x*y": GAMMA}}


def lotka_volterra(t, u, args=None):
    x, y = u[0], u[1]
    return jnp.stack([ALPHA * x - BETA * x * y, GAMMA * x * y - DELTA * y])


class KnownLinear(eqx.Module):
    """The known linear terms (1.3 x, -1.8 y) plus `net`, the part to learn and then explain.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.discover import KnownLinear
        >>> [round(float(v), 3) for v in KnownLinear(lambda u: -u)(0.0, jnp.ones(2), None)]
        [0.3, -2.8]
    """

    net: eqx.Module

    def __call__(self, t, u, args=None):
        return jnp.array([ALPHA, -DELTA]) * u + self.net(u)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=1, help="how many noise seeds (default 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first noise seed")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps of the UDE fit")
    parser.add_argument("--lbfgs", type=int, default=300, help="L-BFGS steps after Adam")
    parser.add_argument("--noise", type=float, default=0.05, help="noise, fraction of the mean")
    parser.add_argument("--out", default="out/discover", help="output folder")


def make_data(seed: int, noise: float = 0.05, t_end: float = 5.0, n: int = 21):
    """(data on [0, t_end] with noise, the exact trajectory) for one noise seed."""
    truth = nde.NeuralODE(lotka_volterra, rtol=1e-9, atol=1e-9, max_steps=100_000)
    ts = jnp.linspace(0.0, t_end, n)
    clean = np.asarray(truth(ts, jnp.array(U0)))
    rng = np.random.default_rng(seed)
    noisy = clean + noise * clean.mean(axis=0) * rng.normal(size=clean.shape)
    return nde.TimeSeries(ts, noisy), clean


def make_ude(seed: int) -> nde.NeuralODE:
    """The universal ODE before fitting: known linear terms + an MLP 2 -> 32 -> 32 -> 2."""
    net = eqx.nn.MLP(2, 2, 32, 2, activation=jnp.tanh, key=jax.random.key(seed))
    return nde.NeuralODE(KnownLinear(net), rtol=1e-6, atol=1e-6)


def fit_strategy(data: nde.TimeSeries) -> nde.MultipleShooting:
    """Single shooting with a trainable initial state: one segment over the whole series.

    The first observation is as noisy as the others (5% of the mean is a quarter of x's small
    start), so solving from it forces the network to bend the dynamics to make up for a wrong
    initial state; `MultipleShooting` with one segment has `nde.Trajectory`'s loss, and its
    `with_states` wrapper (`nde.SegmentStates`) makes that segment's start a parameter.
    """
    return nde.MultipleShooting(group_size=int(data.ts.shape[0]))


def adam_schedule(steps: int, peak: float = 3e-2) -> optax.GradientTransformation:
    """Adam for the UDE fit: a short warm-up to `peak`, cosine decay to `peak / 100`, gradients
    clipped to global norm 10.

    A constant small rate (3e-3) left the fit far above the noise level after thousands of
    steps: the network's output has to grow to the size of the missing terms (x y reaches ~20),
    which a small rate does slowly; a large constant rate does not settle. The warm-up keeps the
    first large steps from throwing the trajectory off, the decay lets it settle for L-BFGS.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.discover import adam_schedule
        >>> opt = adam_schedule(10)
        >>> state = opt.init(jnp.zeros(2))
        >>> updates, _ = opt.update(jnp.ones(2), state)
        >>> bool((updates < 0).all())
        True
    """
    rate = optax.warmup_cosine_decay_schedule(
        peak / 10, peak, max(steps // 20, 1), max(steps, 2), peak / 100
    )
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(rate))


def fit_ude(
    seed: int, data: nde.TimeSeries, steps: int, lbfgs: int, progress: bool
) -> nde.SegmentStates:
    """Step 2: the UDE and its initial state fitted to the data (Adam with `adam_schedule`, then
    L-BFGS); the fitted model is `.model`, its initial state `.states[0, 0]`."""
    whole = fit_strategy(data)
    stages = [nde.Stage(whole, adam_schedule(steps), steps=steps)]
    if lbfgs:
        stages.append(nde.Stage(whole, optax.lbfgs(), steps=lbfgs))
    return nde.fit(whole.with_states(make_ude(seed), data), data, stages, progress=progress).model


def run_seed(seed: int, steps: int, lbfgs: int, noise: float, progress: bool) -> dict:
    """The whole pipeline for one noise seed; returns numbers and what the picture needs."""
    data, _ = make_data(seed, noise)
    return explain(seed, data, fit_ude(seed, data, steps, lbfgs, progress), progress)


def explain(seed: int, data: nde.TimeSeries, fitted: nde.SegmentStates, progress: bool) -> dict:
    """Steps 3-5 for a UDE fitted with its initial state (`fit_ude`): discover, refit, prune,
    refit, extrapolate."""
    found = nde.discover(  # along the trajectory from the fitted initial state
        fitted,
        fitted.model.field.net,
        data,
        library=nde.Library(degree=2),
        names=["x", "y"],
        output_names=["dx", "dy"],
    )

    def refine(model):  # the formula's coefficients and the initial state, by L-BFGS
        return nde.fit(
            model, data, fit_strategy(data), optimizer=optax.lbfgs(), steps=100, progress=progress
        ).model

    refit = refine(found.replace(fitted))
    wanted = {k: set(v) for k, v in MISSING.items()}
    exact_at_discovery = _kept(found.term) == wanted
    # sequential thresholding on the trajectory: drop what the refit shrank below the threshold
    pruned = refit.model.field.net.prune(found.threshold, scales=found.scales)
    if pruned.n_terms() < refit.model.field.net.n_terms():
        refit = refine(eqx.tree_at(lambda m: m.model.field.net, refit, pruned))
    term = refit.model.field.net
    exact = _kept(term) == wanted
    errors = {}
    for out, row in MISSING.items():
        for name, value in row.items():
            got = kept_value(term, out, name)
            errors[f"{out}:{name}"] = None if got is None else abs(got - value) / abs(value)
    # extrapolation on [5, 20], each model from its own fitted initial state (what a user has)
    ts_long = jnp.linspace(0.0, 20.0, 401)
    truth = nde.NeuralODE(lotka_volterra, rtol=1e-9, atol=1e-9, max_steps=100_000)
    y_true = np.asarray(truth(ts_long, jnp.array(U0)))
    y_net = np.asarray(fitted.model(ts_long, fitted.states[0, 0]))
    y_sindy = np.asarray(refit.model(ts_long, refit.states[0, 0]))
    later = np.asarray(ts_long) > 5.0
    scale = float(np.ptp(np.asarray(data.ys)))
    rmse_net = _rmse(y_net[later], y_true[later])
    rmse_sindy = _rmse(y_sindy[later], y_true[later])
    return {
        "seed": seed,
        "equation_discovered": found.equation,
        "equation_refitted": term.equation(),
        "threshold": found.threshold,
        "initial_state_observed": np.asarray(data.ys[0]).tolist(),
        "initial_state_fitted": np.asarray(fitted.states[0, 0]).tolist(),
        "initial_state_refitted": np.asarray(refit.states[0, 0]).tolist(),
        "exact_selection_at_discovery": exact_at_discovery,
        "exact_selection": exact,
        "coefficient_relative_errors": errors,
        "extrapolation_rmse_formula": rmse_sindy,
        "extrapolation_rmse_network": rmse_net,
        "data_range": scale,
        "formula_rmse_over_range": rmse_sindy / scale,
        "network_over_formula_rmse": rmse_net / rmse_sindy if rmse_sindy > 0 else float("inf"),
        "_plot": (data, fitted, found, refit, ts_long, y_true, y_net, y_sindy),
    }


def kept_value(term: nde.SparseTerm, out: str, name: str) -> float | None:
    """The coefficient of term `name` in output `out`, or None if it was not kept."""
    names = term.library.names(term.state_names)
    i, j = term.output_names.index(out), names.index(name)
    return float(term.coefficients[i, j]) if term.mask[i][j] else None


def _kept(term: nde.SparseTerm) -> dict[str, set[str]]:
    names = term.library.names(term.state_names)
    return {
        out: {n for n, k in zip(names, keep, strict=True) if k}
        for out, keep in zip(term.output_names, term.mask, strict=True)
    }


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def run(args: argparse.Namespace) -> dict:
    if args.seeds < 1 or args.steps < 1 or args.lbfgs < 0 or args.first_seed < 0:
        raise ValueError("--seeds and --steps must be >= 1, --lbfgs and --first-seed >= 0.")
    if not 0 <= args.noise < 1:
        raise ValueError(f"--noise must be in [0, 1), got {args.noise}.")
    out = prepare_out(args.out)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        result = run_seed(seed, args.steps, args.lbfgs, args.noise, args.progress)
        runs.append(result)
        print(
            f"seed {seed}: {result['equation_refitted'].replace(chr(10), ';  ')}  "
            f"(exact: {result['exact_selection']}); extrapolation RMSE formula "
            f"{result['extrapolation_rmse_formula']:.3g}, network "
            f"{result['extrapolation_rmse_network']:.3g}"
        )
    all_errors = [e for r in runs for e in r["coefficient_relative_errors"].values()]
    summary = {
        "demo": "discover",
        "seeds": args.seeds,
        "noise": args.noise,
        "adam_steps": args.steps,
        "lbfgs_steps": args.lbfgs,
        "exact_selections": sum(r["exact_selection"] for r in runs),
        "exact_selections_at_discovery": sum(r["exact_selection_at_discovery"] for r in runs),
        "max_coefficient_relative_error": (
            None if None in all_errors else max(all_errors) if all_errors else None
        ),
        "max_formula_rmse_over_range": max(r["formula_rmse_over_range"] for r in runs),
        "min_network_over_formula_rmse": min(r["network_over_formula_rmse"] for r in runs),
        "runs": [{k: v for k, v in r.items() if k != "_plot"} for r in runs],
    }
    figure = ("discovery.png", lambda p: _picture(p, *runs[0]["_plot"]))
    write_outputs(out, model=runs[0]["_plot"][3].model, metrics=summary, figures=[figure])
    print(
        f"exact selection in {summary['exact_selections']}/{args.seeds} seeds; "
        f"wrote {out}/ (model.eqx, metrics.json, discovery.png)"
    )
    return summary


def _picture(path, data, fitted, found, refit, ts_long, y_true, y_net, y_sindy) -> None:
    ts = np.linspace(float(data.ts[0]), float(data.ts[-1]), 200)
    along = np.asarray(fitted.model(jnp.asarray(ts), fitted.states[0, 0]))
    states = jnp.asarray(along)
    terms = {
        "network": np.asarray(jax.vmap(fitted.model.field.net)(states)),
        "discovered": np.asarray(jax.vmap(found.term)(states)),
        "refitted": np.asarray(jax.vmap(refit.model.field.net)(states)),
        "truth": np.stack(
            [-BETA * along[:, 0] * along[:, 1], GAMMA * along[:, 0] * along[:, 1]], 1
        ),
    }
    plot_discovery(
        path,
        ts,
        terms,
        ["dx", "dy"],
        trajectories={
            "truth": (np.asarray(ts_long), y_true),
            "network": (np.asarray(ts_long), y_net),
            "formula": (np.asarray(ts_long), y_sindy),
        },
        data=(np.asarray(data.ts), np.asarray(data.ys)),
        state_names=["x", "y"],
        fit_end=float(data.ts[-1]),
    )
