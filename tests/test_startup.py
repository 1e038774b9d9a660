"""Start-up costs (issue #17): a training step the persistent compilation cache can keep, one
trace per stage, errors raised inside a step still reach the user, fused steps by default."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neuraldiffeq as nde
from neuraldiffeq.compilation.cacheable import cacheable_jit, error_callbacks

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Params(eqx.Module):
    w: jax.Array


TARGET = jnp.array([1.0, -2.0, 3.0])


class Counted(nde.AbstractStrategy):
    """loss = ||w - target||^2, NaN with probability `fail_rate`; counts its traces; with
    `limit`, an equinox check inside the step raises when the loss exceeds it."""

    fail_rate: float = 0.0
    limit: float | None = None

    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        TRACES.append(1)
        value = jnp.sum((model.w - target) ** 2)
        if self.limit is not None:
            value = eqx.error_if(value, value > self.limit, "the loss passed its limit")
        fail = jax.random.uniform(key) < self.fail_rate
        return jnp.where(fail, jnp.nan, value)


TRACES: list[int] = []


def test_cacheable_jit_removes_error_callbacks_and_keeps_the_values():
    def f(x):
        x = eqx.error_if(x, x < 0, "negative")
        return {"y": x * 2, "n": jnp.arange(3)}

    assert error_callbacks(jax.make_jaxpr(f)(jnp.ones(3))) == 2  # raise, and a TPU fallback
    g = cacheable_jit(f)
    out = g(jnp.arange(3.0))
    np.testing.assert_array_equal(out["y"], [0.0, 2.0, 4.0])
    assert g.stripped == 2
    lowered = jax.jit(f).lower(jnp.ones(3)).as_text()
    assert "callback" in lowered  # what makes a program uncacheable...
    assert np.isnan(g(-jnp.ones(3))["y"]).all()  # ...becomes NaN, as EQX_ON_ERROR=nan gives
    with pytest.raises(Exception, match="negative"):
        jax.block_until_ready(g.checked(-jnp.ones(3)))  # a GPU raises when waited for


def test_an_exported_step_compiles_once_whatever_its_first_inputs_placement(
    tmp_path, monkeypatch, caplog
):
    # An exported program returns arrays committed to their device, a fresh model's are not:
    # fed its own output, a training step compiled a second time at its second call.
    monkeypatch.setattr("neuraldiffeq.compilation.exported.directory", lambda: tmp_path)
    step = cacheable_jit(nde.transforms.cube, export=True)  # library code: exported
    x = jnp.arange(3.0) + 0.5  # uncommitted, as a fresh model's arrays
    assert not x.committed
    with jax.log_compiles(), caplog.at_level("WARNING"):
        y = step(x)
        first = caplog.text.count("Compiling jit(cube)")
        y = step(step(y))  # committed inputs from here on
        assert caplog.text.count("Compiling jit(cube)") == first
    assert len(list(tmp_path.glob("*.step"))) == 1  # it was exported, and runs as read back
    np.testing.assert_array_equal(y, ((np.arange(3.0, dtype=np.float32) + 0.5) ** 3) ** 9)


def test_one_trace_per_stage(monkeypatch):
    # traced here, not read back from the exported-step cache (which a previous run filled)
    monkeypatch.setattr("neuraldiffeq.compilation.exported.directory", lambda: None)
    TRACES.clear()
    stages = [
        nde.Stage(Counted(), optax.adam(0.1), steps=40),
        nde.Stage(Counted(), optax.adam(0.01), steps=40),
    ]
    result = nde.fit(Params(jnp.zeros(3)), TARGET, stages, progress=False)
    assert result.losses.shape == (80,)
    assert len(TRACES) == 2  # "auto": one program per stage, whatever the steps per call


def test_an_error_raised_inside_the_step_reaches_the_user_and_the_step_is_skipped():
    # the limit check is stripped from the compiled step; the NaN it leaves makes fit replay the
    # call with the check on to learn its message: the step is skipped like a failed solve (the
    # fit and its best model are not lost) and the message is in the warning and the FitFailure
    with pytest.warns(UserWarning, match="5 of 5 steps.*the loss passed its limit"):
        result = nde.fit(
            Params(jnp.zeros(3)),
            TARGET,
            Counted(limit=10.0),  # the first loss is 14: every step fails the check
            optimizer=optax.adam(0.1),
            steps=5,
            progress=False,
        )
    assert result.skipped == 5 and np.all(np.asarray(result.model.w) == 0.0)
    with pytest.raises(nde.FitFailure, match="the loss passed its limit") as failure:
        nde.fit(
            Params(jnp.zeros(3)),
            TARGET,
            Counted(limit=10.0),
            optimizer=optax.adam(0.1),
            steps=5,
            max_failures=3,
            progress=False,
        )
    assert failure.value.result.model is not None
    result = nde.fit(  # below the limit: no error, no replay
        Params(jnp.zeros(3)),
        TARGET,
        Counted(limit=100.0),
        optimizer=optax.adam(0.1),
        steps=5,
        progress=False,
    )
    assert np.isfinite(result.losses).all()


@pytest.mark.filterwarnings("ignore:stage 1/1 Counted.*skipped:UserWarning")
def test_auto_fusion_is_step_exact():
    """ "auto" (the default) gives the trajectory of one step per call, failures included, and
    calls the callback after every step."""
    kwargs = dict(optimizer=optax.adam(0.1), steps=60, progress=False)
    strategy = Counted(fail_rate=0.2)
    one = nde.fit(Params(jnp.zeros(3)), TARGET, strategy, steps_per_call=1, **kwargs)
    auto = nde.fit(Params(jnp.zeros(3)), TARGET, strategy, **kwargs)
    np.testing.assert_allclose(one.losses, auto.losses, rtol=1e-6)
    np.testing.assert_allclose(one.model.w, auto.model.w, rtol=1e-6)
    assert one.skipped == auto.skipped > 0
    assert len(np.unique(auto.times)) < 60  # steps were fused
    seen = []
    nde.fit(
        Params(jnp.zeros(3)),
        TARGET,
        strategy,
        callback=lambda step, loss, model: seen.append((step, float(model.w[0]))),
        **kwargs,
    )
    assert [s for s, _ in seen] == list(range(1, 61))
    with pytest.raises(ValueError, match="steps_per_call must be a positive integer or 'auto'"):
        nde.fit(Params(jnp.zeros(3)), TARGET, strategy, steps_per_call="fast", **kwargs)


_SPIRAL_FIT = textwrap.dedent(
    """
    import json, logging, sys
    hits, misses = [], []

    class Log(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "cache hit for" in message:
                hits.append(message.split("'")[1])
            elif "CACHE MISS for" in message:
                misses.append(message.split("'")[1])

    logger = logging.getLogger("jax._src.compiler")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Log())
    import equinox as eqx, jax, jax.numpy as jnp, optax
    import neuraldiffeq as nde
    from neuraldiffeq.compilation import cacheable as _cacheable

    steps = []  # fit's compiled steps: traced here, or read back from the exported-step cache
    init = _cacheable.cacheable_jit.__init__
    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        steps.append(self)
    _cacheable.cacheable_jit.__init__ = record

    nde.enable_compilation_cache(sys.argv[1])
    data = nde.datasets.spiral()
    mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
    # neuraldiffeq's own parts only: a step holding user code (a lambda) is traced every time
    model = nde.NeuralODE(nde.autonomous(mlp, input_fn=nde.transforms.cube))
    result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05), steps=2,
                     progress=False)
    print(json.dumps({"hits": hits, "misses": misses, "sources": [s.source for s in steps],
                      "traces": [s.traces for s in steps],
                      "losses": [float(x).hex() for x in result.losses]}))
    """
)


@pytest.mark.slow
def test_a_second_process_loads_the_spiral_step_from_the_cache(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC)
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _SPIRAL_FIT, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert "jit_fused" in first["misses"] and "jit_fused" not in first["hits"]
    assert "jit_fused" in second["hits"] and "jit_fused" not in second["misses"]
    # the second process read the traced step back (jax.export) instead of tracing it, and it
    # computes the same losses, bit for bit (tests/test_exported.py: also vs no cache at all)
    assert first["sources"] == ["traced"] and first["traces"] == [1]
    assert second["sources"] == ["exported"] and second["traces"] == [0]
    assert second["losses"] == first["losses"]


def test_cache_directory_choice_and_cli_flag(tmp_path, monkeypatch, capsys):
    from neuraldiffeq.cli import build_parser, main

    monkeypatch.setenv("NEURALDIFFEQ_CACHE_DIR", str(tmp_path / "mine"))
    assert nde.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("NEURALDIFFEQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert nde.default_cache_dir() == tmp_path / "xdg" / "neuraldiffeq" / "jax"
    argv = ["fit", "data.csv", "--time", "t"]
    assert build_parser(argv).parse_args(argv).cache is True
    assert build_parser(argv).parse_args([*argv, "--no-cache"]).cache is False
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create the compilation cache directory"):
        nde.enable_compilation_cache(blocker / "jax")
    # the CLI reports an unusable cache directory as bad input (exit 2), before any work
    monkeypatch.setenv("NEURALDIFFEQ_CACHE_DIR", str(blocker / "jax"))
    assert main([*argv]) == 2
    assert "NEURALDIFFEQ_CACHE_DIR" in capsys.readouterr().err


# -- set-up compiles no one-operation programs -------------------------------------------------


class CompileCounter:
    """Counts XLA compilations while active (JAX reports each one to its monitoring listeners)."""

    def __init__(self):
        self.count, self.active = 0, False
        jax.monitoring.register_event_duration_secs_listener(self._listener)

    def _listener(self, event, duration, **kwargs):
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __call__(self, fn):
        self.count, self.active = 0, True
        try:
            fn()
        finally:
            self.active = False
        return self.count


def _setup_compiles(n_times: int) -> dict[str, int]:
    """Compilations of each set-up step on series of `n_times` points (a fresh shape)."""
    counter = CompileCounter()
    ts = np.linspace(0.0, 1.0, n_times)
    ys = np.stack([np.cos(3 * ts), np.sin(3 * ts)], -1)[None].repeat(3, 0) + 0.01
    mask = np.ones(ys.shape, bool)
    mask[1, 5, 0] = mask[2, 0, 1] = False  # a missing first value (Trajectory interpolates it)
    data = nde.TimeSeries(ts, ys, mask)
    model = nde.NeuralODE(lambda t, y, args: -y)
    stiff = nde.NeuralODE(lambda t, y, args: -jnp.array([1.0, 1e4]) * y, solver="auto")
    y0 = jnp.ones(2)

    def decay(t, y, lagged, args):
        return -lagged[0]

    def dde():
        return nde.solve_dde(decay, jnp.ones(1), [0.3], 0.0, 1.0, ts=ts)

    return {
        "TimeSeries": counter(lambda: nde.TimeSeries(ts, ys, mask).as_batch()),
        "Trajectory": counter(lambda: nde.Trajectory().prepare(model, data)),
        "MultipleShooting": counter(
            lambda: nde.MultipleShooting(group_size=6).prepare(model, data)
        ),
        "Collocation": counter(lambda: nde.Collocation(bandwidth=0.2).prepare(model, data)),
        "solver='auto'": counter(lambda: stiff.resolve_solver(ts, y0)),
        "solve_dde": counter(dde),
        "solve_dde again": counter(dde),
    }


def test_data_preparation_and_solves_compile_one_program_each():
    # An eager JAX operation compiles a program for every new shape (~10 ms each): converting
    # data, slicing it, or a solve's set-up run operation by operation cost a first fit dozens.
    _setup_compiles(29)  # programs of a fixed shape (scalars), compiled once per process
    assert _setup_compiles(37) == {
        "TimeSeries": 0,
        "Trajectory": 0,
        "MultipleShooting": 0,
        "Collocation": 1,  # its core
        "solver='auto'": 3,  # the probe solve, the field's Jacobian, the field's value
        "solve_dde": 1,
        "solve_dde again": 0,
    }
