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


def test_collocation_recovers_lotka_volterra_parameters():
    true = np.array([1.5, 1.0, 3.0, 1.0])
    data = nde.datasets.lotka_volterra(n_points=1000, t1=10.0, params=tuple(true))
    model = nde.NeuralODE(LotkaVolterra(jnp.array([1.0, 1.0, 1.0, 1.0])))
    strategy = nde.Collocation(kernel="epanechnikov", bandwidth=0.01)
    result = nde.fit(model, data, strategy, optimizer=optax.lbfgs(), steps=60, progress=False)
    found = np.asarray(result.model.field.params)
    np.testing.assert_allclose(found, true, rtol=0.02)
    assert result.losses[-1] < 1e-2 * result.losses[0]


def test_collocation_loss_is_the_field_residual_and_needs_no_solve():
    data = nde.datasets.spiral(n_points=200)
    strategy = nde.Collocation(bandwidth=0.03)
    ts, u_hat, du_hat = strategy.prepare(data)
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
