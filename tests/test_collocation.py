"""Two-stage collocation: kernels, exactness, noisy derivatives, errors, LV parameter recovery."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq.fitting.collocation import KERNELS, default_bandwidth

DIFFEQFLUX_KERNELS = {
    "epanechnikov",
    "uniform",
    "triangular",
    "quartic",
    "triweight",
    "tricube",
    "gaussian",
    "cosine",
    "logistic",
    "sigmoid",
    "silverman",
}


def test_all_eleven_kernels_and_default_bandwidth():
    assert set(KERNELS) == DIFFEQFLUX_KERNELS
    n = 100
    assert default_bandwidth(n) == pytest.approx(n**-0.2 * n ** (-3 / 35) * np.log(n) ** (-1 / 16))
    # the compact kernels integrate to one; the kernels peak at zero
    z = jnp.linspace(-1, 1, 20001)
    for name in (
        "epanechnikov",
        "uniform",
        "triangular",
        "quartic",
        "triweight",
        "tricube",
        "cosine",
    ):
        assert float(jnp.trapezoid(KERNELS[name](z), z)) == pytest.approx(1.0, abs=1e-3), name


def test_local_fits_exact_for_polynomials_every_kernel():
    """Local-linear u is exact on linear data, local-quadratic du/dt exact on quadratic data,
    on an irregular grid, for (T, D) and (B, T, D) data, with every kernel."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        ts = np.sort(rng.uniform(1.0, 4.0, 40))
        linear = np.stack([2.0 - 3.0 * ts, 0.5 * ts], -1)
        quad = np.stack([1.0 + ts - 0.7 * ts**2, 2.0 * ts**2], -1)
        dquad = np.stack([1.0 - 1.4 * ts, 4.0 * ts], -1)
        batch = np.stack([linear, quad])  # (2, T, 2)
        for kernel in KERNELS:
            u_hat, du_hat = nde.collocate(ts, batch, kernel=kernel)
            assert u_hat.shape == du_hat.shape == batch.shape
            np.testing.assert_allclose(u_hat[0], linear, atol=1e-9, err_msg=kernel)
            np.testing.assert_allclose(du_hat[1], dquad, atol=1e-8, err_msg=kernel)
        u2, du2 = nde.collocate(ts, quad, kernel=kernel)  # unbatched gives the same
        np.testing.assert_allclose(du2, du_hat[1], atol=1e-10)


def test_noisy_sin_cos_derivative_within_tolerance():
    """sin/cos, 300 points on [0, 2 pi], noise sd 0.01, bandwidth 0.07 of the span: the
    derivative error is below 0.04 on the inner 80% (the default bandwidth, tuned for noisier
    data, smooths more: its error there is below 0.1)."""
    ts = np.linspace(0.0, 2 * np.pi, 300)
    noise = 0.01 * np.random.default_rng(1).standard_normal((300, 2))
    ys = np.stack([np.sin(ts), np.cos(ts)], -1) + noise
    inner = slice(30, 270)
    for kernel, bandwidth, tol, tol_u in (
        ("epanechnikov", 0.07, 0.04, 0.025),
        ("tricube", 0.07, 0.04, 0.025),
        ("epanechnikov", None, 0.1, 0.15),
    ):
        u_hat, du_hat = nde.collocate(ts, ys, kernel=kernel, bandwidth=bandwidth)
        err = np.abs(np.asarray(du_hat) - np.stack([np.cos(ts), -np.sin(ts)], -1))[inner]
        assert err.max() < tol, (kernel, err.max())
        truth = np.stack([np.sin(ts), np.cos(ts)], -1)
        assert np.abs(np.asarray(u_hat) - truth)[inner].max() < tol_u


def test_mask_equals_dropping_the_points():
    ts = np.linspace(0.0, 3.0, 60)
    ys = np.stack([np.sin(ts), np.exp(-ts)], -1)
    mask = np.ones_like(ys, bool)
    mask[[10, 11, 30], 0] = False
    ys_holey = np.where(mask, ys, np.nan)
    u, du = nde.collocate(ts, ys_holey, mask=mask, bandwidth=0.2)
    keep = mask[:, 0]
    u_ref, du_ref = nde.collocate(ts[keep], ys[keep], bandwidth=0.2)
    np.testing.assert_allclose(np.asarray(du)[keep, 0], np.asarray(du_ref)[:, 0], atol=2e-4)
    np.testing.assert_allclose(np.asarray(u)[keep, 0], np.asarray(u_ref)[:, 0], atol=2e-5)


