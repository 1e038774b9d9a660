"""Stiff problems: `solver="auto"` (a stiffness estimate before solving) and gradients through
implicit solvers (Van der Pol, mu = 1000) against float64 central finite differences."""

import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq.datasets.synthetic import spiral_field
from neuraldiffeq.fitting.solver_choice import resolve_for_fit
from neuraldiffeq.solve import implicit_solver
from neuraldiffeq.solve.dae import Radau5
from neuraldiffeq.solve.stiffness import (
    EXPLICIT,
    IMPLICIT,
    STIFF_FACTOR,
    estimate_stiffness,
    spectral_radius,
)

ROBER_RATES = (0.04, 3e7, 1e4)


def rober(t, y, k):
    k1, k2, k3 = k[0], k[1], k[2]
    return jnp.stack(
        [
            -k1 * y[0] + k3 * y[1] * y[2],
            k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
            k2 * y[1] ** 2,
        ]
    )


def vdp(t, y, mu):
    return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


# -- solver="auto" ----------------------------------------------------------------------------


def test_auto_picks_explicit_for_the_spiral():
    data = nde.datasets.spiral()
    model = nde.NeuralODE(spiral_field, solver="auto")
    assert model.solver == "auto"
    resolved = model.resolve_solver(data.ts, data.ys[0])
    assert isinstance(resolved.solver, diffrax.Tsit5)
    est = estimate_stiffness(spiral_field, data.ts[0], data.ts[-1], data.ys[0])
    assert est.solver == EXPLICIT and est.ratio < STIFF_FACTOR / 2  # margin 2x
    # the resolved model solves like a model given "tsit5" by name
    named = nde.NeuralODE(spiral_field, solver="tsit5")
    np.testing.assert_allclose(resolved(data.ts, data.ys[0]), named(data.ts, data.ys[0]))


def test_auto_picks_implicit_for_rober():
    k = jnp.array(ROBER_RATES)
    y0 = jnp.array([1.0, 0.0, 0.0])
    # at y0 itself the Jacobian is mild (radius k1 = 0.04): stiffness appears after microseconds
    assert spectral_radius(rober, 0.0, y0, k) == pytest.approx(0.04, rel=1e-5)
    est = estimate_stiffness(rober, 0.0, 1e5, y0, k)
    assert est.solver == IMPLICIT  # at the default rtol 1e-3
    assert est.spectral_radius > 1e3 and est.ratio > 2 * STIFF_FACTOR
    model = nde.NeuralODE(rober, solver="auto", rtol=1e-6, atol=1e-10)
    resolved = model.resolve_solver(jnp.array([0.0, 1e5]), y0, k)
    assert isinstance(resolved.solver, Radau5)  # small and rtol <= 1e-5: Radau IIA
    assert (resolved.rtol, resolved.atol) == (1e-6, 1e-10)  # the rest of the config is kept


def test_auto_picks_implicit_for_van_der_pol_mu_1000_and_explicit_for_mu_1():
    y0 = jnp.array([2.0, 0.0])
    stiff = estimate_stiffness(vdp, 0.0, 3000.0, y0, 1000.0)
    assert stiff.solver == IMPLICIT and stiff.ratio > 1e3 * STIFF_FACTOR
    assert stiff.spectral_radius == pytest.approx(3000.0, rel=1e-3)  # -3 mu at y0
    mild = estimate_stiffness(vdp, 0.0, 30.0, y0, 1.0)
    assert mild.solver == EXPLICIT and mild.ratio < STIFF_FACTOR / 2


def test_auto_picks_implicit_for_a_decayed_fast_mode():
    # dy/dt = -k y moves at rate k relative to itself, so only the probe's steps (held at the
    # stability limit) show the stiffness
    est = estimate_stiffness(lambda t, y, k: -k * y, 0.0, 10.0, jnp.ones(2), 1e4)
    assert est.solver == IMPLICIT and est.probe_step > 0.8 * 3.5
    assert estimate_stiffness(lambda t, y, k: -k * y, 0.0, 10.0, jnp.ones(2), 1.0).solver == (
        EXPLICIT
    )


def test_power_iteration_matches_the_exact_radius_on_a_large_state():
    n = 100  # above EXACT_JACOBIAN_MAX: power iteration
    rates = jnp.linspace(1.0, 500.0, n)
    rho = spectral_radius(lambda t, y, a: -rates * y, 0.0, jnp.ones(n))
    assert rho == pytest.approx(500.0, rel=0.1)


def test_auto_refuses_under_tracing_with_a_clear_message():
    model = nde.NeuralODE(lambda t, y, k: -k * y, solver="auto")
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match=r"resolve_solver\(ts, y0, args\)"):
        jax.jit(lambda y: model(ts, y, 1.0))(jnp.ones(2))
    with pytest.raises(ValueError, match="traced"):
        jax.grad(lambda k: model(ts, jnp.ones(2), k)[-1, 0])(1.0)
    # eagerly, an unresolved model chooses per call (and solves correctly)
    np.testing.assert_allclose(model(ts, jnp.ones(1), 1.0)[-1], np.exp(-1.0), rtol=1e-2)


