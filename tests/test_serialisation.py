import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuraldiffeq as nde


def make_model():
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(3))
    return nde.NeuralODE(
        nde.autonomous(mlp, input_fn=lambda y: y**3),
        "dopri5",
        rtol=1e-5,
        atol=1e-7,
        sensitivity=nde.Backsolve(),
    )


def test_save_load_roundtrip(tmp_path):
    model = make_model()
    path = tmp_path / "model.eqx"
    nde.save(path, model)
    loaded = nde.load(path)
    ts, y0 = jnp.linspace(0, 1, 5), jnp.array([1.0, 0.5])
    np.testing.assert_array_equal(loaded(ts, y0), model(ts, y0))
    assert (loaded.rtol, loaded.atol, type(loaded.solver)) == (1e-5, 1e-7, type(model.solver))
    assert isinstance(loaded.sensitivity, nde.Backsolve)
    again = nde.load(path, like=make_model())
    np.testing.assert_array_equal(again(ts, y0), model(ts, y0))
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]  # no temporary files left


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.eqx"
    nde.save(path, make_model())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        nde.save(path, make_model())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read model file"):
        nde.load(tmp_path / "missing.eqx")
    junk = tmp_path / "junk.eqx"
    junk.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a neuraldiffeq model file"):
        nde.load(junk)
    good = tmp_path / "good.eqx"
    nde.save(good, make_model())
    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated|does not match"):
        nde.load(truncated)
    with pytest.raises(ValueError, match="folder .* does not exist"):
        nde.save(tmp_path / "nope" / "m.eqx", make_model())