def test_errors_are_clear():
    ts = np.linspace(0.0, 1.0, 20)
    ys = np.stack([ts, ts], -1)
    with pytest.raises(ValueError, match="Increase the bandwidth .* at least"):
        nde.collocate(ts, ys, bandwidth=0.05)
    with pytest.raises(ValueError, match="Increase the bandwidth"):
        nde.collocate(ts, ys, kernel="gaussian", bandwidth=0.005)
    nde.collocate(ts, ys, bandwidth=0.12)  # just above the needed 2 / 19 works
    with pytest.raises(ValueError, match="kernel must be one of"):
        nde.collocate(ts, ys, kernel="parabolic")
    with pytest.raises(ValueError, match="bandwidth must be a positive number"):
        nde.collocate(ts, ys, bandwidth=-1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        nde.collocate(ts[::-1], ys)
    with pytest.raises(ValueError, match="shape"):
        nde.collocate(ts, ys[:5])
    with pytest.raises(ValueError, match="kernel must be one of"):
        nde.Collocation(kernel="nope")


class LotkaVolterra(eqx.Module):
    """Purely mechanistic field with trainable parameters (alpha, beta, delta, gamma)."""

    params: jax.Array

    def __call__(self, t, u, args):
        a, b, d, g = self.params
        return jnp.stack([a * u[0] - b * u[0] * u[1], d * u[0] * u[1] - g * u[1]])


LV_RATES = np.array([1.5, 1.0, 3.0, 1.0])


def collocation_lotka_volterra_fit(start=(1.0, 1.0, 1.0, 1.0)):
    """L-BFGS on the collocation loss of 1000 clean LV points, from the rates `start`."""
    data = nde.datasets.lotka_volterra(n_points=1000, t1=10.0, params=tuple(LV_RATES))
    model = nde.NeuralODE(LotkaVolterra(jnp.array(start)))
    strategy = nde.Collocation(kernel="epanechnikov", bandwidth=0.01)
    result = nde.fit(model, data, strategy, optimizer=optax.lbfgs(), steps=60, progress=False)
    return np.asarray(result.model.field.params), result.losses


def test_collocation_recovers_lotka_volterra_parameters():
    found, losses = collocation_lotka_volterra_fit()
    np.testing.assert_allclose(found, LV_RATES, rtol=0.02)
    assert losses[-1] < 1e-2 * losses[0]


def test_collocation_loss_is_the_field_residual_and_needs_no_solve():
    data = nde.datasets.spiral(n_points=200)
    strategy = nde.Collocation(bandwidth=0.03)
    ts, u_hat, du_hat = strategy.prepare(nde.NeuralODE(lambda t, y, a: y), data)
    true_field = nde.datasets.synthetic.spiral_field
    model = nde.NeuralODE(true_field)
    # the true field leaves only the smoothing error; a wrong one is much worse
    good = float(strategy.loss(model, (ts, u_hat, du_hat), None))
    bad = float(strategy.loss(nde.NeuralODE(lambda t, y, a: -y), (ts, u_hat, du_hat), None))
    # the same residual written out with numpy: the field of the spiral is (u**3) @ A
    A = nde.datasets.synthetic.SPIRAL_MATRIX
    manual = np.sum((np.asarray(du_hat[0]) - np.asarray(u_hat[0]) ** 3 @ A) ** 2)
    assert good == pytest.approx(manual, rel=1e-4)
    assert good < 0.01 * bad
    jaxpr = str(jax.make_jaxpr(lambda: strategy.loss(model, (ts, u_hat, du_hat), None))())
    assert "while" not in jaxpr  # no ODE solve inside the loss


# -- issue #13: the data-driven bandwidth, the derivative error estimate, bad input ----------


def test_selected_bandwidth_is_exact_on_polynomials():
    """With bandwidth=None the local fits stay exact: u on linear data, du/dt on quadratic
    data, on an irregular grid, batched and masked, and the choice is reported per state."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        ts = np.sort(rng.uniform(0.0, 2.0, 50))
        linear = np.stack([1.0 - 2.0 * ts, 0.3 * ts + 4.0], -1)
        quad = np.stack([ts**2 - ts, 2.0 - 0.5 * ts**2], -1)
        dquad = np.stack([2.0 * ts - 1.0, -ts], -1)
        u, _, info = nde.collocate(ts, linear, info=True)
        np.testing.assert_allclose(u, linear, atol=1e-9)
        _, du, info = nde.collocate(ts, quad, info=True)
        np.testing.assert_allclose(du, dquad, atol=1e-8)
        assert info.method == "selected"
        assert info.bandwidth.shape == info.derivative_bandwidth.shape == (2,)
        assert info.relative_error < 1e-2
        mask = np.ones((2, 50, 2), bool)
        mask[1, [5, 6, 30], 0] = False
        batch = np.stack([quad, np.where(mask[1], quad, np.nan)])
        _, du_b = nde.collocate(ts, batch, mask=mask)
        np.testing.assert_allclose(du_b[0], dquad, atol=1e-8)
        np.testing.assert_allclose(du_b[1], dquad, atol=1e-8)


def test_leave_one_out_score_matches_refitting_without_the_point():
    """The hat-matrix shortcut (y_i - u_i) / (1 - L_ii) equals the residual of a fit that
    never saw y_i (here: the same fit with y_i masked out)."""
    with jax.enable_x64(True):
        ts = np.linspace(0.0, 1.0, 40) ** 1.3
        ys = np.stack([np.sin(5 * ts), np.exp(ts)], -1)
        ys = ys + 0.05 * np.random.default_rng(0).standard_normal(ys.shape)
        s = (ts - ts[0]) / (ts[-1] - ts[0])
        rows = np.array([0, 1, 7, 20, 39])
        h = 0.15
        scores = nde.fitting.collocation._local_scores(
            s, ys, np.ones_like(ys, bool), rows, h, "epanechnikov"
        )
        for k, i in enumerate(rows):
            mask = np.ones_like(ys, bool)
            mask[i] = False
            u_without, _ = nde.collocate(ts, ys, bandwidth=h, mask=mask)
            np.testing.assert_allclose(scores["loo"][k], ys[i] - u_without[i], rtol=1e-7)


def test_selector_finds_the_known_optimum():
    """Known optima: noiseless data -> the smallest workable bandwidth; a straight line plus
    noise (no bias at any bandwidth) -> the widest one tried; sin + noise -> the state
    bandwidth whose true error is within 2x of the best on the grid, and the noise level."""
    with jax.enable_x64(True):
        ts = np.linspace(0.0, 1.0, 400)
        rng = np.random.default_rng(0)
        smooth = np.stack([np.sin(2 * np.pi * ts), np.cos(3 * ts)], -1)
        _, _, clean = nde.collocate(ts, smooth, info=True)
        grid = nde.fitting.collocation._bandwidth_grid(
            nde.fitting.collocation.smallest_bandwidth(ts)
        )
        np.testing.assert_allclose(clean.bandwidth, grid[0])
        assert np.all(clean.derivative_bandwidth < 3.0 * grid[0])
        line = np.stack([0.5 + 2.0 * ts, -ts], -1) + 0.1 * rng.standard_normal((400, 2))
        _, _, flat = nde.collocate(ts, line, info=True)
        assert np.all(flat.bandwidth >= 0.4) and np.all(flat.derivative_bandwidth >= 0.4)
        np.testing.assert_allclose(flat.noise, 0.1, rtol=0.2)
        noisy = smooth + 0.1 * rng.standard_normal((400, 2))
        _, _, info = nde.collocate(ts, noisy, info=True)
        errors = np.array(
            [
                np.mean(
                    (np.asarray(nde.collocate(ts, noisy, bandwidth=float(h))[0]) - smooth) ** 2, 0
                )
                for h in grid[:30]
            ]
        )
        for d in range(2):
            chosen = errors[np.argmin(np.abs(grid[:30] - info.bandwidth[d])), d]
            assert chosen <= 2.0 * errors[:, d].min(), (d, chosen, errors[:, d].min())


def test_derivative_error_estimate_tracks_the_true_error():
    """The estimate is small where the derivatives are good (dense clean spiral) and large
    where they are not (30 points on the fast [0, 5] spiral), matching the true error's size."""
    A = nde.datasets.synthetic.SPIRAL_MATRIX
    for n, t1 in ((200, 1.5), (30, 5.0)):
        data = nde.datasets.spiral(n_points=n, t1=t1)
        ys = np.asarray(data.ys, np.float64)
        _, du, info = nde.collocate(data.ts, ys, info=True)
        true = ys**3 @ A
        rms_true = np.sqrt(np.mean((np.asarray(du) - true) ** 2, 0))
        ratio = info.derivative_error / rms_true
        assert np.all((ratio > 0.2) & (ratio < 5.0)), (n, t1, info.derivative_error, rms_true)
    assert info.relative_error > 0.1  # the last one: 30 points on [0, 5]


def test_auto_preset_puts_collocation_first_only_on_dense_series():
    key = jax.random.key(0)
    dense = [
        nde.datasets.spiral(n_points=300, noise=0.05, key=key),
        nde.datasets.lotka_volterra(n_points=200, t1=8.0),
    ]
    sparse = [nde.datasets.spiral(n_points=30), nde.datasets.spiral(n_points=30, t1=5.0)]
    for data in dense + sparse:
        stages = nde.PRESETS["auto"](data=data)
        names = [type(s.strategy).__name__ for s in stages]
        first, reason = nde.fitting.presets.collocation_first(data)
        assert "%" in reason
        expected = ["MultipleShooting", "Trajectory", "Trajectory"]
        if any(data is d for d in dense):
            assert first and names == ["Collocation"] + expected, reason
        else:
            assert not first and names == expected, reason


def test_presets_share_and_honour_their_keywords():
    data = nde.datasets.spiral(n_points=200)
    for name, preset in nde.PRESETS.items():
        kwargs = dict(optimizer=optax.sgd(0.1), steps=30, steps_per_call=10, data=data)
        if name != "collocation":
            kwargs["lbfgs_steps"] = 20
        stages = preset(**kwargs)
        assert all(s.steps_per_call == 10 for s in stages), name
        solving = [s for s in stages if not isinstance(s.strategy, nde.Collocation)]
        if name != "collocation":
            assert solving[-1].steps == 20  # the L-BFGS polish
            assert all(s.steps == 30 for s in solving[:-1]), name
        else:
            assert stages[0].steps == 30
        with pytest.raises(ValueError, match="steps_per_call must be a positive integer"):
            preset(steps_per_call=0)
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            preset(steps=-1)
        assert len(preset(lbfgs_steps=0)) == len(preset()) - (name != "collocation")
    with pytest.raises(ValueError, match="no L-BFGS polish"):
        nde.PRESETS["collocation"](lbfgs_steps=5)


def test_bad_input_is_refused_clearly():
    ts = np.linspace(0.0, 1.0, 30)
    ys = np.stack([np.sin(3 * ts), np.cos(ts)], -1)
    with pytest.raises(ValueError, match="at least 3 times"):
        nde.collocate(ts[:2], ys[:2])
    mask = np.ones_like(ys, bool)
    mask[2:, 1] = False  # two observations left in state 1: too few for a local quadratic
    with pytest.raises(ValueError, match="state 1 has 2 observed times"):
        nde.collocate(ts, ys, mask=mask)
    holey = ys.copy()
    holey[4, 0] = np.nan
    with pytest.raises(ValueError, match="pass mask="):
        nde.collocate(ts, holey)
    with pytest.raises(ValueError, match="where mask is True"):
        nde.collocate(ts, holey, mask=np.ones_like(ys, bool))
    mask = np.isfinite(holey)
    u, du = nde.collocate(ts, holey, mask=mask, bandwidth=0.3)  # NaN under a mask: skipped
    u_ref, du_ref = nde.collocate(ts[mask[:, 0]], ys[mask[:, 0]], bandwidth=0.3)
    np.testing.assert_allclose(np.asarray(du)[mask[:, 0], 0], du_ref[:, 0], atol=1e-4)
    assert np.all(np.isfinite(np.asarray(u)))
    # a constant state is fine: its derivative is zero and it does not count in the error
    const = np.stack([np.sin(3 * ts), np.full_like(ts, 2.5)], -1)
    u, du, info = nde.collocate(ts, const, info=True)
    np.testing.assert_allclose(du[:, 1], 0.0, atol=1e-4)
    np.testing.assert_allclose(u[:, 1], 2.5, atol=1e-5)
    assert info.derivative_scale[1] == 0.0 and np.isfinite(info.relative_error)
    # an unsatisfiable bandwidth names the smallest workable one, and that one works
    smallest = nde.fitting.collocation.smallest_bandwidth(ts)
    with pytest.raises(ValueError, match=f"at least {1.05 * smallest:.3g}"):
        nde.collocate(ts, ys, bandwidth=0.5 * smallest)
    nde.collocate(ts, ys, bandwidth=1.05 * smallest)
    with pytest.raises(ValueError, match="'rule'"):
        nde.collocate(ts, ys, bandwidth="silverman")
    with pytest.raises(ValueError, match="times first"):
        nde.collocate(ys, ts)
    rule = nde.collocate(ts, ys, bandwidth="rule", info=True)[2]
    np.testing.assert_allclose(rule.bandwidth, default_bandwidth(30))
    assert rule.method == "rule"
