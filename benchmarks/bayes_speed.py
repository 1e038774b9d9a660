"""NUTS speed: `nde.sample_posterior` against the same posterior written by hand in NumPyro.

The posterior: `neuraldiffeq demo bayes`'s Lotka-Volterra problem (four rates with LogNormal(0,
0.5) priors, noise scale with HalfNormal(1), 30 points). Both sides: Tsit5, rtol 1e-6, atol
1e-8, diffrax's checkpointed reverse-mode adjoint (`nde.Direct()`), 4 chains vectorised, the
same warm-up and number of draws, the same start (the true rates, the residual sd as noise).
NumPyro's side is what a user would write: a `numpyro.sample` program calling
`diffrax.diffeqsolve`. Both sides adapt the same mass matrix (`--mass-matrix`, dense by
default: `nde.sample_posterior`'s choice for five parameters; NumPyro's `dense_mass`) and run
the chains the same way (`--chain-method`, sequential by default: `nde.sample_posterior`'s
choice on a CPU). Each side runs twice in this process: the first run includes compilation,
the second is reported as the steady-state rate. Samples per second = chains x draws / wall
time of the second run; its CPU time and the smallest effective sample size of the four rates
are shown too (the machine may be shared: compare the two sides within one run).

    python benchmarks/record.py bayes-speed -- python benchmarks/bayes_speed.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import neuraldiffeq as nde
from neuraldiffeq.demos.bayes import TRUE_RATES, U0, LotkaVolterra, make_data

RTOL, ATOL = 1e-6, 1e-8


def _ess(rates):
    """The smallest ESS of the four rates, `rates` as (chains, draws, 4)."""
    from blackjax.diagnostics import effective_sample_size

    return float(np.min(effective_sample_size(jnp.asarray(rates), chain_axis=0, sample_axis=1)))


def ours(data, args, start, sigma0):
    model = nde.NeuralODE(
        LotkaVolterra(start), solver="tsit5", rtol=RTOL, atol=ATOL, sensitivity=nde.Direct()
    )
    priors = {"field.rates": nde.priors.LogNormal(0.0, 0.5), "noise": nde.priors.HalfNormal(1.0)}
    times, cpus = [], []
    for repeat in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nde.PosteriorWarning)
            post = nde.sample_posterior(
                model,
                data,
                priors,
                chains=args.chains,
                warmup=args.warmup,
                samples=args.samples,
                key=jax.random.key(repeat),
                jitter=0.0,
                mass_matrix=args.mass_matrix,
                chain_method=args.chain_method,
            )
        jax.block_until_ready(post.y0)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    rates = post.samples["field.rates"]
    return times, cpus, rates.reshape(-1, 4).mean(axis=0), post.divergences, _ess(rates)


def numpyro_by_hand(data, args, start, sigma0):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS, init_to_value

    ts, ys = jnp.asarray(data.ts), jnp.asarray(data.ys)

    def field(t, u, rates):
        a, b, c, d = rates[0], rates[1], rates[2], rates[3]
        return jnp.stack([a * u[0] - b * u[0] * u[1], c * u[0] * u[1] - d * u[1]])

    def model(ts, ys):
        rates = numpyro.sample("rates", dist.LogNormal(0.0, 0.5).expand([4]).to_event(1))
        noise = numpyro.sample("noise", dist.HalfNormal(1.0))
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            ts[0],
            ts[-1],
            None,
            jnp.asarray(U0, ys.dtype),
            args=rates,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=4096,
            throw=False,
        )
        numpyro.sample("obs", dist.Normal(sol.ys, noise).to_event(2), obs=ys)

    kernel = NUTS(
        model,
        target_accept_prob=0.8,
        dense_mass=args.mass_matrix == "dense",
        init_strategy=init_to_value(values={"rates": start, "noise": sigma0}),
    )
    # one MCMC object run twice: its second run reuses the compiled sampler (a kernel shared by
    # two MCMC objects breaks vectorized chains, pyro-ppl/numpyro#1640)
    mcmc = MCMC(
        kernel,
        num_warmup=args.warmup,
        num_samples=args.samples,
        num_chains=args.chains,
        chain_method=args.chain_method,
        progress_bar=False,
        jit_model_args=True,
    )
    times, cpus = [], []
    for repeat in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        mcmc.run(jax.random.PRNGKey(repeat), ts, ys)  # NumPyro splits raw keys per chain
        rates = mcmc.get_samples(group_by_chain=True)["rates"]
        jax.block_until_ready(rates)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
    rates = np.asarray(rates)
    return times, cpus, rates.reshape(-1, 4).mean(axis=0), divergences, _ess(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--mass-matrix", default="dense", choices=["dense", "diagonal"])
    parser.add_argument(
        "--chain-method", default="sequential", choices=["sequential", "vectorized"]
    )
    args = parser.parse_args()
    data, clean = make_data(0)
    start = jnp.asarray(TRUE_RATES)
    sigma0 = float(np.std(np.asarray(data.ys) - clean))
    draws = args.chains * args.samples
    print(
        f"{args.chains} chains x ({args.warmup} warm-up + {args.samples} draws), {draws} kept; "
        f"mass matrix {args.mass_matrix}, chains {args.chain_method}"
    )
    print(
        "| sampler | first run s (with compilation) | second run s | second run CPU s | "
        "samples/s (second) | min ESS of the rates | posterior mean of the rates | "
        "divergences |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rates, cpu = {}, {}
    for name, run in [("NumPyro + diffrax by hand", numpyro_by_hand), ("neuraldiffeq", ours)]:
        times, cpus, mean, divergences, ess = run(data, args, start, sigma0)
        rates[name], cpu[name] = draws / times[1], cpus[1]
        print(
            f"| {name} | {times[0]:.1f} | {times[1]:.1f} | {cpus[1]:.1f} | {rates[name]:.1f} | "
            f"{ess:.0f} | {np.round(mean, 3).tolist()} | {divergences} |",
            flush=True,
        )
    ratio = rates["neuraldiffeq"] / rates["NumPyro + diffrax by hand"]
    print(f"\nratio neuraldiffeq / NumPyro samples per second: {ratio:.2f} (target >= 1)")
    ratio = cpu["NumPyro + diffrax by hand"] / cpu["neuraldiffeq"]
    print(f"ratio NumPyro / neuraldiffeq CPU seconds of the second run: {ratio:.2f}")


if __name__ == "__main__":
    main()
