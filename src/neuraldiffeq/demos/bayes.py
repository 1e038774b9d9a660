"""Bayesian Lotka-Volterra: the NUTS posterior of the four rates from 30 noisy points.

DiffEqFlux/Turing's Bayesian ODE tutorial on the discovery demo's system: the data are 30
observations of dx/dt = a x - b x y, dy/dt = c x y - d y (a, b, c, d = 1.3, 0.9, 0.8, 1.8,
from the known initial state) on t in [0, 5] (one cycle, as in the discovery demo) with Gaussian
noise of sd 0.25. The model samples the four rates (LogNormal(0, 0.5) priors) and the noise scale
(HalfNormal(1)) with NUTS (BlackJAX: 4 chains, window adaptation). The chains start from a point
fit (L-BFGS on the trajectory from the prior median, all rates 1): started at the prior median
itself, chains can stay in a poor local mode (flat trajectory, large noise), which R-hat flags.

Then the lynx-hare data (Hudson's Bay, 1900-1920) with a universal ODE, as in DiffEqFlux's
"Bayesian Neural ODEs": d lynx/dt = -gamma lynx + NN(u)_0, d hare/dt = alpha hare + NN(u)_1,
the populations divided by their standard deviation (not shifted: zero stays zero) and time in
years from 1900. NUTS samples the two rates (LogNormal(log 0.5, 1)), every weight and bias of
the small network (2 -> 8 -> 2, tanh; Normal(0, 1)) and the noise scale (HalfNormal(1)), the
chains starting from a point fit (Adam on collocation, then on the trajectory, then L-BFGS).
There is no truth to compare with: the check is the diagnostics and how many observations the
90% posterior-predictive band holds. The network's posterior is multimodal and ill-conditioned
(tiny adapted steps), so its trajectories are capped at tree depth 6 (`--lynx-hare-tree-depth`,
at most 63 gradients a draw; uncapped, every draw took 1023 and the run did not finish); the
short chains then explore the point fit's neighbourhood without agreeing, which R-hat shows and
the demo says.

Outputs: `metrics.json` (posterior means, 90% intervals, R-hat, ESS, divergences, whether each
interval covers the truth; under `"lynx_hare"` the same for the UDE), `predictive.png`
(posterior-predictive bands over the data), `marginals.png` (the rates' marginals with the true
values marked), `lynx_hare_predictive.png`, `lynx_hare_marginals.png` (the two rates and the
noise).
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde

from ..inference.plots import plot_marginals, plot_predictive
from ..inference.posterior import check_max_tree_depth
from ..io.outputs import prepare_out, write_outputs

TRUE_RATES = (1.3, 0.9, 0.8, 1.8)
U0 = (0.44249296, 4.6280594)
NAMES = ["a (x growth)", "b (predation)", "c (y growth)", "d (y death)"]


class LotkaVolterra(eqx.Module):
    """dx/dt = a x - b x y, dy/dt = c x y - d y with `rates` = (a, b, c, d).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.demos.bayes import LotkaVolterra
        >>> LotkaVolterra(jnp.ones(4))(0.0, jnp.array([1.0, 2.0]), None).tolist()
        [-1.0, 0.0]
    """

    rates: jax.Array

    def __call__(self, t, u, args=None):
        a, b, c, d = self.rates[0], self.rates[1], self.rates[2], self.rates[3]
        x, y = u[0], u[1]
        return jnp.stack([a * x - b * x * y, c * x * y - d * y])


class LynxHareUDE(eqx.Module):
    """d lynx/dt = -gamma lynx + net(u)_0, d hare/dt = alpha hare + net(u)_1; rates = (gamma,
    alpha), positive under their LogNormal prior.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.demos.bayes import LynxHareUDE
        >>> LynxHareUDE(8, key=jax.random.key(0))(0.0, jnp.ones(2), None).shape
        (2,)
    """

    rates: jax.Array
    net: eqx.nn.MLP

    def __init__(self, hidden: int, *, key: jax.Array):
        self.rates = jnp.array([0.5, 0.5])
        self.net = eqx.nn.MLP(2, 2, hidden, 1, activation=jnp.tanh, key=key)

    def __call__(self, t, u, args=None):
        gamma, alpha = jnp.abs(self.rates)  # a sign-free fit: `positive()` picks the + twin
        return jnp.stack([-gamma * u[0], alpha * u[1]]) + self.net(u)

    def positive(self) -> LynxHareUDE:
        """The same field with rates inside their LogNormal prior's support (|rates|)."""
        return eqx.tree_at(lambda f: f.rates, self, jnp.abs(self.rates))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up steps per chain")
    parser.add_argument("--samples", type=int, default=500, help="kept draws per chain")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the data")
    parser.add_argument("--out", default="out/bayes", help="output folder")
    parser.add_argument(
        "--lynx-hare-warmup", type=int, default=200, help="warm-up steps of the lynx-hare UDE"
    )
    parser.add_argument(
        "--lynx-hare-samples", type=int, default=200, help="kept draws of the lynx-hare UDE"
    )
    parser.add_argument(
        "--lynx-hare-tree-depth",
        type=int,
        default=6,
        help="max NUTS tree depth of the lynx-hare UDE (2**depth - 1 gradients a draw; default 6)",
    )
    parser.add_argument(
        "--fit-steps",
        type=int,
        default=500,
        help="Adam steps of the lynx-hare point fit on the trajectory",
    )
    parser.add_argument(
        "--no-lynx-hare", dest="lynx_hare", action="store_false", help="only the simulated case"
    )