def test_auto_is_refused_where_it_cannot_choose():
    with pytest.raises(ValueError, match="'auto' chooses between the ODE solvers"):
        nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: 0.1 * y, solver="auto", dt0=0.1)
    with pytest.raises(ValueError, match="not supported by solve_dde"):
        nde.solve_dde(
            lambda t, y, yl, a: -yl[0], lambda t: jnp.ones(1), [1.0], 0.0, 2.0, solver="auto"
        )


def test_fit_resolves_auto_before_compiling():
    # a linear stiff model with one trainable rate: fit must resolve "auto" (implicit here),
    # otherwise the compiled loss would raise the tracing error
    class Decay(eqx.Module):
        log_k: jax.Array

        def __call__(self, t, y, args):
            return -jnp.exp(self.log_k) * y

    ts = jnp.linspace(0.0, 5.0, 8)
    ys = jnp.stack([jnp.exp(-2e3 * ts), jnp.exp(-2e3 * ts)], -1)
    model = nde.NeuralODE(Decay(jnp.log(jnp.asarray(1e3))), solver="auto", rtol=1e-4)
    assert isinstance(resolve_for_fit(model, (ts, ys)).solver, diffrax.Kvaerno5)
    result = nde.fit(model, (ts, ys), nde.Trajectory(), optimizer=optax.adam(0.1), steps=2,
                     progress=False)  # fmt: skip
    assert isinstance(result.model.solver, diffrax.Kvaerno5)
    assert np.all(np.isfinite(result.losses))


def test_implicit_solver_sets_newton_tolerances():
    solver = implicit_solver("kvaerno5", newton_rtol=1e-9, newton_atol=1e-11)
    assert (solver.root_finder.rtol, solver.root_finder.atol) == (1e-9, 1e-11)
    assert isinstance(implicit_solver("kencarp4"), diffrax.KenCarp4)
    with pytest.raises(ValueError, match="implicit solver"):
        implicit_solver("tsit5", newton_rtol=1e-9, newton_atol=1e-9)
    with pytest.raises(ValueError, match="both newton_rtol and newton_atol"):
        implicit_solver("kvaerno5", newton_rtol=1e-9)


# -- gradients through an implicit solver -----------------------------------------------------

MU, T1 = 1000.0, 3000.0
STEP_TOL, NEWTON_TOL = 1e-8, 1e-12


def _vdp_loss(sensitivity):
    solver = implicit_solver("kvaerno5", newton_rtol=NEWTON_TOL, newton_atol=NEWTON_TOL)
    model = nde.NeuralODE(
        vdp, solver=solver, rtol=STEP_TOL, atol=STEP_TOL, max_steps=200_000, sensitivity=sensitivity
    )
    ts = jnp.linspace(0.0, T1, 4)  # 1000, 2000, 3000: all on slow branches of the cycle

    def loss(mu, y0):
        ys = model(ts, y0, mu)
        return jnp.sum(ys[1:, 0])

    return loss


@pytest.fixture(scope="module")
def vdp_finite_differences():
    with jax.enable_x64(True):
        loss = jax.jit(_vdp_loss(nde.Direct()))
        mu, y0 = jnp.asarray(MU), jnp.array([2.0, 0.0])
        h_mu, h_y = 0.1, 1e-4
        d_mu = (loss(mu + h_mu, y0) - loss(mu - h_mu, y0)) / (2 * h_mu)
        d_y0 = jnp.stack(
            [
                (loss(mu, y0.at[i].add(h_y)) - loss(mu, y0.at[i].add(-h_y))) / (2 * h_y)
                for i in range(2)
            ]
        )
        return float(d_mu), np.asarray(d_y0)


# float64 finite differences through Kvaerno5's Newton iterations are this file's costliest
# compiles: the long tier (test_bdf and test_dae check stiff gradients in the default run)
@pytest.mark.long
@pytest.mark.parametrize("sensitivity", [nde.Direct(), nde.Forward()], ids=["direct", "forward"])
def test_van_der_pol_mu_1000_gradients_match_finite_differences(
    sensitivity, vdp_finite_differences
):
    fd_mu, fd_y0 = vdp_finite_differences
    with jax.enable_x64(True):
        start = time.perf_counter()
        g_mu, g_y0 = jax.jit(jax.grad(_vdp_loss(sensitivity), argnums=(0, 1)))(
            jnp.asarray(MU), jnp.array([2.0, 0.0])
        )
        elapsed = time.perf_counter() - start
    err_mu = abs(float(g_mu) - fd_mu) / abs(fd_mu)
    err_y0 = np.linalg.norm(np.asarray(g_y0) - fd_y0) / np.linalg.norm(fd_y0)
    print(f"{type(sensitivity).__name__}: rel err mu {err_mu:.2e}, y0 {err_y0:.2e}, {elapsed:.1f}s")
    assert err_mu <= 1e-4 / 2 and err_y0 <= 1e-4 / 2  # the 1e-4, with margin 2x


