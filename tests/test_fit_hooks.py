"""`fit`'s hooks, each alone: progress, logging, callback, the failure rule, devices,
checkpoints; driven by a fake loop (or one real stage run) rather than by `fit`."""

import io
import logging
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding

import neuraldiffeq as nde
from neuraldiffeq.fitting.checkpoint import CheckpointHook
from neuraldiffeq.fitting.hooks import CallbackHook, DevicesHook, FailureHook, LoggingHook
from neuraldiffeq.fitting.loop import StageRun
from neuraldiffeq.fitting.progress import ProgressHook
from neuraldiffeq.fitting.results import FitLog, StageReport


class Params(eqx.Module):
    w: jax.Array


class Quadratic(nde.AbstractStrategy):
    def prepare(self, model, data):
        return jnp.asarray(data)

    def loss(self, model, target, key):
        return jnp.sum((model.w - target) ** 2)


TARGET = jnp.array([1.0, -2.0, 3.0])


def fake_run(**fields):
    """What hooks read of a stage's run, without compiling anything."""
    defaults = dict(
        name="1/1 Quadratic", index=0, stage=nde.Stage(Quadratic(), optax.adam(0.1), 6),
        steps_done=0, best_loss=float("inf"), first_loss=float("nan"), last_loss=float("nan"),
        skipped=0, consecutive_failures=0, check_message=None, compile_seconds=0.0,
        current_model=lambda: "current", best_model=lambda: "best",
        report=lambda: StageReport("1/1 Quadratic", 2, 1.0, 1.0, 1.0, 2, 0.0, 0.0),
    )  # fmt: skip
    return SimpleNamespace(**{**defaults, **fields})


def frames(out: io.StringIO) -> list[str]:
    return [f for f in out.getvalue().replace("\n", "\r").split("\r") if f.strip()]


def test_progress_shows_compiling_until_the_first_call_then_no_rate_before_the_next():
    out = io.StringIO()
    hook, log, run = ProgressHook(file=out), FitLog(), fake_run()
    hook.on_stage_start(log, run)
    assert frames(out) == ["1/1 Quadratic: compiling…"]  # no count, no rate, no estimate
    run.steps_done, run.best_loss = 2, 0.5
    hook.on_step(log, run, np.array([1.0, 0.5]))
    first = frames(out)[-1]
    assert "2/6" in first and "?it/s" in first and "loss=0.5" in first, first
    assert "compiling" not in first
    for done in (4, 6):
        run.steps_done = done
        hook.on_step(log, run, np.array([0.25, 0.125]))
    hook.on_stage_end(log, run)
    assert "6/6" in frames(out)[-1] and hook.bar is None and hook.waiting is None


def test_progress_off_writes_nothing_and_closes_on_an_error():
    out = io.StringIO()
    hook, run = ProgressHook(enabled=False, file=out), fake_run()
    hook.on_stage_start(FitLog(), run)
    hook.on_step(FitLog(), run, np.array([1.0]))
    assert out.getvalue() == ""
    hook = ProgressHook(file=out)
    hook.on_stage_start(FitLog(), run)
    hook.on_end(FitLog(), None)  # the fit raised: the bar is closed all the same
    assert hook.waiting is None


def test_fit_shows_compiling_on_its_progress_bar(capsys):
    nde.fit(Params(jnp.zeros(3)), TARGET, Quadratic(), optimizer=optax.adam(0.1), steps=3)
    err = capsys.readouterr().err
    assert "1/1 Quadratic: compiling…" in err and "3/3" in err


def test_every_stage_shows_compiling_then_no_estimate_before_its_first_timed_call(capsys):
    stages = [nde.Stage(Quadratic(), opt, 4) for opt in (optax.adam(0.1), optax.sgd(0.1))]
    stages.append(nde.Stage(Quadratic(), optax.adam(0.01), 2))
    nde.fit(Params(jnp.zeros(3)), TARGET, stages)  # later stages built in the background
    shown = [f for f in capsys.readouterr().err.replace("\n", "\r").split("\r") if f.strip()]
    for name in ("1/3 Quadratic", "2/3 Quadratic", "3/3 Quadratic"):
        mine = [f for f in shown if f.startswith(name)]
        assert mine[0] == f"{name}: compiling…", mine  # its own state: no count, no rate
        assert sum("compiling" in f for f in mine) == 1
        # the first bar: the compiled call counted, no rate and no time left estimated yet
        assert "|" in mine[1] and "?it/s" in mine[1] and "<?" in mine[1], mine[1]


def test_logging_reports_stages_and_calls(caplog):
    hook, log, run = LoggingHook(), FitLog(), fake_run()
    with caplog.at_level(logging.DEBUG, logger="neuraldiffeq.fit"):
        hook.on_stage_start(log, run)
        run.steps_done, run.best_loss, run.first_loss, run.last_loss = 6, 0.25, 2.0, 0.25
        hook.on_step(log, run, np.array([0.25]))
        hook.on_stage_end(log, run)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "stage 1/1 Quadratic: 6 steps, from step 0"
    assert messages[1].startswith("stage 1/1 Quadratic: step 6, loss 0.25")
    assert "loss 2 -> 0.25 (best 0.25)" in messages[2]


