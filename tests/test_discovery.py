"""Equation discovery: sparse regression recovers a known polynomial field; the formula refits."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde


def true_rhs(y):  # the "missing physics": what a network would have learned
    x, z = y[0], y[1]
    return jnp.stack([-0.9 * x * z + 0.3, 0.8 * x * z - 0.25 * z**2])


TRUE = {"f0": {"1": 0.3, "x*y": -0.9}, "f1": {"x*y": 0.8, "y^2": -0.25}}


class Field(eqx.Module):
    """Known decay plus an unknown part `net`, as in a universal differential equation."""

    net: object

    def __call__(self, t, y, args):
        return jnp.array([0.0, -0.5]) * y + self.net(y)


def _terms(discovery):
    names = discovery.term.library.names(discovery.term.state_names)
    coef = np.asarray(discovery.term.coefficients)
    return {
        out: {n: float(c) for n, c, k in zip(names, row, keep, strict=True) if k}
        for out, row, keep in zip(
            discovery.term.output_names, coef, discovery.term.mask, strict=True
        )
    }


@pytest.mark.parametrize(
    "optimizer,selection", [("stlsq", "cv"), ("sr3", "cv"), ("stlsq", "aic"), ("sr3", "bic")]
)
def test_recovers_polynomial_field_from_noisy_output(optimizer, selection):
    states = jax.random.uniform(jax.random.key(0), (300, 2), minval=0.0, maxval=3.0)

    def noisy(y):  # the truth plus a small smooth error, as a trained network has
        return true_rhs(y) + 0.01 * jnp.sin(jnp.array([13.0, 7.0]) * y[0] + 5.0 * y[1])

    model = nde.NeuralODE(Field(noisy))
    found = nde.discover(
        model,
        noisy,
        states,
        library=nde.Library(degree=3),
        optimizer=optimizer,
        selection=selection,
        names=["x", "y"],
    )
    terms = _terms(found)
    assert {k: set(v) for k, v in terms.items()} == {k: set(v) for k, v in TRUE.items()}, (
        found.equation
    )
    for out, row in TRUE.items():
        for name, value in row.items():
            assert terms[out][name] == pytest.approx(value, rel=0.05), found.equation
    assert found.selection == selection and found.threshold > 0
    assert "x*y" in found.equation


def test_discovered_term_replaces_network_and_fit_refines_it():
    """Along a TimeSeries the model's trajectory is used; the formula's coefficients train."""
    truth = nde.NeuralODE(Field(true_rhs), rtol=1e-6, atol=1e-8)
    ts = jnp.linspace(0.0, 3.0, 40)
    data = nde.TimeSeries(ts, truth(ts, jnp.array([1.0, 2.0])))
    found = nde.discover(truth, true_rhs, data, names=["x", "y"], points=100)
    assert found.term.n_terms() == 4, found.equation
    refit = found.replace(truth)
    assert isinstance(refit.field.net, nde.SparseTerm)

    # one compiled program for the trajectory (at the found coefficients) and the gradient
    @eqx.filter_jit
    @eqx.filter_value_and_grad(has_aux=True)
    def solve(m):
        ys = m(ts, data.ys[0])
        return jnp.sum(ys**2), ys

    np.testing.assert_allclose(solve(refit)[0][1], data.ys, atol=1e-3)
    # start 20% off, as a rough network would leave the coefficients, and let fit refine them
    off = eqx.tree_at(lambda m: m.field.net.coefficients, refit, refit.field.net.coefficients * 1.2)
    _, grads = solve(off)
    mask = np.asarray(off.field.net.mask)
    assert np.all(np.asarray(grads.field.net.coefficients)[~mask] == 0)  # dropped terms stay out
    result = nde.fit(off, data, nde.Trajectory(), optimizer=optax.lbfgs(), steps=40, progress=False)
    coef = np.asarray(result.model.field.net.coefficients)
    want = np.asarray(found.term.coefficients)
    assert np.max(np.abs(coef - want)[mask] / np.abs(want)[mask]) < 0.01


class Decaying(eqx.Module):
    """A stand-in for a fitted model without a solve (cheap): y(t) = y0 exp(-t), net inside."""

    net: object

    def __call__(self, ts, y0, args=None):
        return y0 * jnp.exp(-ts)[:, None]


def test_discovers_along_the_fitted_initial_state_of_a_segment_states_model():
    """A model fitted with its initial state (nde.SegmentStates): with a TimeSeries, discover
    follows the trajectory from the fitted start, not from the (noisy) first observation, and
    replace keeps the wrapper."""
    model = Decaying(true_rhs)
    ts, start = jnp.linspace(0.0, 3.0, 40), jnp.array([1.0, 2.0])
    clean = nde.TimeSeries(ts, model(ts, start))
    noisy = nde.TimeSeries(ts, clean.ys.at[0].add(jnp.array([0.5, -0.5])))  # a bad first point
    fitted = nde.SegmentStates(model, start.reshape(1, 1, 2))
    # a linear library cannot represent the quadratic field, so the least-squares coefficients
    # depend on the states they are fitted at
    one = {"library": nde.Library(degree=1), "thresholds": [1e-3], "points": 100}
    found = nde.discover(fitted, true_rhs, noisy, **one)
    along = nde.discover(model, true_rhs, clean, **one)  # from the true start
    observed = nde.discover(model, true_rhs, noisy, **one)  # from the bad first point
    np.testing.assert_allclose(found.term.coefficients, along.term.coefficients, atol=1e-5)
    assert np.max(np.abs(found.term.coefficients - observed.term.coefficients)) > 1e-2
    replaced = found.replace(fitted)
    assert isinstance(replaced, nde.SegmentStates)
    assert isinstance(replaced.model.net, nde.SparseTerm)
    with pytest.raises(ValueError, match="SegmentStates with states of shape"):
        nde.discover(nde.SegmentStates(model, jnp.zeros((2, 1, 2))), true_rhs, noisy)


def test_bad_input():
    with pytest.raises(ValueError, match="degree must be at least 1"):
        nde.Library(degree=0)
    with pytest.raises(ValueError, match="no terms"):
        nde.Library(degree=None, bias=False)
    model = nde.NeuralODE(Field(true_rhs))
    states = jnp.ones((20, 2))
    with pytest.raises(ValueError, match="network is not part of model"):
        nde.discover(model, lambda y: y, states)
    with pytest.raises(ValueError, match="selection must be one of"):
        nde.discover(model, true_rhs, states, selection="loo")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        nde.discover(model, true_rhs, states, optimizer="lasso")
    with pytest.raises(ValueError, match="names has 3 names"):
        nde.discover(model, true_rhs, states, names=["a", "b", "c"])


# long tier: a discovery with normalised columns (the default) runs in the default run's
# test_discovered_term_replaces_network_and_fit_refines_it; this checks its units invariance
@pytest.mark.long
def test_selection_does_not_depend_on_the_states_units():
    """Scaled columns: the same states in other units (y -> c y, so f -> c f(y / c)) give the
    same terms, with coefficients transformed exactly."""
    states = jax.random.uniform(jax.random.key(2), (200, 2), minval=0.5, maxval=3.0)

    def net(y):
        return true_rhs(y) + 0.01 * jnp.sin(jnp.array([13.0, 7.0]) * y[0] + 5.0 * y[1])

    c = 50.0

    def net_other_units(z):
        return c * net(z / c)

    found = []
    for f, s in ((net, states), (net_other_units, c * states)):
        found.append(nde.discover({"net": f}, f, s, names=["x", "y"]))
    a, b = (_terms(d) for d in found)
    assert {k: set(v) for k, v in a.items()} == {k: set(v) for k, v in TRUE.items()}
    assert {k: set(v) for k, v in b.items()} == {k: set(v) for k, v in a.items()}
    degree = {"1": 0, "x*y": 2, "y^2": 2}  # c f(z / c) scales a degree-p term by c^(1 - p)
    for out, row in a.items():
        for name, value in row.items():
            assert b[out][name] == pytest.approx(value * c ** (1 - degree[name]), rel=1e-3)
    np.testing.assert_allclose(found[1].scales[1:3], c * found[0].scales[1:3], rtol=1e-5)


def demo_seed_numbers(seed: int) -> dict:
    """`demo discover`'s pipeline for one noise seed, at the demo's defaults: terms selected
    wrongly (missing or spurious), the worst refitted coefficient's relative error, the
    formula's extrapolation RMSE over the data's range, and the network's over the formula's."""
    from neuraldiffeq.demos.discover import MISSING, _kept, run_seed

    r = run_seed(seed, 2000, 300, 0.05, False)
    kept = _kept(r["_plot"][3].model.field.net)  # the refitted formula
    wrong = sum(len(kept[out] ^ set(row)) for out, row in MISSING.items())
    errors = [np.inf if e is None else e for e in r["coefficient_relative_errors"].values()]
    return {
        "wrong terms": wrong,
        "coefficient error": max(errors),
        "formula RMSE / range": r["formula_rmse_over_range"],
        "network RMSE / formula RMSE": r["network_over_formula_rmse"],
    }


@pytest.mark.long  # five whole UDE fits (benchmarks/discover_seeds.py records the same study)
def test_demo_discovers_the_missing_terms_in_four_of_five_seeds():
    """Issue #28's target: exactly the two bilinear terms, within 10% after refitting, and an
    extrapolation to t = 20 within 0.1 of the data's range where the network is >= 3x worse,
    in at least 4 of 5 noise seeds (tests/margins.py reports each seed's margins)."""
    numbers = [demo_seed_numbers(seed) for seed in range(5)]
    good = [
        n["wrong terms"] == 0
        and n["coefficient error"] <= 0.1
        and n["formula RMSE / range"] <= 0.1
        and n["network RMSE / formula RMSE"] >= 3
        for n in numbers
    ]
    assert sum(good) >= 4, numbers
