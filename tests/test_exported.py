"""The exported-step cache (issue #17): a later process reads `fit`'s traced step back from disk,
only for the very same step; anything it cannot key, or a damaged entry, falls back to tracing."""

import sys
import threading
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq.compilation import exported as _exported
from neuraldiffeq.compilation.cacheable import cacheable_jit
from neuraldiffeq.fitting.loop import make_steps as _make_steps

SRC = str(Path(__file__).resolve().parents[1] / "src")
fit_module = sys.modules["neuraldiffeq.fitting.loop"]  # where fit compiles its steps


class Params(eqx.Module):
    w: jax.Array


class Quadratic(nde.AbstractStrategy):
    """loss = scale * ||w - target||^2, with an equinox check (stripped in the step)."""

    scale: float = 1.0
    extra: object = None  # anything: an unkeyable object makes the step unexportable

    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        value = self.scale * jnp.sum((model.w - target) ** 2)
        return eqx.error_if(value, value > 1e6, "the loss passed its limit")


TARGET = jnp.array([1.0, -2.0, 3.0])


@pytest.fixture
def steps_made(tmp_path, monkeypatch):
    """Exported steps go to `tmp_path`; yields the list of `cacheable_jit`s `fit` makes."""
    monkeypatch.setattr(_exported, "directory", lambda: tmp_path / "exported")
    made = []

    class Recorded(cacheable_jit):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(fit_module, "cacheable_jit", Recorded)
    return made


def _fit(strategy=None, lr=0.1, steps=4):
    return nde.fit(
        Params(jnp.zeros(3)),
        TARGET,
        strategy or Quadratic(),
        optimizer=optax.adam(lr),
        steps=steps,
        steps_per_call=2,
        progress=False,
    )


def test_a_hit_does_not_trace_and_gives_the_same_losses(steps_made, tmp_path, monkeypatch):
    first = _fit()
    assert [(s.source, s.traces, s.stripped) for s in steps_made] == [("traced", 1, 2)]
    entries = list((tmp_path / "exported").glob("*.step"))
    assert len(entries) == 1

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced on a hit")

    with monkeypatch.context() as patched:
        patched.setattr(jax, "make_jaxpr", no_tracing)
        second = _fit()
    assert [(s.source, s.traces, s.stripped) for s in steps_made[1:]] == [("exported", 0, 2)]
    np.testing.assert_array_equal(second.losses, first.losses)
    # the same losses, bit for bit, as the plain jax.jit program of a fit without the cache
    with monkeypatch.context() as patched:
        patched.setattr(_exported, "directory", lambda: None)
        np.testing.assert_array_equal(_fit().losses, first.losses)
    assert steps_made[-1].source == "traced" and len(entries) == 1
    # a failed in-step check is still replayed with the checks on to learn its message
    with pytest.warns(UserWarning, match="the loss passed its limit"):
        _fit(Quadratic(scale=1e6))
    with pytest.warns(UserWarning, match="the loss passed its limit"):
        _fit(Quadratic(scale=1e6))
    assert steps_made[-1].source == "exported"


def test_every_stage_is_kept(steps_made, tmp_path):
    # a later stage starts from arrays the previous stage's program placed (its carry)
    stages = [nde.Stage(Quadratic(), optax.adam(0.1), 3), nde.Stage(Quadratic(), optax.sgd(0.1), 3)]
    first = nde.fit(Params(jnp.zeros(3)), TARGET, stages, progress=False)
    second = nde.fit(Params(jnp.zeros(3)), TARGET, stages, progress=False)
    assert [s.source for s in steps_made] == ["traced"] * 2 + ["exported"] * 2
    assert len(list((tmp_path / "exported").glob("*.step"))) == 2
    np.testing.assert_array_equal(second.losses, first.losses)