def make_data(seed: int, n: int = 30, t_end: float = 5.0, sigma: float = 0.25):
    """30 noisy observations of the true system; the first is the known initial state."""
    truth = nde.NeuralODE(LotkaVolterra(jnp.array(TRUE_RATES)), rtol=1e-9, atol=1e-9)
    ts = jnp.linspace(0.0, t_end, n)
    clean = np.asarray(truth(ts, jnp.array(U0)))
    noisy = clean + sigma * np.random.default_rng(seed).normal(size=clean.shape)
    noisy[0] = U0  # the initial state is known (as in the Turing tutorial)
    return nde.TimeSeries(ts, noisy), clean


def model_and_priors(rtol: float = 1e-6):
    """The model (rates at the prior median) and the priors of the rates and the noise."""
    model = nde.NeuralODE(LotkaVolterra(jnp.ones(4)), rtol=rtol, atol=rtol * 1e-2)
    priors = {"field.rates": nde.priors.LogNormal(0.0, 0.5), "noise": nde.priors.HalfNormal(1.0)}
    return model, priors


def fitted_start(model: nde.NeuralODE, data, progress: bool = False) -> nde.NeuralODE:
    """The chains' start: the rates fitted by L-BFGS on the whole trajectory."""
    fitted = nde.fit(
        model, data, nde.Trajectory(), optimizer=optax.lbfgs(), steps=100, progress=progress
    )
    return fitted.model


def lynx_hare_data() -> tuple[nde.TimeSeries, float]:
    """The lynx-hare series in years from 1900, divided by its standard deviation; the scale."""
    data = nde.datasets.lynx_hare()
    ys = np.asarray(data.ys, dtype=np.float64)
    scale = float(ys.std())
    return nde.TimeSeries(np.asarray(data.ts) - 1900.0, ys / scale), scale


def lynx_hare_ude(args: argparse.Namespace, chains: int, key: jax.Array) -> tuple[dict, list]:
    """Point fit, then NUTS over the UDE's rates, network and noise; (metrics, figures)."""
    data, scale = lynx_hare_data()
    model = nde.NeuralODE(LynxHareUDE(8, key=jax.random.key(0)), rtol=1e-5, atol=1e-7)
    # collocation first: the vector field against the data's smoothed slopes needs no solve, so
    # it cannot blow up the way the first trajectory solves from a random network do
    stages = [
        nde.Stage(nde.Collocation(), optax.adam(1e-2), steps=1000),
        nde.Stage(nde.Trajectory(), optax.adam(1e-2), steps=args.fit_steps),
        nde.Stage(nde.Trajectory(), optax.lbfgs(), steps=100),
    ]
    model = nde.fit(model, data, stages, progress=args.progress).model
    model = eqx.tree_at(lambda m: m.field, model, model.field.positive())  # same solution
    priors = {
        "field.rates": nde.priors.LogNormal(float(np.log(0.5)), 1.0),
        "field.net": nde.priors.Normal(0.0, 1.0),
        "noise": nde.priors.HalfNormal(1.0),
    }
    post = nde.sample_posterior(
        model,
        data,
        priors,
        chains=chains,
        warmup=args.lynx_hare_warmup,
        samples=args.lynx_hare_samples,
        key=key,
        # the network's posterior needs tiny steps: uncapped (depth 10) every draw costs 1023
        # gradients and the run does not finish; capped, the draws are valid but correlated,
        # which R-hat/ESS and `saturated` report
        max_tree_depth=args.lynx_hare_tree_depth,
    )
    # how many observations the 90% band of new observations holds (a check without a truth)
    noisy = np.asarray(nde.posterior_predictive(post, data.ts, key=jax.random.key(2)))
    lo, hi = np.quantile(noisy, [0.05, 0.95], axis=0)
    ys = np.asarray(data.ys)
    inside = float(np.mean((lo <= ys) & (ys <= hi)))
    lo_r, hi_r = post.interval("field.rates", 0.9)
    summary = {
        "scale_thousands": scale,
        "warmup": args.lynx_hare_warmup,
        "samples": args.lynx_hare_samples,
        "max_tree_depth": args.lynx_hare_tree_depth,
        "step_sizes": np.ravel(post.step_sizes).tolist(),
        "mean_leapfrog_steps_per_draw": float(np.mean(post.integration_steps)),
        "draws_at_max_tree_depth": post.saturated,
        "acceptance": post.acceptance,
        "parameters_sampled": int(sum(np.prod(v.shape[2:]) for v in post.samples.values())),
        "rates_mean_gamma_alpha": post.draws("field.rates").mean(axis=0).tolist(),
        "rates_interval_90": [lo_r.tolist(), hi_r.tolist()],
        "noise_mean": float(post.draws("noise").mean()),
        "max_rhat": max(float(np.max(v)) for v in post.rhat.values()),
        "min_ess": min(float(np.min(v)) for v in post.ess.values()),
        "divergences": post.divergences,
        "observations_in_90_band": inside,
    }
    labels = [f"lynx (x {scale:.3g} thousand)", f"hare (x {scale:.3g} thousand)"]
    figures = [
        (
            "lynx_hare_predictive.png",
            lambda p: plot_predictive(p, post, data, key=jax.random.key(1), labels=labels),
        ),
        (
            "lynx_hare_marginals.png",
            lambda p: plot_marginals(
                p,
                post,
                names=["field.rates", "noise"],
                labels={"field.rates": ["gamma (lynx death)", "alpha (hare growth)"]},
            ),
        ),
    ]
    return summary, figures