# -- the counterexample demo ------------------------------------------------------------------


@pytest.mark.long  # two fits of the demo (one explicit, one implicit)
def test_demo_stiff_explicit_fails_implicit_recovers_the_rates(tmp_path):
    import json

    from neuraldiffeq.cli import main

    out = tmp_path / "stiff"
    argv = ["demo", "stiff", "--steps", "1", "--lbfgs-steps", "20", "--ude-steps", "0"]
    argv += ["--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert {"fit.png", "metrics.json", "model.eqx"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    explicit = metrics["explicit"]
    assert explicit["fit"] == "FitFailure" and explicit["skipped"] == explicit["steps"] == 3
    assert explicit["first_solve"]["max_steps_reached"]
    assert explicit["first_solve"]["observations_reached"] < 40
    assert metrics["auto"]["choice"] == "radau5"  # small, stiff, rtol 1e-6
    assert metrics["implicit"]["max_relative_error"] < 0.01  # the 2%, margin 2x
    start_error = np.abs(np.array(metrics["start_rates"]) / metrics["true_rates"] - 1).min()
    assert start_error > 0.5  # a wrong start indeed


def test_auto_picks_by_size_and_tolerance_among_the_stiff_solvers():
    from neuraldiffeq.solve.bdf import BDF
    from neuraldiffeq.solve.jacobian import SparsityPattern

    rates = jnp.linspace(1e3, 1e5, 300)  # 300 states, stiff: above LARGE_SYSTEM
    field = lambda t, y, a: -rates * y  # noqa: E731
    assert estimate_stiffness(field, 0.0, 1.0, jnp.ones(300), rtol=1e-3).solver == "bdf"
    small = lambda t, y, a: -1e4 * y  # noqa: E731
    assert estimate_stiffness(small, 0.0, 1.0, jnp.ones(2), rtol=1e-3).solver == IMPLICIT
    assert estimate_stiffness(small, 0.0, 1.0, jnp.ones(2), rtol=1e-6).solver == "radau5"
    # a sparse Jacobian asked for: "auto" resolves to the solver that uses it
    config = nde.SolveConfig("auto", rtol=1e-6, jacobian="sparse")
    resolved = config.resolve_solver(small, 0.0, 1.0, jnp.ones(2))
    assert isinstance(resolved.solver, BDF) and resolved.solver.jacobian == "sparse"
    model = nde.NeuralODE(small, config=config.replace(sensitivity=nde.Direct()))
    model = model.resolve_solver(jnp.array([0.0, 1.0]), jnp.ones(2))
    assert isinstance(model.solver.jacobian, SparsityPattern)


# -- the stiff-network demo (issue 29): a neural rate law in a 24-species stiff network -------


def _stiff_network(tmp_path, *argv):
    import json

    from neuraldiffeq.cli import main

    out = tmp_path / "stiff-network"
    assert main(["demo", "stiff-network", *argv, "--out", str(out), "--no-progress"]) == 0
    assert {"fit.png", "metrics.json", "model.eqx"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["species"] >= 20
    assert metrics["stiffness_ratio"] >= 2e6  # the 1e6, margin 2x
    return metrics


@pytest.mark.long  # compiling BDF's sparse Newton solve and its L-BFGS step
def test_demo_stiff_network_bdf_fits_the_neural_rate_law(tmp_path):
    metrics = _stiff_network(tmp_path, "--cells", "7", "--steps", "0", "--lbfgs-steps", "40",
                             "--budget", "0")  # fmt: skip
    bdf = metrics["bdf"]
    assert bdf["skipped"] == 0
    assert bdf["loss_ratio"] <= 1e-3 / 2  # the 1e-3 of the start, margin 2x


@pytest.mark.long
def test_demo_stiff_network_dense_esdirk_costs_more_per_gradient(tmp_path):
    # the demo as users run it (40 cells, kvaerno5 too). Measured on a loaded machine, both fits
    # reach the target: the wall clock is dominated by compilation, so the ESDIRK fit did not
    # run out of its budget; what is asserted is the per-gradient cost: measured 27x and 7.1x
    # (the latter beside the other test worker), so at least 3x
    metrics = _stiff_network(tmp_path)
    assert metrics["bdf"]["loss_ratio"] <= 1e-3 / 2
    per = metrics["seconds_per_gradient"]
    assert per["kvaerno5"] >= 3 * per["bdf"]