def test_a_damaged_entry_is_ignored_and_rewritten(steps_made, tmp_path):
    reference = _fit()
    (entry,) = (tmp_path / "exported").glob("*.step")
    intact = entry.read_bytes()
    damaged = [
        intact[: len(intact) // 2],  # truncated
        intact[:-10] + b"0123456789",  # the module edited
        b"not an entry at all",
    ]
    for content in damaged:
        entry.write_bytes(content)
        result = _fit()
        assert steps_made[-1].source == "traced"
        np.testing.assert_array_equal(result.losses, reference.losses)
        _fit()  # ...and replaced by a good one
        assert steps_made[-1].source == "exported"


def test_an_unkeyable_step_is_traced_and_not_exported(steps_made, tmp_path):
    result = _fit(Quadratic(extra=threading.Lock()))
    assert steps_made[-1].source == "traced" and np.isfinite(result.losses).all()
    assert not (tmp_path / "exported").exists()
    with pytest.raises(_exported.Unkeyable, match="lock"):
        _exported.fingerprint(Quadratic(extra=threading.Lock()))


def test_model_checks_are_read_back_and_failures_still_raise(steps_made, monkeypatch):
    data = nde.datasets.spiral(n_points=10)
    model = nde.NeuralODE(nde.autonomous(eqx.nn.MLP(2, 2, 8, 1, key=jax.random.key(0))))
    reference = nde.Trajectory().prepare(model, data)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a check that passed before")

    with monkeypatch.context() as patched:
        patched.setattr(jax, "eval_shape", no_tracing)
        prepared = nde.Trajectory().prepare(model, data)  # both checks read back
    assert jax.tree_util.tree_structure(prepared) == jax.tree_util.tree_structure(reference)
    # a result read back still fails the check it failed before (the shape is kept, not a
    # verdict); a check that raises is never kept
    wrong = nde.NeuralODE(nde.autonomous(eqx.nn.MLP(3, 3, 8, 1, key=jax.random.key(0))))
    augmented = nde.AugmentedNeuralODE(wrong, augment_dim=1)  # returns (T, 3) for D=2
    for _ in range(2):
        with pytest.raises(ValueError, match=r"returns shape \(10, 3\).*data have shape"):
            nde.Trajectory().prepare(augmented, data)
    for _ in range(2):
        with pytest.raises(ValueError, match="vector field fails on a state of shape"):
            nde.Trajectory().prepare(wrong, data)


SCALE = 2.0


def test_the_key_tells_apart_what_changes_the_step(x64):
    data = nde.datasets.spiral(n_points=8)
    prepared = nde.Trajectory().prepare(nde.NeuralODE(lambda t, y, args: -y), data)

    mlps = {w: eqx.nn.MLP(2, 2, w, 1, activation=jnp.tanh, key=jax.random.key(0)) for w in (8, 9)}

    def key(width=8, activation=jnp.tanh, strategy=None, lr=0.05, dtype=jnp.float32, fn=None):
        # what fit's StageRun builds (before the failure policy wraps the optimizer)
        mlp = eqx.tree_at(lambda m: m.activation, mlps[width], activation)
        mlp = jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_array(x) else x, mlp)
        model = nde.NeuralODE(nde.autonomous(mlp, input_fn=fn or nde.transforms.cube))
        params, static = eqx.partition(model, eqx.is_inexact_array)
        optimizer = optax.with_extra_args_support(optax.adam(lr))
        inf = jnp.array(jnp.inf, jnp.float32)
        carry = (params, optimizer.init(params), params, inf, jax.random.key(0), params)
        step = _make_steps(static, strategy or nde.Trajectory(), optimizer, "auto")
        leaves, treedef = jax.tree_util.tree_flatten((carry, prepared, np.int32(1)))
        return _exported.key_of(step, treedef, leaves, {})

    base = key()
    assert key() == base  # rebuilt from scratch: the same key
    changed = {
        "width": key(width=9),
        "activation": key(activation=jax.nn.softplus),
        "strategy": key(strategy=nde.Trajectory(loss_fn=nde.losses.mse)),
        "learning rate": key(lr=0.01),
        "dtype": key(dtype=jnp.float64),
        "a user function": key(fn=lambda y: y**3),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, {
        k: v == base for k, v in changed.items()
    }
    # a user function: by its code, the arrays it captures and the globals it reads
    assert key(fn=lambda y: y**3) == changed["a user function"]
    assert key(fn=lambda y: y**2) != changed["a user function"]
    a, b = jnp.ones(2), jnp.full(2, 2.0)
    assert key(fn=lambda y: y * a) != key(fn=lambda y: y * b)

    def scaled(y):
        return SCALE * y

    before = key(fn=scaled)
    globals()["SCALE"] = 3.0
    try:
        assert key(fn=scaled) != before
    finally:
        globals()["SCALE"] = 2.0
