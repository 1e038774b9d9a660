"""The exported-step cache (issues #17, #26): a later process reads a traced step back from disk
only when the step is made entirely of neuraldiffeq's and its pinned dependencies' code, and only
for the very same step; user code, anything it cannot key, or a damaged entry means tracing."""

import functools
import shutil
import sys
import threading
import types
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

fit_module = sys.modules["neuraldiffeq.fitting.loop"]  # where fit compiles its steps


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


DATA = nde.datasets.spiral(n_points=6, t1=1.0)


def _model():
    """A model made of neuraldiffeq's and equinox's parts only (a keyable step)."""
    mlp = eqx.nn.MLP(2, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    return nde.NeuralODE(nde.autonomous(mlp, input_fn=nde.transforms.cube), "euler", dt0=0.25)


def _fit(lr=0.05, steps=2, stages=None):
    if stages is not None:
        return nde.fit(_model(), DATA, stages, progress=False)
    return nde.fit(
        _model(), DATA, nde.Trajectory(), optimizer=optax.adam(lr), steps=steps, progress=False
    )


def test_a_hit_does_not_trace_and_gives_the_same_losses(steps_made, tmp_path, monkeypatch):
    first = _fit()
    assert [(s.source, s.traces) for s in steps_made] == [("traced", 1)]
    assert steps_made[0].stripped > 0  # diffrax's SaveAt checks, replaced in the cached step
    entries = list((tmp_path / "exported").glob("*.step"))
    assert len(entries) == 1

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced on a hit")

    with monkeypatch.context() as patched:
        patched.setattr(jax, "make_jaxpr", no_tracing)
        second = _fit()
    assert [(s.source, s.traces) for s in steps_made[1:]] == [("exported", 0)]
    assert steps_made[1].stripped == steps_made[0].stripped
    np.testing.assert_array_equal(second.losses, first.losses)
    # the same losses, bit for bit, as the plain jax.jit program of a fit without the cache
    with monkeypatch.context() as patched:
        patched.setattr(_exported, "directory", lambda: None)
        np.testing.assert_array_equal(_fit().losses, first.losses)
    assert steps_made[-1].source == "traced" and len(entries) == 1
    _fit(lr=0.01)  # another learning rate: another step
    assert steps_made[-1].source == "traced"
    assert len(list((tmp_path / "exported").glob("*.step"))) == 2


def test_every_stage_is_kept(steps_made, tmp_path):
    # a later stage starts from arrays the previous stage's program placed (its carry)
    stages = [
        nde.Stage(nde.Trajectory(), optax.adam(0.05), 2),
        nde.Stage(nde.Trajectory(), optax.sgd(0.01), 2),
    ]
    first = _fit(stages=stages)
    second = _fit(stages=stages)
    assert [s.source for s in steps_made] == ["traced"] * 2 + ["exported"] * 2
    assert len(list((tmp_path / "exported").glob("*.step"))) == 2
    np.testing.assert_array_equal(second.losses, first.losses)


def test_a_damaged_entry_is_ignored_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setattr(_exported, "directory", lambda: tmp_path / "exported")
    x = jnp.linspace(-1.0, 1.0, 5)
    reference = cacheable_jit(nde.transforms.cube, export=True)(x)
    (entry,) = (tmp_path / "exported").glob("*.step")
    intact = entry.read_bytes()
    damaged = [
        intact[: len(intact) // 2],  # truncated
        intact[:-10] + b"0123456789",  # the program edited
        b"not an entry at all",
    ]
    for content in damaged:
        entry.write_bytes(content)
        f = cacheable_jit(nde.transforms.cube, export=True)
        np.testing.assert_array_equal(f(x), reference)
        assert f.source == "traced"
        g = cacheable_jit(nde.transforms.cube, export=True)  # ...and replaced by a good one
        np.testing.assert_array_equal(g(x), reference)
        assert g.source == "exported" and g.traces == 0


class Params(eqx.Module):
    w: jax.Array


class Quadratic(nde.AbstractStrategy):
    """A user's strategy: loss = scale * ||w - target||^2, with an equinox check."""

    scale: float = 1.0

    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        value = self.scale * jnp.sum((model.w - target) ** 2)
        return eqx.error_if(value, value > 1e6, "the loss passed its limit")


def test_a_step_with_user_code_is_traced_every_time_and_its_checks_still_raise(
    steps_made, tmp_path
):
    def fit(strategy):
        target = jnp.array([1.0, -2.0, 3.0])
        return nde.fit(
            Params(jnp.zeros(3)), target, strategy, optimizer=optax.adam(0.1), steps=2,
            progress=False,
        )  # fmt: skip

    first, second = fit(Quadratic()), fit(Quadratic())
    assert [(s.source, s.traces) for s in steps_made] == [("traced", 1)] * 2
    assert all(s.stripped == 2 for s in steps_made)  # cacheable by JAX's compilation cache
    np.testing.assert_array_equal(second.losses, first.losses)
    assert not (tmp_path / "exported").exists()
    # a failed in-step check is replayed with the checks on to learn its message
    for _ in range(2):
        with pytest.warns(UserWarning, match="the loss passed its limit"):
            fit(Quadratic(scale=1e6))


SCALE = 2.0


def _scaled(y):
    return SCALE * y


class UserSquash(eqx.Module):
    def __call__(self, y):
        return jnp.tanh(y)


def _closure(scale):
    def scaled(y):
        return scale * y

    return scaled


def test_user_code_of_every_kind_is_unkeyable():
    user_module = types.ModuleType("helper")
    fake = types.FunctionType(_scaled.__code__, {"__name__": "neuraldiffeq", "SCALE": 2.0})
    disguised = _closure(1.0)
    disguised.__module__ = "neuraldiffeq.models.transforms"  # a name proves nothing
    user = {
        "a function reading a global": _scaled,
        "a lambda": lambda y: y**3,
        "an instance of a user's class": UserSquash(),
        "a user's class": UserSquash,
        "a bound method": UserSquash().__call__,
        "a closure": _closure(2.0),
        "a trusted partial of user code": functools.partial(jax.tree_util.tree_map, _scaled),
        "a module": user_module,
        "this test module, imported under another name": sys.modules[__name__],
        "a user function jitted": jax.jit(_scaled),
        "a disguised function": disguised,
        "a function with user globals": fake,
        "a module posing as neuraldiffeq's": types.ModuleType("neuraldiffeq.fake"),
        "an object of an unknown kind": threading.Lock(),
    }
    model = _model()
    assert _exported.keyable(model)
    for name, obj in user.items():
        with pytest.raises(_exported.Unkeyable):
            _exported.fingerprint(obj)
        assert not _exported.keyable(obj), name
        # ...also deep inside a structure of neuraldiffeq's parts
        assert not _exported.keyable([nde.Trajectory(), (model, {"held": obj})]), name
    trusted = {
        "neuraldiffeq's function": nde.transforms.cube,
        "jax.numpy's jitted function": jnp.tanh,
        "jax.nn's custom_jvp": jax.nn.relu,
        "an optimizer": optax.adam(0.05),
        "a strategy": nde.Trajectory(loss_fn=nde.losses.mse),
        "a model": _model(),
        "numpy": np,
        "a built-in": max,
    }
    for name, obj in trusted.items():
        assert _exported.keyable(obj), name


def test_model_checks_trace_every_time_and_failures_raise(tmp_path, monkeypatch):
    # the strategies' model checks call jax.eval_shape directly (`_checks` sits below the
    # compilation layer): traced in every process, never read from disk
    monkeypatch.setattr(_exported, "directory", lambda: tmp_path / "exported")
    data = nde.datasets.spiral(n_points=10)
    model = nde.NeuralODE(nde.autonomous(eqx.nn.MLP(2, 2, 8, 1, key=jax.random.key(0))))
    calls = []
    original = jax.eval_shape

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(jax, "eval_shape", counted)
        nde.Trajectory().prepare(model, data)
        n = len(calls)
        nde.Trajectory().prepare(model, data)
    assert n > 0 and len(calls) > n
    assert not (tmp_path / "exported" / "shapes").exists()
    wrong = nde.NeuralODE(nde.autonomous(eqx.nn.MLP(3, 3, 8, 1, key=jax.random.key(0))))
    augmented = nde.AugmentedNeuralODE(wrong, augment_dim=1)  # returns (T, 3) for D=2
    for _ in range(2):
        with pytest.raises(ValueError, match=r"returns shape \(10, 3\).*data have shape"):
            nde.Trajectory().prepare(augmented, data)
    for _ in range(2):
        with pytest.raises(ValueError, match="vector field fails on a state of shape"):
            nde.Trajectory().prepare(wrong, data)


def test_eval_shape_and_cached_array_keep_trusted_results_only(tmp_path, monkeypatch):
    monkeypatch.setattr(_exported, "directory", lambda: tmp_path / "exported")
    x = jnp.ones((4, 2))
    assert _exported.eval_shape(nde.transforms.cube, x).shape == (4, 2)
    assert len(list((tmp_path / "exported" / "shapes").glob("*.json"))) == 1

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced a trusted evaluation kept before")

    with monkeypatch.context() as patched:
        patched.setattr(jax, "eval_shape", no_tracing)
        assert _exported.eval_shape(nde.transforms.cube, x).shape == (4, 2)
        with pytest.raises(AssertionError, match="traced"):  # user code: evaluated every time
            _exported.eval_shape(_scaled, x)
    assert len(list((tmp_path / "exported" / "shapes").glob("*.json"))) == 1
    with pytest.raises(TypeError):  # a failing evaluation raises, every time, keeps nothing
        _exported.eval_shape(nde.transforms.cube, "not an array")

    kept = _exported.cached_array(np.cumsum, np.arange(4))
    again = _exported.cached_array(np.cumsum, np.arange(4))
    np.testing.assert_array_equal(kept, again)
    assert len(list((tmp_path / "exported" / "arrays").glob("*.npy"))) == 1
    calls = []

    def user_solve(n):
        calls.append(n)
        return np.arange(n) * SCALE

    for _ in range(2):
        np.testing.assert_array_equal(_exported.cached_array(user_solve, 3), [0.0, 2.0, 4.0])
    assert calls == [3, 3] and len(list((tmp_path / "exported" / "arrays").glob("*"))) == 1


def test_the_key_tells_apart_what_changes_the_step(x64):
    data = nde.datasets.spiral(n_points=8)
    mlps = {w: eqx.nn.MLP(2, 2, w, 1, activation=jnp.tanh, key=jax.random.key(0)) for w in (8, 9)}
    prepared = nde.Trajectory().prepare(nde.NeuralODE(nde.autonomous(mlps[8])), data)

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
        "input function": key(fn=nde.transforms.identity),
    }
    assert len({base, *changed.values()}) == len(changed) + 1, {
        k: v == base for k, v in changed.items()
    }
    with pytest.raises(_exported.Unkeyable, match="user code"):
        key(fn=lambda y: y**3)


def test_the_source_hash_covers_the_whole_package(tmp_path, monkeypatch):
    copy = tmp_path / "neuraldiffeq"
    shutil.copytree(Path(nde.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_exported, "_package_root", lambda: copy)
    _exported._source_hash.cache_clear()
    try:
        before = _exported._source_hash()
        for part in ("solve/config.py", "fitting/fit.py", "models/ode.py", "_checks.py"):
            path = copy / part
            text = path.read_text()
            path.write_text(text + "\n# edited\n")
            _exported._source_hash.cache_clear()
            assert _exported._source_hash() != before, part
            path.write_text(text)
    finally:
        _exported._source_hash.cache_clear()