def run(args: argparse.Namespace) -> dict:
    if args.chains < 2 or args.warmup < 1 or args.samples < 1:
        raise ValueError("--chains must be >= 2 and --warmup, --samples >= 1.")
    lynx_hare = getattr(args, "lynx_hare", True)
    if lynx_hare and (args.lynx_hare_warmup < 1 or args.lynx_hare_samples < 1):
        raise ValueError("--lynx-hare-warmup and --lynx-hare-samples must be >= 1.")
    if lynx_hare:  # before the first half runs, not after it
        check_max_tree_depth(args.lynx_hare_tree_depth, "--lynx-hare-tree-depth")
    if lynx_hare and args.fit_steps < 1:
        raise ValueError(f"--fit-steps must be >= 1, got {args.fit_steps}.")
    out = prepare_out(args.out)
    data, _ = make_data(args.seed)
    model, priors = model_and_priors()
    start = time.perf_counter()
    model = fitted_start(model, data, args.progress)
    post = nde.sample_posterior(
        model,
        data,
        priors,
        chains=args.chains,
        warmup=args.warmup,
        samples=args.samples,
        key=jax.random.key(args.seed),
    )
    seconds = time.perf_counter() - start
    lo, hi = post.interval("field.rates", 0.9)
    rates = post.draws("field.rates")
    covered = [bool(lo[i] <= TRUE_RATES[i] <= hi[i]) for i in range(4)]
    summary = {
        "demo": "bayes",
        "chains": args.chains,
        "warmup": args.warmup,
        "samples": args.samples,
        "seed": args.seed,
        "true_rates": list(TRUE_RATES),
        "posterior_mean": rates.mean(axis=0).tolist(),
        "interval_90": [lo.tolist(), hi.tolist()],
        "covers_truth": covered,
        "noise_mean": float(post.draws("noise").mean()),
        "rhat": {k: np.ravel(v).tolist() for k, v in post.rhat.items()},
        "ess": {k: np.ravel(v).tolist() for k, v in post.ess.items()},
        "divergences": post.divergences,
        "acceptance": post.acceptance,
        "fit_and_sampling_seconds_with_compilation": seconds,
    }
    print(post.summary())
    ts_truth = np.linspace(0.0, float(data.ts[-1]), 300)
    truth = nde.NeuralODE(LotkaVolterra(jnp.array(TRUE_RATES)), rtol=1e-9, atol=1e-9)
    y_truth = np.asarray(truth(jnp.asarray(ts_truth), jnp.array(U0)))
    figures = [
        (
            "predictive.png",
            lambda p: plot_predictive(
                p, post, data, key=jax.random.key(1), labels=["x", "y"], truth=(ts_truth, y_truth)
            ),
        ),
        (
            "marginals.png",
            lambda p: plot_marginals(
                p,
                post,
                truth={"field.rates": np.array(TRUE_RATES), "noise": 0.25},
                labels={"field.rates": NAMES},
            ),
        ),
    ]
    print(f"90% intervals cover {sum(covered)}/4 true rates")
    if lynx_hare:
        summary["lynx_hare"], more = lynx_hare_ude(args, args.chains, jax.random.key(args.seed))
        figures += more
        lh = summary["lynx_hare"]
        print(
            f"lynx-hare UDE ({lh['parameters_sampled']} parameters): max R-hat "
            f"{lh['max_rhat']:.3f}, min ESS {lh['min_ess']:.0f}, {lh['divergences']} divergences, "
            f"{lh['observations_in_90_band']:.0%} of the observations in the 90% band; step sizes "
            f"{', '.join(f'{h:.2g}' for h in lh['step_sizes'])}, "
            f"{lh['mean_leapfrog_steps_per_draw']:.0f} leapfrog steps a draw, "
            f"{lh['draws_at_max_tree_depth']} draws at tree depth {lh['max_tree_depth']}"
        )
        if lh["max_rhat"] > 1.01:
            print(
                "  the chains disagree (R-hat > 1.01): a network's posterior is multimodal and "
                "ill-conditioned, and these short capped chains have not mixed; read the band "
                "and marginals as each chain's neighbourhood of the point fit, not the posterior"
            )
    write_outputs(out, metrics=summary, figures=figures)
    print(f"wrote {out}/ (metrics.json and {len(figures)} pictures)")
    return summary
