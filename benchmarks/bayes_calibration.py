"""Calibration of the Lotka-Volterra posterior: do 90% intervals cover the truth 90% of the time?

Ten data sets (noise seeds 0-9) of the `neuraldiffeq demo bayes` problem (30 points, sd 0.25);
for each, the demo's pipeline: a point fit as the chains' start, then NUTS (4 chains, 500
warm-up, 500 draws) over the four rates and the noise scale. Reported: how many of the 40
(data set, rate) 90% intervals contain the true rate (target 80-98%, i.e. 32-39 of 40), and the
largest R-hat (target <= 1.01). Per data set also the smallest ESS, the divergences, and the
sampling's wall and CPU seconds (the point fit excluded; the first data set's include the one
compilation of the sampler, which the others reuse). `--mass-matrix` and `--chain-method` are
`nde.sample_posterior`'s (default "auto": dense, sequential on a CPU).

    python benchmarks/record.py bayes-calibration -- python benchmarks/bayes_calibration.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np

import neuraldiffeq as nde
from neuraldiffeq.demos.bayes import TRUE_RATES, fitted_start, make_data, model_and_priors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--mass-matrix", default="auto", choices=["auto", "dense", "diagonal"])
    parser.add_argument(
        "--chain-method", default="auto", choices=["auto", "sequential", "vectorized"]
    )
    args = parser.parse_args()
    print(
        f"{args.datasets} data sets, {args.chains} chains x ({args.warmup} warm-up + "
        f"{args.samples} draws), mass matrix {args.mass_matrix}, chains {args.chain_method}",
        flush=True,
    )
    covered, rhats, rows = 0, [], []
    for seed in range(args.datasets):
        data, _ = make_data(seed)
        model, priors = model_and_priors()
        model = fitted_start(model, data)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", nde.PosteriorWarning)
            post = nde.sample_posterior(
                model,
                data,
                priors,
                chains=args.chains,
                warmup=args.warmup,
                samples=args.samples,
                key=jax.random.key(seed),
                mass_matrix=args.mass_matrix,
                chain_method=args.chain_method,
            )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        lo, hi = post.interval("field.rates", 0.9)
        hits = [bool(lo[i] <= TRUE_RATES[i] <= hi[i]) for i in range(4)]
        covered += sum(hits)
        rhat = max(float(np.max(v)) for v in post.rhat.values())
        rhats.append(rhat)
        ess = min(float(np.min(v)) for v in post.ess.values())
        rows.append(
            f"| {seed} | {' '.join(f'[{a:.3f}, {b:.3f}]' for a, b in zip(lo, hi, strict=True))} "
            f"| {sum(hits)}/4 | {rhat:.4f} | {ess:.0f} | {post.divergences} | {len(caught)} "
            f"| {seconds:.0f} | {cpu:.0f} |"
        )
        print(rows[-1], flush=True)
    total = 4 * args.datasets
    print()
    print(
        "| seed | 90% intervals of a, b, c, d | covered | max R-hat | min ESS | divergences "
        "| warnings | sampling wall s | sampling CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(f"coverage: {covered}/{total} = {covered / total:.1%} (target 80-98%)")
    print(f"largest R-hat: {max(rhats):.4f} (target <= 1.01)")
    print(
        f"coverage in target: {0.8 <= covered / total <= 0.98}; "
        f"R-hat in target: {max(rhats) <= 1.01}"
    )


if __name__ == "__main__":
    main()
