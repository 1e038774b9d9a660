"""Neural CDEs: interpolations against hand-derived cases (and torchcde's coefficients when it is
installed), the linear CDE's closed form, the strategies' input checks, and a tiny training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def _values(X, ts):
    return np.stack([np.asarray(X.evaluate(t)) for t in ts])


def _derivatives(X, t, n):
    """The first n time derivatives of X at t (from the right of a knot: t + tiny)."""
    f = X.evaluate
    out = []
    for _ in range(n):
        f = jax.jacfwd(f)
        out.append(np.asarray(f(t)))
    return out


# -- interpolations, by hand -------------------------------------------------------------------


def test_natural_cubic_hand_derived(x64_module):
    # Through (0, 0), (1, 1), (2, 0) the natural spline is 1.5 s - 0.5 s³ on [0, 1] (knot slopes
    # 1.5, 0, -1.5 solve the tridiagonal system 2k0 + k1 = 3, k0 + 4k1 + k2 = 0, k1 + 2k2 = -3)
    X = nde.interpolation_coeffs([0.0, 1.0, 2.0], [[0.0], [1.0], [0.0]], time_channel=False)
    np.testing.assert_allclose(_values(X, [0.5, 1.5])[:, 0], [0.6875, 0.6875], atol=1e-14)
    a, b, c, d = (np.asarray(v)[:, 0] for v in X.coeffs)
    np.testing.assert_allclose(
        np.stack([a, b, c, d]), [[0, 1], [1.5, 0], [0, -1.5], [-0.5, 0.5]], atol=1e-14
    )


def test_natural_cubic_is_a_natural_c2_spline(x64_module):
    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0, 3, 7))
    ys = rng.normal(size=(7, 2))
    X = nde.interpolation_coeffs(ts, ys, time_channel=False)
    np.testing.assert_allclose(_values(X, ts), ys, atol=1e-12)  # through the data
    for k in range(1, 6):  # first and second derivatives continuous at the inner knots
        left = _derivatives(X, ts[k] - 1e-9, 2)
        right = _derivatives(X, ts[k] + 1e-9, 2)
        np.testing.assert_allclose(left[0], right[0], atol=1e-6)
        np.testing.assert_allclose(left[1], right[1], atol=1e-6)
    for t in (ts[0], ts[-1] - 1e-12):  # natural: no curvature at the ends
        np.testing.assert_allclose(_derivatives(X, t, 2)[1], 0.0, atol=1e-8)


def test_hermite_backward_differences(x64_module):
    ts = np.array([0.0, 1.0, 3.0, 4.0])
    ys = np.array([[0.0], [2.0], [3.0], [1.0]])
    X = nde.interpolation_coeffs(ts, ys, kind="hermite", time_channel=False)
    np.testing.assert_allclose(_values(X, ts), ys, atol=1e-13)
    # slope at knot k (from the right) = the previous chord's slope; the first piece's own
    chords = np.diff(ys[:, 0]) / np.diff(ts)
    slopes = [float(X.derivative(t, left=False)[0]) for t in ts[:-1]]
    np.testing.assert_allclose(slopes, [chords[0], chords[0], chords[1]], atol=1e-13)
    # causal: changing the last observation leaves X on the first two pieces alone
    X2 = nde.interpolation_coeffs(ts, np.r_[ys[:3], [[9.0]]], kind="hermite", time_channel=False)
    grid = np.linspace(0, 3, 13)
    np.testing.assert_allclose(_values(X, grid), _values(X2, grid), atol=1e-13)


def test_missing_values_and_channels(x64_module):
    ts = np.array([0.0, 1.0, 2.0, 4.0, 5.0])
    ys = np.array([[np.nan, 1.0], [1.0, np.nan], [np.nan, 3.0], [5.0, np.nan], [np.nan, np.nan]])
    X = nde.interpolation_coeffs(ts, ys, kind="linear", observed_channels=True)
    assert X.channels == 5  # time, 2 values, 2 counts / T
    got = _values(X, ts)
    np.testing.assert_allclose(got[:, 0], ts)
    # missing: linear in time between observations, held constant beyond the first and last
    np.testing.assert_allclose(got[:, 1], [1.0, 1.0, 7 / 3, 5.0, 5.0], atol=1e-13)
    np.testing.assert_allclose(got[:, 2], [1.0, 2.0, 3.0, 3.0, 3.0], atol=1e-13)
    np.testing.assert_allclose(got[:, 3:], np.array([[0, 1], [1, 1], [1, 2], [2, 2], [2, 2]]) / 5)
    # the same through a mask; a channel never observed is zero
    mask = ~np.isnan(ys)
    Xm = nde.interpolation_coeffs(ts, np.nan_to_num(ys, nan=99.0), mask, kind="linear")
    np.testing.assert_allclose(_values(Xm, ts), got[:, :3], atol=1e-13)
    X0 = nde.interpolation_coeffs(ts, np.full((5, 1), np.nan), kind="cubic")
    np.testing.assert_allclose(_values(X0, [0.5, 3.0])[:, 1], 0.0)


def test_observation_counts_keep_the_initial_state_bounded_on_long_series():
    # |dz_i/dt| <= sum_c |dX_c/dt| under the default field's tanh, so z moves by at most the
    # variation of X: 1 for a count divided by T, T for a raw count (here 100: z moves by ~96)
    ts = np.linspace(0.0, 1.0, 100)
    model = nde.NeuralCDE(
        1,
        4,
        2,
        width_size=8,
        depth=1,
        time_channel=False,
        observed_channels=True,
        key=jax.random.key(0),
    )
    X = model.control(ts, np.ones((100, 1)))  # constant data: only the count channel moves
    np.testing.assert_allclose(X.evaluate(ts[-1]), [1.0, 1.0], rtol=1e-5)
    z0 = model.initial(X.evaluate(ts[0]))
    moved = np.max(np.abs(np.asarray(model.hidden(X))[-1] - z0))
    assert 1e-3 < moved <= 1.0 + 1e-4


def test_cubic_with_missing_is_the_spline_through_observed_points(x64_module):
    rng = np.random.default_rng(1)
    ts = np.sort(rng.uniform(0, 4, 9))
    x = rng.normal(size=9)
    seen = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0], bool)
    ys = np.where(seen, x, np.nan)[:, None]
    X = nde.interpolation_coeffs(ts, ys, time_channel=False)
    # torchcde's rule: first/last observation held to the ends, which become knots
    kt = np.r_[ts[0], ts[seen], ts[-1]]
    kx = np.r_[x[seen][0], x[seen], x[seen][-1]]
    ref = nde.interpolation_coeffs(kt, kx[:, None], time_channel=False)
    grid = np.linspace(ts[0], ts[-1], 41)
    np.testing.assert_allclose(_values(X, grid), _values(ref, grid), atol=1e-12)


def test_matches_torchcde_coefficients(x64_module):
    torch = pytest.importorskip("torch")
    torchcde = pytest.importorskip("torchcde")
    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0, 5, 9))
    ys = rng.normal(size=(3, 9, 2))
    ys[rng.uniform(size=ys.shape) < 0.35] = np.nan
    ys[0, :, 1] = np.nan
    x = torch.tensor(np.concatenate([np.broadcast_to(ts, (3, 9))[..., None], ys], -1))
    t = torch.tensor(ts)
    peers = {
        "cubic": torchcde.natural_cubic_coeffs,
        "hermite": torchcde.hermite_cubic_coefficients_with_backward_differences,
        "linear": torchcde.linear_interpolation_coeffs,
    }
    for kind, peer in peers.items():
        X = nde.interpolation_coeffs(ts, ys, kind=kind)
        if kind == "linear":
            ours = np.asarray(X.coeffs[0])
        else:  # torchcde stores (a, b, 2c, 3d)
            a, b, c, d = (np.asarray(v) for v in X.coeffs)
            ours = np.concatenate([a, b, 2 * c, 3 * d], -1)
        np.testing.assert_allclose(ours, peer(x, t).numpy(), atol=1e-10, err_msg=kind)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ts=[0.0, np.nan, 1.0]), "ts contains NaN"),
        (dict(ts=[0.0, 2.0, 1.0]), "strictly increasing"),
        (dict(ts=[0.0, 1.0]), r"ts must have shape \(T,\) or \(B, T\)"),
        (dict(ys=np.zeros(3)), r"ys must have shape \(T, D\)"),
        (dict(kind="spline"), "kind must be one of"),
        (dict(mask=np.ones((3, 2), bool), ys=np.full((3, 2), np.nan)), "NaN where mask"),
    ],
)
def test_interpolation_input_errors(kwargs, match):
    args = dict(ts=[0.0, 1.0, 2.0], ys=np.zeros((3, 2)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        nde.interpolation_coeffs(**args)


# -- the solve ---------------------------------------------------------------------------------


class LinearField(eqx.Module):
    A: jax.Array  # (channels, hidden, hidden)

    def __call__(self, t, z, args=None):
        return jnp.einsum("chk,k->hc", self.A, z)


def _expm(m):
    # scaling and squaring with a Taylor series (float64-exact for these small matrices)
    s = max(0, int(np.ceil(np.log2(max(np.linalg.norm(m, 1), 1e-300)))) + 1)
    m = m / 2**s
    out = term = np.eye(len(m))
    for k in range(1, 30):
        term = term @ m / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


def test_linear_cde_closed_form(x64_module):
    """dz = Σ_c A_c z dX_c on a piecewise-linear X: z(t_k+1) = expm(Σ_c A_c ΔX_c) z(t_k)."""
    rng = np.random.default_rng(0)
    hidden, n = 3, 6
    ts = np.sort(rng.uniform(0, 2, n))
    xs = rng.normal(size=(n, 2))
    A = 0.7 * rng.normal(size=(2, hidden, hidden))
    z0 = np.array([1.0, -0.5, 0.3])
    model = nde.NeuralCDE(
        2,
        hidden,
        hidden,
        interpolation="linear",
        time_channel=False,
        output="sequence",
        field=LinearField(jnp.asarray(A)),
        initial=lambda x0: jnp.asarray(z0),
        readout=lambda z: z,
        solver="dopri5",
        rtol=1e-11,
        atol=1e-11,
    )
    ref = [z0]
    for dx in np.diff(xs, axis=0):
        ref.append(_expm(np.tensordot(dx, A, axes=1)) @ ref[-1])
    got = np.asarray(model(model.control(ts, xs)))
    np.testing.assert_allclose(got, np.stack(ref), rtol=1e-8, atol=1e-9)
    # the knots are jump times: without them the same tolerance needs more steps
    steps = int(model.solve(model.control(ts, xs)).stats["num_steps"])
    assert steps < 4096


def test_batch_as_one_system_equals_series_one_by_one(x64_module):
    rng = np.random.default_rng(2)
    ts = np.sort(rng.uniform(0, 2, 7))
    ys = rng.normal(size=(3, 7, 2))
    model = nde.NeuralCDE(
        2,
        4,
        3,
        width_size=8,
        depth=1,
        output="sequence",
        key=jax.random.key(0),
        dt0=0.05,  # constant steps: the same arithmetic whether solved jointly or one by one
    )
    X = model.control(ts, ys)
    joint = np.asarray(model(X))
    assert joint.shape == (3, 7, 3)
    # per-series times (here all equal): solved one by one (vmap), the same values
    X_own = model.control(np.broadcast_to(ts, (3, 7)), ys)
    assert not X_own.shared_times
    np.testing.assert_allclose(np.asarray(model(X_own)), joint, atol=1e-12)


# -- strategies --------------------------------------------------------------------------------


def _tiny(**kw):
    return nde.NeuralCDE(2, 4, 3, width_size=8, depth=1, key=jax.random.key(0), **kw)


TS = np.linspace(0.0, 1.0, 6)
YS = np.random.default_rng(0).normal(size=(5, 6, 2))


@pytest.mark.parametrize(
    "data, match",
    [
        (((TS, YS), [0, 1, 2, 3, 0]), r"labels must lie in \[0, 3\)"),
        (((TS, YS), [0.0, 1.0, 2.0, 1.0, 0.0]), "labels must be a 1-D array of integer"),
        (((TS, YS), [0, 1]), "labels has 2 entries for 5 series"),
        (((np.r_[0.0, np.nan, TS[2:]], YS), [0] * 5), "ts contains NaN"),
        (((TS, YS[..., :1]), [0] * 5), "data_size=2"),
        (((TS, YS[0]), [0]), r"batch of series, shape \(B, T, D\)"),
        ((TS, YS), "pair \\(series, targets\\)"),
    ],
)
def test_classification_input_errors(data, match):
    with pytest.raises(ValueError, match=match):
        nde.Classification().prepare(_tiny(), data)


def test_classification_refuses_other_models_and_sequences():
    with pytest.raises(ValueError, match="control\\(ts, ys, mask\\) method"):
        nde.Classification().prepare(nde.NeuralODE(lambda t, y, a: -y), ((TS, YS), [0] * 5))
    with pytest.raises(ValueError, match="output='final'"):
        nde.Classification().prepare(_tiny(output="sequence"), ((TS, YS), [0] * 5))
    with pytest.raises(ValueError, match="targets must have shape \\(5, 6, 3\\)"):
        nde.Regression().prepare(_tiny(output="sequence"), ((TS, YS), np.zeros((5, 3))))


def test_model_input_errors():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        _tiny(interpolation="quadratic")
    with pytest.raises(ValueError, match="solver='auto'"):
        _tiny(solver="auto")
    with pytest.raises(ValueError, match="control has 3 channels, the model expects 5"):
        _tiny(observed_channels=True)(_tiny().control(TS, YS[0]))


@pytest.mark.slow
def test_classification_learns_spiral_direction():
    """Clockwise vs anticlockwise spirals, irregularly sampled: the trained CDE separates them.

    A stub model or a broken gradient stays at chance (accuracy 0.5, loss ln 2 = 0.69); the run
    reaches ~0.92 and ~0.25 (thresholds: a third of the errors, twice the loss)."""
    from neuraldiffeq.demos.cde import spiral_data

    ts, ys, labels = spiral_data(64, 16, drop=0.3, key=0)
    model = nde.NeuralCDE(
        2,
        8,
        2,
        width_size=32,
        depth=1,
        observed_channels=True,
        key=jax.random.key(0),
        solver="midpoint",
        dt0=float(ts[-1]) / 16,
    )
    strategy = nde.Classification(batch_size=32)
    data = ((ts, ys), labels)
    result = nde.fit(model, data, strategy, optimizer=optax.adam(1e-2), steps=60, progress=False)
    assert nde.Classification.accuracy(result.model, strategy.prepare(result.model, data)) >= 0.75
    assert float(np.mean(result.losses[-10:])) < 0.5


def test_save_load_keeps_the_settings(tmp_path):
    model = _tiny(interpolation="hermite", observed_channels=True, dt0=0.1)
    nde.save(tmp_path / "cde.eqx", model)
    loaded = nde.load(tmp_path / "cde.eqx")
    assert (loaded.interpolation, loaded.observed_channels, loaded.dt0) == ("hermite", True, 0.1)
    assert loaded.channels == 5 and isinstance(loaded.sensitivity, type(model.sensitivity))
    assert eqx.tree_equal(eqx.filter(loaded, eqx.is_array), eqx.filter(model, eqx.is_array))
