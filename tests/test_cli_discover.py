"""`neuraldiffeq fit --discover`: the fitted field as a formula in the data's units, refitted."""

import json
import types

import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.cli import main
from neuraldiffeq.commands.fit_discover import discover_fit
from neuraldiffeq.fitting.series import Normaliser


def true_field(y):  # the damped oscillation of test_cli_fit's CSV, affine in (x, y)
    return jnp.stack([-90.0 - 0.1 * y[0] - 20.0 * y[1], -5.5 + 0.05 * y[0] - 0.1 * y[1]])


def oscillator():
    ts = np.linspace(0.0, 6.0, 16)
    xs = 100.0 + 40.0 * np.exp(-0.1 * ts) * np.cos(ts)
    ys = -5.0 + 2.0 * np.exp(-0.1 * ts) * np.sin(ts)
    return nde.TimeSeries(1990.0 + ts, np.stack([xs, ys], -1))


def test_discovers_the_field_in_original_units(tmp_path):
    """A 'fitted' model whose normalised field is the truth: the formula, in the CSV's units,
    has the true affine coefficients (the unit conversion is exact), and is written out."""
    data = oscillator()
    norm = Normaliser.from_data(data)
    mean, std = jnp.asarray(norm.mean), jnp.asarray(norm.std)

    def normalised(z):  # dz/dtau of the truth, as a network fitted on normalised data would be
        return norm.t_scale / std * true_field(std * z + mean)

    model = nde.NeuralODE(nde.autonomous(normalised), rtol=1e-8, atol=1e-8)
    fitted = types.SimpleNamespace(normaliser=norm, model=model, metrics={"train_mse": 0.0})
    summary = discover_fit(
        data,
        fitted,
        ["x", "y"],
        degree=1,
        holdout=3,
        lbfgs_steps=0,
        out=str(tmp_path),
        time_name="year",
        progress=False,
    )
    want = "dx/dyear = -90 - 0.1 x - 20 y\ndy/dyear = -5.5 + 0.05 x - 0.1 y"
    assert summary["equation_refitted"] == want
    assert summary["n_terms"] == 6
    assert summary["train_mse_formula"] < 1e-6  # the formula reproduces the data it came from
    assert want in (tmp_path / "equation.txt").read_text()
    assert json.loads((tmp_path / "discovery.json").read_text())["degree"] == 1


def test_rejects_bad_degree(tmp_path, capsys):
    args = ["fit", "missing.csv", "--time", "t", "--discover", "--discover-degree", "0"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "--discover-degree must be at least 1" in capsys.readouterr().err


@pytest.mark.long  # a whole CLI fit
def test_fit_discover_end_to_end(tmp_path):
    data = oscillator()
    csv = tmp_path / "osc.csv"
    rows = np.column_stack([np.asarray(data.ts), np.asarray(data.ys)])
    np.savetxt(csv, rows, delimiter=",", header="time,x,y", comments="")
    out = tmp_path / "out"
    args = ["fit", str(csv), "--time", "time", "--hidden", "16", "--depth", "1"]
    args += ["--strategy", "shooting", "--steps", "300", "--lbfgs-steps", "50"]
    args += ["--discover", "--discover-degree", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    found = json.loads((out / "discovery.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert "dx/dtime" in found["equation_refitted"]
    # the refitted affine formula describes the data at least as well as a tenth of its variance
    variance = np.asarray(data.ys).var(axis=0).mean()
    assert found["train_mse_formula"] < 0.1 * variance, found
    assert metrics["train_mse"] == found["train_mse_network"]
