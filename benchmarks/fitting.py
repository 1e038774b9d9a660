"""Fitting strategies of issue #3, measured side by side in one process.

1. shooting: the DiffEqFlux multiple-shooting tutorial. Spiral on [0, 5], 30 points, MLP
   2 -> 16 -> 2 (tanh) on u**3, loss = sum of squares. Single shooting (Adam 0.05, `--ss-steps`)
   against multiple shooting (group_size 3, continuity 200, Adam 0.05, `--ms-steps`) followed
   by a trajectory polish (Adam 0.01 then L-BFGS); full-trajectory loss and wall time per seed.
2. mixed: spiral on [0, 1.5], 30 points, MLP 2 -> 50 -> 2 (tanh) on u**3 (the neural ODE
   tutorial). Time to reach a full-trajectory loss <= `--target` from the same initialisation:
   trajectory-only (Adam 0.05) against collocation (`--colloc-steps` Adam steps) then the same
   trajectory stage. Wall time includes compilation; the compile-free time is shown too.
3. collocate: `nde.collocate` on 10,000 points x 3 states, after compilation, per kernel at
   DiffEqFlux's rule bandwidth, and at the default (chosen from the data) for epanechnikov.
5. issue #13 (`--only lv noisy-spiral auto30 --results FILE`): Lotka-Volterra rates by
   collocation alone; collocation first on the noisy 300-point spiral; "auto" on the 30-point
   spiral with its data check.

    python benchmarks/fitting.py --seeds 5
    python benchmarks/fitting.py --only collocate
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import neuraldiffeq as nde


def cube(y):
    return y**3


def spiral_model(width: int, seed: int) -> nde.NeuralODE:
    mlp = eqx.nn.MLP(2, 2, width, 1, activation=jnp.tanh, key=jax.random.key(seed))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=cube), "tsit5", rtol=1e-3, atol=1e-6)


def trajectory_loss(model, data) -> float:
    strategy = nde.Trajectory()
    return float(strategy.loss(model, strategy.prepare(model, data), None))


# -- 1. multiple shooting on the long spiral ------------------------------------------------------


def bench_shooting(seeds, ss_steps, ms_steps, polish_steps, lbfgs_steps):
    data = nde.datasets.spiral(n_points=30, t1=5.0)
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        if ss_steps > 0:
            t0 = time.perf_counter()
            res = nde.fit(
                spiral_model(16, seed),
                data,
                nde.Trajectory(),
                optimizer=optax.adam(0.05),
                steps=ss_steps,
                progress=False,
                max_failures=10_000,
            )
            row["single_loss"] = trajectory_loss(res.model, data)
            row["single_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stages = [
            nde.Stage(
                nde.MultipleShooting(group_size=3, continuity=200.0), optax.adam(0.05), ms_steps
            ),
            nde.Stage(nde.Trajectory(), optax.adam(0.01), polish_steps),
        ]
        if lbfgs_steps:
            stages.append(nde.Stage(nde.Trajectory(), optax.lbfgs(), lbfgs_steps))
        res = nde.fit(spiral_model(16, seed), data, stages, progress=False, max_failures=10_000)
        row["ms_s"] = time.perf_counter() - t0
        row["ms_only_loss"] = trajectory_loss_after_stage(res, data)
        row["multi_loss"] = trajectory_loss(res.model, data)
        rows.append(row)
        print(row, flush=True)
    return rows


def trajectory_loss_after_stage(res, data):
    return res.stages[0].best_loss  # the multiple-shooting objective, for information


# -- 2. mixed training vs trajectory-only ---------------------------------------------------


def time_to_target(model, data, stages, target):
    """Run `stages`; stop at the first Trajectory step with loss <= target -> (s, s w/o compile)."""
    hit = {}
    t0 = time.perf_counter()
    n_traj_stage = len(stages) - 1

    def callback(step, loss, _model):
        if stage_index["i"] == n_traj_stage and loss <= target and "t" not in hit:
            hit["t"] = time.perf_counter() - t0
            hit["step"] = step
            return True
        return False

    stage_index = {"i": 0}
    compile_s = 0.0
    for i, stage in enumerate(stages):
        stage_index["i"] = i
        res = nde.fit(model, data, [stage], progress=False, callback=callback, max_failures=10_000)
        model = res.model
        compile_s += sum(s.compile_seconds for s in res.stages)
    if "t" not in hit:
        return float("nan"), float("nan"), trajectory_loss(model, data), None
    return hit["t"], hit["t"] - compile_s, trajectory_loss(model, data), hit["step"]


def bench_mixed(
    seeds, target, max_steps, colloc_steps, colloc_lr, traj_lr, bandwidth=None, mixed_lr=None
):
    data = nde.datasets.spiral()
    rows = []
    for seed in seeds:
        traj = [nde.Stage(nde.Trajectory(), optax.adam(traj_lr), max_steps)]
        mixed = [
            nde.Stage(
                nde.Collocation(bandwidth=bandwidth),
                optax.adam(colloc_lr),
                colloc_steps,
                steps_per_call=min(100, colloc_steps),
            ),
            nde.Stage(nde.Trajectory(), optax.adam(mixed_lr or traj_lr), max_steps),
        ]
        t_traj, t_traj_nc, l_traj, s_traj = time_to_target(
            spiral_model(50, seed), data, traj, target
        )
        t_mix, t_mix_nc, l_mix, s_mix = time_to_target(spiral_model(50, seed), data, mixed, target)
        row = dict(
            seed=seed,
            traj_s=t_traj,
            traj_s_nocompile=t_traj_nc,
            traj_steps=s_traj,
            traj_loss=l_traj,
            mixed_s=t_mix,
            mixed_s_nocompile=t_mix_nc,
            mixed_traj_steps=s_mix,
            mixed_loss=l_mix,
            ratio=t_traj / t_mix,
        )
        rows.append(row)
        print(row, flush=True)
    return rows


# -- 4. the presets: nde.fit(model, data, "auto" | "mixed" | ...) as a user calls it ---------


def bench_presets(presets, seeds):
    """Final full-trajectory loss and wall time (compilation included) of each preset."""
    problems = {
        "[0, 1.5] spiral, MLP 2-50-2": (nde.datasets.spiral(), 50),
        "[0, 5] spiral, MLP 2-16-2": (nde.datasets.spiral(n_points=30, t1=5.0), 16),
    }
    rows = []
    for problem, (data, width) in problems.items():
        for preset in presets:
            for seed in seeds:
                t0 = time.perf_counter()
                try:
                    res = nde.fit(spiral_model(width, seed), data, preset, progress=False)
                    loss = trajectory_loss(res.model, data)
                except nde.FitFailure as failure:  # reported, not hidden
                    loss = trajectory_loss(failure.result.model, data)
                row = dict(problem=problem, preset=preset, seed=seed, loss=loss)
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                print(row, flush=True)
    return rows


# -- 3. collocation speed -------------------------------------------------------------------------


def bench_collocate(kernels, repeats):
    ts = np.linspace(0.0, 10.0, 10_000)
    rng = np.random.default_rng(0)
    ys = jnp.asarray(
        np.stack([np.sin(ts), np.cos(ts), np.sin(2 * ts)], -1)
        + 0.1 * rng.standard_normal((10_000, 3)),
        dtype=jnp.float32,
    )
    rows = []
    # DiffEqFlux's rule for every kernel (the smoother alone), and the default bandwidths chosen
    # from the data (selection + smoothing) for the default kernel.
    for kernel, bandwidth in [(k, "rule") for k in kernels] + [("epanechnikov", None)]:
        jax.block_until_ready(nde.collocate(ts, ys, kernel, bandwidth))  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(nde.collocate(ts, ys, kernel, bandwidth))
            times.append(time.perf_counter() - t0)
        name = kernel if bandwidth else f"{kernel}, bandwidths chosen from the data"
        rows.append({"kernel": name, "median_s": statistics.median(times), "min_s": min(times)})
        print(rows[-1], flush=True)
    return rows


# -- 5. issue #13: collocation with the data-driven bandwidth, measured where it should pay ----


class LotkaVolterra(eqx.Module):
    """The mechanistic LV field with its four rates (alpha, beta, delta, gamma) trainable."""

    rates: jax.Array

    def __call__(self, t, u, args):
        a, b, d, g = self.rates
        return jnp.stack([a * u[0] - b * u[0] * u[1], d * u[0] * u[1] - g * u[1]])


LV_RATES = (1.5, 1.0, 3.0, 1.0)


def bench_lv(seeds, noises):
    """Worst relative rate error of collocation alone, default settings (bandwidths chosen from
    the data), from rates (1, 1, 1, 1): 200 points on [0, 8], multiplicative Gaussian noise
    y * (1 + noise * N(0, 1)) on every value, two optimisers: the "collocation" preset
    (Adam 1e-2 x 2000) and L-BFGS x 100."""
    clean = nde.datasets.lotka_volterra(n_points=200, t1=8.0, params=LV_RATES)
    true = np.asarray(LV_RATES)
    rows = []
    for noise in noises:
        for seed in seeds if noise else seeds[:1]:  # clean data: one seed is every seed
            rng = np.random.default_rng(seed)
            ys = np.asarray(clean.ys) * (1.0 + noise * rng.standard_normal(clean.ys.shape))
            data = nde.TimeSeries(clean.ts, ys)
            _, _, info = nde.collocate(data.ts, data.ys, info=True)
            row = dict(noise=noise, seed=seed, bandwidth=info.bandwidth.round(4).tolist())
            row["derivative_bandwidth"] = info.derivative_bandwidth.round(4).tolist()
            row["relative_error_estimate"] = round(info.relative_error, 4)
            for name, strategy, opt, steps in (
                ("preset", "collocation", None, None),
                ("lbfgs", nde.Collocation(), optax.lbfgs(), 100),
            ):
                model = nde.NeuralODE(LotkaVolterra(jnp.ones(4)))
                t0 = time.perf_counter()
                res = nde.fit(model, data, strategy, optimizer=opt, steps=steps, progress=False)
                rates = np.asarray(res.model.field.rates)
                row[f"{name}_worst_rel_err"] = float(np.max(np.abs(rates / true - 1.0)))
                row[f"{name}_rates"] = rates.round(4).tolist()
                row[f"{name}_s"] = time.perf_counter() - t0
            rows.append(row)
            print(row, flush=True)
    return rows


def bench_lv_variants(seeds, noise=0.05):
    """Which bandwidths serve collocation best on the noisy LV data? The rates are the exact
    least-squares solution of the collocation loss (it is linear in them), for four ways of
    choosing the bandwidths: per state or pooled, states at the leave-one-out bandwidth or at
    the derivative one."""
    clean = nde.datasets.lotka_volterra(n_points=200, t1=8.0, params=LV_RATES)
    ts, true = np.asarray(clean.ts), np.asarray(LV_RATES)

    def rates(u, du):
        x, y = u[:, 0], u[:, 1]
        a, b = np.linalg.lstsq(np.stack([x, -x * y], 1), du[:, 0], rcond=None)[0]
        d, g = np.linalg.lstsq(np.stack([x * y, -y], 1), du[:, 1], rcond=None)[0]
        return np.array([a, b, d, g])

    def at(ys, h, which):  # u (0) or du (1) of each state at its own bandwidth h[state]
        return np.stack(
            [np.asarray(nde.collocate(ts, ys, bandwidth=float(h[d]))[which])[:, d] for d in (0, 1)],
            1,
        )

    names = {
        "default": "per state: u at the leave-one-out h, du at the derivative h (the default)",
        "u_at_du": "per state: u and du both at the derivative h",
        "pooled_du": "pooled: u and du at the largest state's derivative h",
        "pooled": "pooled: u at the largest leave-one-out h, du at the largest derivative h",
    }
    errors = {k: [] for k in names}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ys = np.asarray(clean.ys) * (1.0 + noise * rng.standard_normal(clean.ys.shape))
        u, du, info = nde.collocate(ts, ys, info=True)
        hu, hd = info.bandwidth, info.derivative_bandwidth
        both = np.full(2, hd.max())
        candidates = {
            "default": (np.asarray(u), np.asarray(du)),
            "u_at_du": (at(ys, hd, 0), np.asarray(du)),
            "pooled_du": (at(ys, both, 0), at(ys, both, 1)),
            "pooled": (at(ys, np.full(2, hu.max()), 0), at(ys, both, 1)),
        }
        for k, (uu, dd) in candidates.items():
            errors[k].append(float(np.max(np.abs(rates(uu, dd) / true - 1.0))))
    lines = ["| bandwidths | worst relative rate error per seed | median |", "|---|---|---|"]
    for k, name in names.items():
        per = ", ".join(f"{e:.3f}" for e in errors[k])
        lines.append(f"| {name} | {per} | {statistics.median(errors[k]):.4f} |")
    return "\n".join(lines)


def clean_mse_fn(data_clean):
    ts, ys = jnp.asarray(data_clean.ts), jnp.asarray(data_clean.ys)

    @eqx.filter_jit
    def mse(model):
        return jnp.mean((model(ts, ys[0]) - ys) ** 2)

    return mse


def time_to_clean_target(model, data, stages, mse, target):
    """Run `stages`; after each compiled call of any stage, stop once the trajectory's MSE
    to the clean data is <= target. -> (wall s, s without compilation, (stage, step) of the
    hit, final clean MSE). The MSE checks themselves are timed and subtracted."""
    state = {"stage": 0, "hit": None, "check_s": 0.0}
    t0 = time.perf_counter()

    def callback(step, loss, m):
        c0 = time.perf_counter()
        value = float(mse(m))
        state["check_s"] += time.perf_counter() - c0
        if value <= target:
            state["hit"] = (time.perf_counter() - t0 - state["check_s"], (state["stage"], step))
            return True
        return False

    compile_s = 0.0
    for i, stage in enumerate(stages):
        if state["hit"] is not None:
            break
        state["stage"] = i
        res = nde.fit(model, data, [stage], progress=False, callback=callback, max_failures=10**4)
        model = res.model
        compile_s += sum(s.compile_seconds for s in res.stages)
    final = float(mse(model))
    if state["hit"] is None:
        return float("nan"), float("nan"), None, final
    wall, step = state["hit"]
    return wall, wall - compile_s, step, final


def bench_noisy_spiral(
    seeds, target, max_steps, colloc_steps, traj_lr, mixed_lr, per_call, bandwidth=None
):
    """300 points on [0, 1.5], noise 0.05, MLP 2-50-2 on u**3: time until the trajectory is
    within MSE `target` of the clean one, trajectory-only (Adam `traj_lr`) against collocation
    (default settings, Adam 1e-2 x `colloc_steps`, fused 100) then trajectory steps with Adam
    `mixed_lr` (the network starts close: a smaller rate keeps it there)."""
    clean = nde.datasets.spiral(n_points=300)
    mse = clean_mse_fn(clean)
    # Warm-up, untimed: the MSE check's compilation and the first fit of each kind in a process
    # carry one-time costs (seconds) that are not the contenders' steady state.
    mse(spiral_model(50, 0))
    warm = nde.datasets.spiral(n_points=300, noise=0.05, key=jax.random.key(99))
    for stages in (
        [nde.Stage(nde.Trajectory(), optax.adam(traj_lr), 20, per_call)],
        [nde.Stage(nde.Collocation(bandwidth=bandwidth), optax.adam(1e-2), 100, 100)],
    ):
        nde.fit(spiral_model(50, 99), warm, stages, progress=False)
    rows = []
    for seed in seeds:
        noisy = nde.datasets.spiral(n_points=300, noise=0.05, key=jax.random.key(100 + seed))
        nde.collocate(noisy.ts, noisy.ys, bandwidth=bandwidth)  # compile the smoother
        traj = nde.Stage(nde.Trajectory(), optax.adam(traj_lr), max_steps, per_call)
        colloc = nde.Stage(
            nde.Collocation(bandwidth=bandwidth), optax.adam(1e-2), colloc_steps, 100
        )
        after = nde.Stage(nde.Trajectory(), optax.adam(mixed_lr), max_steps, per_call)
        t_t, t_t_nc, s_t, f_t = time_to_clean_target(
            spiral_model(50, seed), noisy, [traj], mse, target
        )
        t_m, t_m_nc, s_m, f_m = time_to_clean_target(
            spiral_model(50, seed), noisy, [colloc, after], mse, target
        )
        row = dict(
            seed=seed,
            traj_s=t_t,
            traj_s_nocompile=t_t_nc,
            traj_steps=s_t,
            traj_final_mse=f_t,
            mixed_s=t_m,
            mixed_s_nocompile=t_m_nc,
            mixed_traj_steps=s_m,
            mixed_final_mse=f_m,
            speedup=t_t / t_m,
            speedup_nocompile=t_t_nc / t_m_nc,
        )
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_auto30(seeds):
    """The 30-point [0, 1.5] spiral, MLP 2-50-2: "auto" with its data check (what it chose)."""
    data = nde.datasets.spiral()
    first, reason = nde.fitting.presets.collocation_first(data)
    print(f"auto on the 30-point spiral: collocation first = {first}: {reason}", flush=True)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        stages = nde.PRESETS["auto"](data=data)
        res = nde.fit(spiral_model(50, seed), data, stages, progress=False)
        row = dict(
            seed=seed,
            stages=[type(s.strategy).__name__ for s in stages],
            loss=trajectory_loss(res.model, data),
            seconds=time.perf_counter() - t0,
        )
        rows.append(row)
        print(row, flush=True)
    return rows, first, reason


def write_results(path, command, sections):
    """A markdown file with the date, command, machine (`lscpu | head`) and the sections."""
    import datetime
    import os
    import subprocess

    lscpu = subprocess.run("lscpu | head", shell=True, capture_output=True, text=True).stdout
    load = os.getloadavg()
    text = [
        f"# {sections[0]}",
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Command: `{command}`  ",
        f"jax {jax.__version__}, load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "",
        "```",
        lscpu.rstrip(),
        "```",
        "",
    ]
    for title, body in sections[1:]:
        text += [f"## {title}", "", body.rstrip(), ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(text) + "\n")
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=[
            "shooting",
            "mixed",
            "collocate",
            "presets",
            "lv",
            "lv-variants",
            "noisy-spiral",
            "auto30",
        ],
        nargs="+",
        default=None,
        help="the parts to run (default: shooting, mixed, collocate, presets)",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--ss-seeds", type=int, default=3, help="seeds for single shooting")
    parser.add_argument("--ss-steps", type=int, default=1000)
    parser.add_argument("--ms-steps", type=int, default=300)
    parser.add_argument("--polish-steps", type=int, default=300)
    parser.add_argument("--lbfgs-steps", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--colloc-steps", type=int, default=1000)
    parser.add_argument("--colloc-lr", type=float, default=0.01)
    parser.add_argument("--traj-lr", type=float, default=0.05)
    parser.add_argument(
        "--mixed-traj-lr",
        type=float,
        default=None,
        help="Adam rate of the trajectory stage after collocation (default: --traj-lr)",
    )
    parser.add_argument("--colloc-bandwidth", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["auto", "mixed", "trajectory"])
    parser.add_argument("--kernels", nargs="+", default=None, help="collocate: default all")
    parser.add_argument("--noisy-target", type=float, default=0.01)
    parser.add_argument("--noisy-max-steps", type=int, default=3000)
    parser.add_argument("--noisy-colloc-steps", type=int, default=300)
    parser.add_argument("--noisy-traj-lr", type=float, default=0.05)
    parser.add_argument("--noisy-mixed-lr", type=float, default=0.01)
    parser.add_argument("--noisy-per-call", type=int, default=10)
    parser.add_argument(
        "--noisy-bandwidth",
        type=float,
        default=None,
        help="collocation bandwidth for noisy-spiral (default: chosen from the data)",
    )
    parser.add_argument(
        "--results",
        default=None,
        help="append the lv / noisy-spiral / auto30 tables to this markdown file",
    )
    args = parser.parse_args()
    only = set(args.only or ["shooting", "mixed", "collocate", "presets"])
    sections = ["Collocation with data-driven bandwidths (issue #13)"]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, jax {jax.__version__}, "
        f"devices {jax.devices()}"
    )
    seeds = list(range(args.seeds))
    if "collocate" in only:
        rows = bench_collocate(args.kernels or list(nde.fitting.KERNELS), args.repeats)
        lines = ["| kernel | median s | min s |", "|---|---|---|"]
        lines += [f"| {r['kernel']} | {r['median_s']:.3f} | {r['min_s']:.3f} |" for r in rows]
        print("\n" + "\n".join(lines))
        sections.append(("nde.collocate on 10,000 points x 3 states", "\n".join(lines)))
    if "mixed" in only:
        rows = bench_mixed(
            seeds,
            args.target,
            args.max_steps,
            args.colloc_steps,
            args.colloc_lr,
            args.traj_lr,
            args.colloc_bandwidth,
            args.mixed_traj_lr,
        )
        print(
            "\n| seed | trajectory-only s (steps) | mixed s (traj steps) | ratio | "
            "w/o compile: traj s / mixed s |\n|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['seed']} | {r['traj_s']:.2f} ({r['traj_steps']}) | {r['mixed_s']:.2f} "
                f"({r['mixed_traj_steps']}) | {r['ratio']:.2f} | "
                f"{r['traj_s_nocompile']:.2f} / {r['mixed_s_nocompile']:.2f} |"
            )
        med_t = statistics.median(r["traj_s"] for r in rows)
        med_m = statistics.median(r["mixed_s"] for r in rows)
        print(
            f"median: trajectory-only {med_t:.2f} s, mixed {med_m:.2f} s, "
            f"ratio of medians {med_t / med_m:.2f}, "
            f"median ratio {statistics.median(r['ratio'] for r in rows):.2f}"
        )
    if "presets" in only:
        rows = bench_presets(args.presets, seeds)
        print("\n| problem | preset | final trajectory loss, per seed | median | median s |")
        print("|---|---|---|---|---|")
        for problem in dict.fromkeys(r["problem"] for r in rows):
            for preset in args.presets:
                sel = [r for r in rows if r["problem"] == problem and r["preset"] == preset]
                losses = ", ".join(f"{r['loss']:.4g}" for r in sel)
                print(
                    f"| {problem} | {preset} | {losses} | "
                    f"{statistics.median(r['loss'] for r in sel):.4g} | "
                    f"{statistics.median(r['seconds'] for r in sel):.1f} |"
                )
    if "shooting" in only:
        ss = set(range(args.ss_seeds))
        rows = []
        for seed in seeds:
            rows += bench_shooting(
                [seed],
                args.ss_steps if seed in ss else 0,
                args.ms_steps,
                args.polish_steps,
                args.lbfgs_steps,
            )
        print(
            "\n| seed | single shooting loss (s) | multiple shooting + polish loss (s) |"
            "\n|---|---|---|"
        )
        for r in rows:
            single = f"{r['single_loss']:.2f} ({r['single_s']:.1f})" if "single_loss" in r else "-"
            print(f"| {r['seed']} | {single} | {r['multi_loss']:.4f} ({r['ms_s']:.1f}) |")
        print(
            f"multiple shooting below 1.0 on {sum(r['multi_loss'] < 1.0 for r in rows)} of "
            f"{len(rows)} seeds; median wall {statistics.median(r['ms_s'] for r in rows):.1f} s"
        )

    if "lv" in only:
        rows = bench_lv(seeds, [0.0, 0.05])
        lines = [
            "| noise | seed | bandwidth u / du | est. rel. error | worst rel. rate error: "
            "preset (Adam 2000) | L-BFGS 100 |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['noise']:.0%} | {r['seed']} | {r['bandwidth']} / "
                f"{r['derivative_bandwidth']} | {r['relative_error_estimate']:.3f} | "
                f"{r['preset_worst_rel_err']:.4f} | {r['lbfgs_worst_rel_err']:.4f} |"
            )
        for noise in dict.fromkeys(r["noise"] for r in rows):
            sel = [r for r in rows if r["noise"] == noise]
            lines.append(
                f"\nmedian worst relative rate error at noise {noise:.0%}: preset "
                f"{statistics.median(r['preset_worst_rel_err'] for r in sel):.4f}, L-BFGS "
                f"{statistics.median(r['lbfgs_worst_rel_err'] for r in sel):.4f} "
                f"({len(sel)} seed{'s' if len(sel) > 1 else ''})"
            )
        print("\n".join(lines))
        sections.append(("Lotka-Volterra rates by collocation alone", "\n".join(lines)))
    if "lv-variants" in only:
        table = bench_lv_variants(seeds)
        print(table)
        sections.append(("Lotka-Volterra, 5% noise: which bandwidths serve collocation", table))
    if "noisy-spiral" in only:
        rows = bench_noisy_spiral(
            seeds,
            args.noisy_target,
            args.noisy_max_steps,
            args.noisy_colloc_steps,
            args.noisy_traj_lr,
            args.noisy_mixed_lr,
            args.noisy_per_call,
            args.noisy_bandwidth,
        )
        lines = [
            "| seed | trajectory only: s, w/o compile (steps) | collocation -> trajectory: s, "
            "w/o compile (hit at stage, step) | speed-up | speed-up w/o compile |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['seed']} | {r['traj_s']:.2f}, {r['traj_s_nocompile']:.2f} "
                f"({r['traj_steps']}) | {r['mixed_s']:.2f}, {r['mixed_s_nocompile']:.2f} "
                f"({r['mixed_traj_steps']}) | {r['speedup']:.2f} | "
                f"{r['speedup_nocompile']:.2f} |"
            )

        def med(key):
            return statistics.median(r[key] for r in rows)

        lines.append(
            f"\nmedians: trajectory only {med('traj_s'):.2f} s ({med('traj_s_nocompile'):.2f} s "
            f"w/o compile), collocation -> trajectory {med('mixed_s'):.2f} s "
            f"({med('mixed_s_nocompile'):.2f} s w/o compile); median speed-up "
            f"{med('speedup'):.2f} (with compile), {med('speedup_nocompile'):.2f} (without)"
        )
        print("\n".join(lines))
        how = "chosen from the data" if args.noisy_bandwidth is None else args.noisy_bandwidth
        sections.append(
            (f"Noisy 300-point spiral: collocation first (bandwidth {how})", "\n".join(lines))
        )
    if "auto30" in only:
        rows, first, reason = bench_auto30(seeds)
        lines = [f'"auto" chose collocation first: {first} ({reason}).', ""]
        lines += ["| seed | stages | final trajectory loss | s |", "|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['seed']} | {' -> '.join(r['stages'])} | {r['loss']:.4g} | "
                f"{r['seconds']:.1f} |"
            )
        lines.append(
            f"\nmedian loss {statistics.median(r['loss'] for r in rows):.4g}, range "
            f"{min(r['loss'] for r in rows):.4g}-{max(r['loss'] for r in rows):.4g}"
        )
        print("\n".join(lines))
        sections.append(('30-point [0, 1.5] spiral, "auto"', "\n".join(lines)))
    if args.results and len(sections) > 1:
        import sys

        write_results(args.results, "python " + " ".join(sys.argv), sections)


if __name__ == "__main__":
    main()