def test_fit_logs_when_asked(caplog):
    with caplog.at_level(logging.INFO, logger="neuraldiffeq.fit"):
        nde.fit(Params(jnp.zeros(3)), TARGET, Quadratic(), steps=3, progress=False)
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]


def test_callback_gets_the_global_step_and_can_stop():
    seen = []
    hook = CallbackHook(lambda step, loss, model: seen.append((step, loss, model)) or step >= 9)
    log = FitLog(step_offset=5)  # a second stage, after a first of 5 steps
    assert not hook.on_step(log, fake_run(steps_done=2), np.array([3.0, 2.0]))
    assert hook.on_step(log, fake_run(steps_done=4), np.array([1.0]))
    assert seen == [(7, 2.0, "current"), (9, 1.0, "current")]
    with pytest.raises(ValueError, match="callback must be a function"):
        CallbackHook("print")


def test_failure_hook_raises_with_the_best_model_and_every_report():
    hook, log = FailureHook(max_failures=3), FitLog()
    log.record(np.array([np.nan, np.nan, np.nan]))
    hook.on_step(log, fake_run(consecutive_failures=2), None)  # not yet
    with pytest.raises(nde.FitFailure, match="3 consecutive steps of Quadratic") as info:
        hook.on_step(log, fake_run(consecutive_failures=3, check_message="singular"), None)
    assert "A check inside the step said: singular" in str(info.value)
    result = info.value.result
    assert result.model == "best" and result.skipped == 2 and len(result.losses) == 3


def test_devices_hook_places_the_batch_and_replicates_the_carry():
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    hook = DevicesHook(mesh)
    data = nde.datasets.spiral(n_points=6, t1=1.0)
    model = nde.NeuralODE(lambda t, y, args: -y)
    stage = nde.Stage(nde.Trajectory(), optax.adam(0.1), 2)
    prepared = hook.on_prepared(stage, stage.strategy.prepare(model, data))
    arrays = [x for x in jax.tree.leaves(prepared) if isinstance(x, jax.Array)]
    assert arrays and all(isinstance(x.sharding, NamedSharding) for x in arrays)
    run = StageRun(Params(jnp.zeros(3)), nde.Stage(Quadratic(), optax.adam(0.1), 2), TARGET,
                   jax.random.key(0))  # fmt: skip
    hook.on_stage_start(FitLog(), run)
    assert run.out_shardings is not None
    assert all(x.sharding == run.out_shardings for x in jax.tree.leaves(run.carry))


def test_checkpoint_hook_saves_and_restores_a_stage_run(tmp_path):
    stages = [nde.Stage(Quadratic(), optax.adam(0.1), 4, steps_per_call=2)]
    model, key = Params(jnp.zeros(3)), jax.random.key(1)

    def run_of():
        return StageRun(model, stages[0], TARGET, key, name="1/1 Quadratic")

    hook, log, run = CheckpointHook(tmp_path, 2, False, model, stages, key), FitLog(), run_of()
    hook.on_start(log)
    hook.on_stage_start(log, run)
    for losses in run.calls():
        log.record(losses)
        hook.on_step(log, run, losses)
        if run.steps_done == 2:
            break  # as if killed after the checkpoint of step 2
    hook.on_end(log, None)
    resumed, again = CheckpointHook(tmp_path, 2, True, model, stages, key), FitLog()
    resumed.on_start(again)
    assert again.step_offset == 0 and again.first_stage == 0
    np.testing.assert_array_equal(np.concatenate(again.losses), np.concatenate(log.losses))
    fresh = run_of()
    resumed.on_stage_start(again, fresh)
    assert fresh.steps_done == 2 and fresh.counters() == run.counters()
    for saved, restored in zip(jax.tree.leaves(run.carry), jax.tree.leaves(fresh.carry),
                               strict=True):  # fmt: skip
        if jax.dtypes.issubdtype(saved.dtype, jax.dtypes.prng_key):
            saved, restored = jax.random.key_data(saved), jax.random.key_data(restored)
        np.testing.assert_array_equal(saved, restored)
    resumed.on_end(again, None)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        CheckpointHook(tmp_path, 2, False, model, stages, key)
    with pytest.raises(ValueError, match="need checkpoint_dir"):
        CheckpointHook.of(None, 2, False, model, stages, key)
    assert CheckpointHook.of(None, None, False, model, stages, key) is None


def test_a_checkpoint_of_another_format_is_refused_not_deleted(tmp_path, monkeypatch):
    from neuraldiffeq.fitting import checkpoint

    stages = [nde.Stage(Quadratic(), optax.adam(0.1), 2, steps_per_call=2)]
    model, key = Params(jnp.zeros(3)), jax.random.key(1)
    monkeypatch.setattr(checkpoint, "_FORMAT", 1)  # as written by neuraldiffeq 0.1
    hook, log = CheckpointHook(tmp_path, None, False, model, stages, key), FitLog()
    run = StageRun(model, stages[0], TARGET, key, name="1/1 Quadratic")
    for losses in run.calls():
        log.record(losses)
    hook.on_stage_end(log, run)
    hook.on_end(log, None)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another version of neuraldiffeq.*format 1"):
        CheckpointHook(tmp_path, None, True, model, stages, key).on_start(FitLog())
    assert (tmp_path / "2").is_dir()  # still there, for the version that wrote it
