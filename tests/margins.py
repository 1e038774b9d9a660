"""How far each training-quality test is from its threshold, over several initialisations.

Training is chaotic: XLA emits different code on different CPUs, rounding differs, and a fit
that ends at 0.04 here ends at 0.06 elsewhere. A threshold is only kept if the test's own
initialisation and three others all pass it, and the margin (threshold over measurement, the
smaller over all seeds) is reported. Run from the repository root:

    python tests/margins.py [--only NAME ...] [--out benchmarks/results/test_margins.md]

It is not collected by pytest (the tests themselves run one initialisation each).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import test_augmented  # noqa: E402
import test_cli_fit  # noqa: E402
import test_cnf  # noqa: E402
import test_collocation  # noqa: E402
import test_discovery  # noqa: E402
import test_events  # noqa: E402
import test_fit  # noqa: E402
import test_latent  # noqa: E402
import test_mixed  # noqa: E402
import test_neural_dde  # noqa: E402
import test_sde  # noqa: E402


def below(value, threshold):
    """A check `value < threshold`: (value, threshold, margin = threshold / value)."""
    return value, threshold, threshold / value if value > 0 else float("inf"), "<"


def above(value, threshold):
    """A check `value > threshold` for positive values: margin = value / threshold."""
    return value, threshold, value / threshold, ">"


def spiral(seed):
    initial, final, skipped = test_fit.spiral_tutorial_losses(seed)
    return {
        "final loss": below(final, 1.0),
        "final / initial": below(final / initial, 5e-3),
        "skipped": below(skipped, 0.5),
    }


def augmented(seed):
    plain, aug = test_augmented.crossing_losses(seed)
    return {"plain (bound: 1)": above(plain, 0.9), "augmented": below(aug, 0.05)}


def ffjord(seed):
    before, after, entropy = test_cnf.shifted_gaussian_nlls(seed)
    return {"before - H": above(before - entropy, 0.5), "after - H": below(after - entropy, 0.25)}


def latent(seed):
    before, after, _ = test_latent.elbo_before_after(seed)
    return {"after / before (gap to 0 left)": below(after / before, 0.1)}


def moments(seed):
    mu, sigma, losses = test_sde.gbm_moment_fit(seed)
    return {
        "|mu - 0.8|": below(abs(mu - 0.8), 0.1),
        "|sigma - 0.5|": below(abs(sigma - 0.5), 0.1),
        "last 10 / first": below(losses[-10:].mean() / losses[0], 0.05),
    }


def dde_shooting(seed):
    losses = test_neural_dde.delay_network_shooting_losses(seed)
    return {"last 5 / first": below(losses[-5:].mean() / losses[0], 0.6)}


def dde_rate(start):
    result = test_neural_dde.delayed_rate_fit(start)
    return {
        "|rate - 1|": below(abs(float(result.model.field.rate) - 1.0), 0.02),
        "last / first": below(result.losses[-1] / result.losses[0], 1e-3),
    }


def mixed(seed):
    before, after, _ = test_mixed.mixed_preset_run(seed)
    return {"after / before": below(after / before, 0.1)}


def hybrid(seed):
    data, result = test_mixed.hybrid_collocation_fit(seed)
    u = data.ys[40]
    want = np.array([-u[0] * u[1], 3 * u[0] * u[1]])
    got = np.asarray(result.model.field.net(u))
    worst = float(np.max(np.abs(got - want) / (0.1 + 0.2 * np.abs(want))))
    return {
        "last / first": below(result.losses[-1] / result.losses[0], 0.1),
        "net error / (0.1 + 0.2|want|)": below(worst, 1.0),
    }


def ball_short(start):
    errors = test_events.short_ball_fit(*start)
    return {"|g/g* - 1|": below(errors["g"], 0.01), "|e/e* - 1|": below(errors["e"], 0.01)}


def dosing_short(seed):
    errors = test_events.short_dosing_fit(seed)
    return {"|ka/ka* - 1|": below(errors["ka"], 0.05), "curve": below(errors["curve"], 0.1)}


def minibatch(seed):
    before, after = test_mixed.minibatch_fit_losses(seed)
    return {"after / before": below(after / before, 0.3)}


def collocation_lv(start):
    found, losses = test_collocation.collocation_lotka_volterra_fit(start)
    rel = float(np.max(np.abs(found - test_collocation.LV_RATES) / test_collocation.LV_RATES))
    return {
        "worst rate rel. error": below(rel, 0.02),
        "last / first": below(losses[-1] / losses[0], 1e-2),
    }


def cli_fit(seed):
    import json

    from neuraldiffeq.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        csv, out = Path(tmp) / "osc.csv", Path(tmp) / "out"
        rows = test_cli_fit.oscillator_rows()
        test_cli_fit.write_csv(csv, rows)
        assert main(test_cli_fit.fit_round_trip_args(csv, out, seed)) == 0
        mse = json.loads((out / "metrics.json").read_text())["train_mse"]
    variance = np.array(rows)[:13, 1:].var(axis=0).mean()
    return {"train MSE / variance": below(mse / variance, 0.2)}


def discover_seed(seed):
    numbers = test_discovery.demo_seed_numbers(seed)
    return {
        "terms selected wrongly": below(numbers["wrong terms"], 0.5),
        "worst coefficient rel. error": below(numbers["coefficient error"], 0.1),
        "formula RMSE / range": below(numbers["formula RMSE / range"], 0.1),
        "network RMSE / formula RMSE": above(numbers["network RMSE / formula RMSE"], 3.0),
    }


# name -> (measure, the test's own initialisation, three others)
CHECKS = {
    "test_fit::test_spiral_fit_reaches_tutorial_loss": (spiral, [0, 1, 2, 3]),
    "test_augmented::test_plain_ode_cannot_cross_augmented_can": (augmented, [1, 2, 3, 4]),
    "test_cnf::test_fit_with_maximum_likelihood_learns_a_shifted_gaussian": (ffjord, [10, 1, 2, 3]),
    "test_latent::test_elbo_increases_when_trained_with_fit": (latent, [1, 2, 3, 4]),
    "test_sde::test_moment_matching_recovers_drift_and_diffusion": (moments, [0, 1, 2, 3]),
    "test_neural_dde::test_network_sees_..._fits_with_multiple_shooting": (
        dde_shooting,
        [0, 1, 2, 3],
    ),
    "test_neural_dde::test_trajectory_fit_recovers_the_delayed_rate": (
        dde_rate,
        [0.5, 0.3, 0.8, 1.5],
    ),
    "test_mixed::test_mixed_preset_runs_collocation_shooting_trajectory_lbfgs": (
        mixed,
        [0, 1, 2, 3],
    ),
    "test_mixed::test_collocation_fits_a_hybrid_field": (hybrid, [3, 0, 1, 2]),
    "test_mixed::test_fit_with_minibatches_reduces_the_full_loss": (minibatch, [2, 0, 1, 3]),
    "test_collocation::test_collocation_recovers_lotka_volterra_parameters": (
        collocation_lv,
        [(1.0, 1.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5), (2.0, 1.5, 2.0, 1.5), (1.0, 2.0, 4.0, 0.5)],
    ),
    "test_cli_fit::test_fit_round_trip": (cli_fit, [0, 1, 2, 3]),
    "test_events::test_demo_bouncing_ball_short_recovers_g_and_restitution": (
        ball_short,
        test_events.BALL_STARTS,
    ),
    "test_events::test_demo_dosing_short_recovers_the_absorption_rate": (
        dosing_short,
        test_events.DOSING_SEEDS,
    ),
    # the test's own noise seeds, all five (it asks for 4 of 5; every one is reported here)
    "test_discovery::test_demo_discovers_the_missing_terms_in_four_of_five_seeds": (
        discover_seed,
        [0, 1, 2, 3, 4],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of check names to run")
    parser.add_argument("--out", default="benchmarks/results/test_margins.md")
    args = parser.parse_args()
    only = " --only " + " ".join(args.only) if args.only else ""
    lines = [
        "# Training-test margins",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `python tests/margins.py{only}`",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{_cpu_name()}",
        "- margin = threshold / measured (for `<`) or measured / threshold (for `>`); the first",
        "  initialisation is the test's own. A check is kept only if every initialisation passes.",
        "",
        "| test | quantity | check | initialisation: measured | worst margin |",
        "|---|---|---|---|---|",
    ]
    failures = 0
    for name, (measure, seeds) in CHECKS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        start = time.perf_counter()
        rows: dict[str, list] = {}
        for seed in seeds:
            for quantity, (value, threshold, margin, op) in measure(seed).items():
                rows.setdefault(quantity, []).append((seed, value, threshold, margin, op))
        for quantity, results in rows.items():
            worst = min(r[3] for r in results)
            failures += worst <= 1.0
            measured = ", ".join(f"{r[0]}: {r[1]:.3g}" for r in results)
            op, threshold = results[0][4], results[0][2]
            lines.append(f"| {name} | {quantity} | {op} {threshold:g} | {measured} | {worst:.2f} |")
            print(lines[-1], flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    lines += ["", f"{failures} check(s) at or below margin 1 (a failing initialisation)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
