"""Equation discovery over noise seeds: `neuraldiffeq demo discover`'s pipeline, seed by seed.

For each noise seed (21 points on t in [0, 5], 5% noise of each state's mean): fit the UDE
(linear terms known, MLP for the rest; Adam 2000 + L-BFGS 300), `nde.discover` (STLSQ, degree
<= 2, CV) along the fitted trajectory, refit, prune, refit, extrapolate to t = 20. Reported per
seed and in total: exact selection of the two bilinear terms (target >= 4 of 5), refitted
coefficients' relative errors (target <= 10%), extrapolation RMSE on [5, 20] over the data's range
(target <= 0.1) and the network's RMSE over the formula's (target >= 3). Seeds run in separate
processes (`--jobs`), which changes nothing but the wall time.

    python benchmarks/record.py discover-seeds -- python benchmarks/discover_seeds.py --seeds 5
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing


def one(seed: int, steps: int, lbfgs: int) -> dict:
    from neuraldiffeq.demos.discover import run_seed

    result = run_seed(seed, steps, lbfgs, 0.05, False)
    return {k: v for k, v in result.items() if k != "_plot"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lbfgs", type=int, default=300)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")  # JAX does not survive fork
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        runs = list(
            pool.map(one, range(args.seeds), [args.steps] * args.seeds, [args.lbfgs] * args.seeds)
        )
    print(
        "| seed | refitted formula | exact at discovery | exact | coefficient errors | "
        "formula RMSE / range | network RMSE / formula RMSE |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        errors = ", ".join(
            f"{k} {v:.1%}" if v is not None else f"{k} -"
            for k, v in r["coefficient_relative_errors"].items()
        )
        print(
            f"| {r['seed']} | {r['equation_refitted'].replace(chr(10), '; ')} | "
            f"{r['exact_selection_at_discovery']} | {r['exact_selection']} | {errors} | "
            f"{r['formula_rmse_over_range']:.3f} | {r['network_over_formula_rmse']:.2f} |"
        )
    exact = [r for r in runs if r["exact_selection"]]
    good = [
        r
        for r in exact
        if all(v is not None and v <= 0.1 for v in r["coefficient_relative_errors"].values())
        and r["formula_rmse_over_range"] <= 0.1
        and r["network_over_formula_rmse"] >= 3
    ]
    print(f"\nexact selection: {len(exact)}/{args.seeds} (target >= 4 of 5)")
    print(f"exact and every number in target: {len(good)}/{args.seeds}")


if __name__ == "__main__":
    main()
