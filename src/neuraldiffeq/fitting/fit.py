"""`fit`: the training loop. Strategies say what to minimise; `fit` minimises it, robustly.

`fit` is a driver: the compiled loop of a stage is `loop.StageRun`, what a failed step does is
`failure_policy` (an optax wrapper), and devices, checkpoints, progress, logging, the failure
rule and the user's callback are hooks (`hooks`) that the loop calls at fixed points.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from .checkpoint import CheckpointHook
from .devices import as_mesh
from .diagnostics import diagnose
from .failure_policy import MAX_CONSECUTIVE_FAILURES, validate_max_failures
from .hooks import CallbackHook, DevicesHook, FailureHook, LoggingHook
from .loop import StageRun, build_ahead, in_callers_settings
from .presets import PRESETS
from .progress import ProgressHook
from .results import FitFailure, FitLog, FitResult, StageReport
from .solver_choice import resolve_for_fit
from .stage import Stage
from .strategies import AbstractStrategy

#: `fit_building`'s jobs, for the `fit` it calls (a context variable: per thread and task)
_ALSO_BUILD: contextvars.ContextVar[tuple] = contextvars.ContextVar("also_build", default=())

__all__ = ["MAX_CONSECUTIVE_FAILURES", "FitFailure", "FitResult", "Stage", "StageReport", "fit"]


def fit(
    model: Any,
    data: Any,
    strategy: AbstractStrategy | Sequence[Stage] | str,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    key: jax.Array | None = None,
    callback: Callable[[int, float, Any], bool | None] | None = None,
    progress: bool = True,
    steps_per_call: int | str | None = "auto",
    max_failures: int = MAX_CONSECUTIVE_FAILURES,
    devices: int | Sequence[jax.Device] | Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit `model` to `data` by minimising a strategy's loss over the model's float arrays.

    Arguments:
        model: any equinox module (e.g. `nde.NeuralODE`); all its floating-point arrays train.
        data: what the strategy's `prepare(model, data)` accepts (for time-series strategies
            an `nde.TimeSeries` or a `(ts, ys)` pair). Every stage's `prepare` runs first, with
            the model as given, and checks the data against it (shapes, required methods)
            before anything is compiled.
        strategy: a strategy (then give `optimizer` and `steps`), a list of `nde.Stage`s run in
            order (mixed training), or the name of a preset in `PRESETS`.
        optimizer: an optax optimizer (default `optax.adam(1e-2)`); `optax.lbfgs()` works too.
            With a preset: passed to the preset (it replaces the Adam of its solving stages).
        steps: number of optimizer steps (single-strategy form); with a preset, passed to it.
        key: PRNG key for strategies that sample (minibatches, SDE paths); default key 0.
        callback: `callback(step, loss, model)` after each compiled call; return True to stop.
            With `steps_per_call="auto"` that is after every step.
        progress: show a tqdm progress bar per stage; it reads "compiling…" until the stage's
            first compiled call is done, so that its rate counts steps, not compilation.
        steps_per_call: fuse this many steps into one compiled call. `"auto"` (default): as
            many as take about 50 ms (measured while fitting; one compiled program serves every
            count), one at a time when `callback` is given; a call ends early at a failed step,
            so failures are handled step by step. With a preset an int applies to every stage
            (a stage shorter than that fuses all its steps) and "auto" leaves the preset's own
            choice; with a list of stages, give each `Stage` its own instead.
        max_failures: give up (raise `FitFailure`, holding the best model) after this many
            consecutive steps with a non-finite loss or gradient. A failed step's update is
            dropped, the parameters step back halfway towards the last ones that solved, the
            optimiser state restarts there, and the step is counted in `result.skipped`
            (`nde.failure_policy` wraps the optimizer to do this; `nde.check_failures` is the
            rule that raises).
        devices: data-parallel training. None (default): one device, as JAX places it. An int
            (the first that many of `jax.devices()`), a list of devices, or a
            `jax.sharding.Mesh`: the batch axis of the prepared data (series, paths, samples;
            each strategy says where it is with `batch_axes`) is split over the devices, the
            model and optimizer state are replicated on each, and the same compiled step runs
            on all of them (XLA inserts the sum of the gradients). Data that already carry a
            sharding over several devices are used as placed. The batch must divide evenly over
            the devices (nothing is padded); the losses equal the one-device losses up to
            rounding. The fitted model's arrays come back replicated over the devices. See the
            how-to "Scaling out" for what is sharded and what it costs. In a multi-process run
            (`jax.distributed.initialize`), `devices` must span every process and each process
            passes its own share of the batch as `data`; see "Scaling out".
        checkpoint_dir: a folder for checkpoints (written with orbax-checkpoint): the model,
            optimizer state, stage, step, PRNG key and the losses so far, at the end of every
            stage and every `checkpoint_every` steps. A folder that already holds checkpoints
            is refused unless `resume=True`.
        checkpoint_every: write a checkpoint after the compiled call that completes each
            multiple of this many steps (counted over all stages; with `steps_per_call="auto"`
            the calls end exactly on those steps); None: at stage ends only.
        resume: continue from the newest complete checkpoint in `checkpoint_dir` (start afresh
            if there is none). The continued fit computes the same losses as an uninterrupted
            one; give the same model, data, strategy, optimizer, steps and key (another model
            structure or strategy is refused with a `ValueError`). A damaged or incomplete
            checkpoint is skipped with a warning, never loaded.

    With several stages, each later stage's compiled step (steps_per_call "auto") is traced and
    compiled in a background thread while the stages before it run (`loop.build_ahead`): the
    same programs, so the same losses, with less waiting between stages.

    Ctrl-C stops the fit and returns the best model so far (`result.interrupted` is True).
    Each stage's start and end are logged (INFO) to the `logging` logger "neuraldiffeq.fit",
    and each compiled call's loss (DEBUG).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> data = nde.datasets.spiral()
        >>> mlp = eqx.nn.MLP(2, 2, 50, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=lambda y: y**3))
        >>> result = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05),
        ...                  steps=5, progress=False)
        >>> result.losses.shape
        (5,)
        >>> sharded = nde.fit(model, data, nde.Trajectory(), optimizer=optax.adam(0.05),
        ...                   steps=5, progress=False, devices=1)  # or 4, with 4 devices
        >>> bool(abs(sharded.losses[-1] - result.losses[-1]) <= 1e-5 * result.losses[-1])
        True
    """
    also_build, _ = _ALSO_BUILD.get(), _ALSO_BUILD.set(())  # not for fits the jobs run
    stages = _as_stages(strategy, optimizer, steps, steps_per_call, data, model)
    mesh = as_mesh(devices)
    validate_max_failures(max_failures)
    key = jax.random.key(0) if key is None else key
    log = FitLog()
    # in the order they run: placement first, the callback (which may stop the fit) last
    hooks = [
        DevicesHook(mesh) if mesh is not None else None,
        CheckpointHook.of(checkpoint_dir, checkpoint_every, resume, model, stages, key),
        ProgressHook(enabled=progress),
        LoggingHook(),
        FailureHook(max_failures),
        CallbackHook(callback) if callback is not None else None,
    ]
    hooks = [hook for hook in hooks if hook is not None]
    result = None
    # the later stages' programs are built in the background while the first one runs
    builder = ThreadPoolExecutor(1, thread_name_prefix="neuraldiffeq-build-ahead")
    try:
        for hook in hooks:
            hook.on_start(log)  # a resumed fit: the log continues from the checkpoint
        # Every stage's prepare runs first, so that a mismatch between the data and the model
        # (or a model missing what a later stage needs) is reported before anything compiles.
        model = resolve_for_fit(model, data, [stage.strategy for stage in stages])
        trained = model  # the structure every stage trains (and returns)
        all_prepared = [stage.strategy.prepare(model, data) for stage in stages]
        for hook in hooks:  # e.g. split over the devices, so a bad batch size fails first
            all_prepared = list(map(hook.on_prepared, stages, all_prepared))
        stage_keys = []
        for _ in stages:
            key, stage_key = jax.random.split(key)
            stage_keys.append(stage_key)
        later = range(log.first_stage + 1, len(stages)) if mesh is None else ()
        ahead = [
            build_ahead(builder, model, stages[i], all_prepared[i], stage_keys[i])
            if i in later
            else None
            for i in range(len(stages))
        ]
        for index, (stage, prepared) in enumerate(zip(stages, all_prepared, strict=True)):
            if index < log.first_stage:
                continue  # finished before the checkpoint a resumed fit started from
            name = f"{index + 1}/{len(stages)} {type(stage.strategy).__name__}"
            run = StageRun(
                model, stage, prepared, stage_keys[index], index=index, name=name,
                one_at_a_time=callback is not None, ahead=ahead[index],
            )  # fmt: skip
            if index == len(stages) - 1:  # after the stages' own builds, on the same thread
                for job in also_build:
                    builder.submit(in_callers_settings(job), trained)
            for hook in hooks:
                hook.on_stage_start(log, run)
            try:
                for losses in run.calls():
                    log.record(losses)
                    if any([hook.on_step(log, run, losses) for hook in hooks]):
                        break  # the callback asked to stop
            except KeyboardInterrupt:
                log.interrupted = True  # Ctrl-C: the best model so far is the result
            model = run.result_model()
            for hook in hooks:
                hook.on_stage_end(log, run)
            # warns if the stage diverged or skipped steps
            log.reports.append(diagnose(run.report(), stage, run.check_message))
            log.step_offset += run.steps_done
            if log.interrupted:
                break
        result = log.result(model)
    finally:
        builder.shutdown(wait=True, cancel_futures=True)  # none left running in a later fit
        for hook in hooks:
            hook.on_end(log, result)
    return result


def fit_building(
    model: Any,
    data: Any,
    strategy: AbstractStrategy | Sequence[Stage] | str,
    *,
    also_build: Sequence[Callable[[Any], Any]] = (),
    **kwargs: Any,
) -> FitResult:
    """`fit(model, data, strategy, **kwargs)` that also runs each `also_build(model)` in the
    background while the last stage trains: for compiling, ahead of time, a program the caller
    runs on the fitted model (e.g. `fit_series`' evaluation), while a core would otherwise wait.

    Each job gets the model as the stages train it (`solver="auto"` resolved): the fitted model
    has the same structure, static part and shapes, so a program a job compiles by calling a
    jitted function on it is the one the caller's later call finds in JAX's cache (same
    function, same static arguments, same shapes, dtypes and placement); anything else is
    compiled afresh by that call. What a job returns is dropped, and so is an error it raises
    (the caller's own call then raises it). `fit` waits for the jobs before it returns.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.fit import fit_building
        >>> data = nde.datasets.spiral(n_points=10, t1=1.0)
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp))
        >>> final = eqx.filter_jit(lambda m: m(data.ts, data.ys[0]))
        >>> result = fit_building(model, data, nde.Trajectory(), also_build=[final],
        ...                       optimizer=optax.adam(0.01), steps=2, progress=False)
        >>> final(result.model).shape  # compiled while the stage trained
        (10, 2)
    """
    token = _ALSO_BUILD.set(tuple(also_build))
    try:
        return fit(model, data, strategy, **kwargs)
    finally:
        _ALSO_BUILD.reset(token)


def _as_stages(strategy, optimizer, steps, steps_per_call, data, model=None) -> list[Stage]:
    if steps_per_call is not None and not _valid_per_call(steps_per_call):
        raise ValueError(
            f"steps_per_call must be a positive integer or 'auto', got {steps_per_call!r}."
        )
    if steps_per_call == "auto":  # the default: a preset or a stage list keeps its own choice
        steps_per_call = None
    if isinstance(strategy, str):
        if strategy not in PRESETS:
            raise ValueError(
                f"unknown strategy preset {strategy!r}; presets: {sorted(PRESETS) or 'none'}. "
                "Or pass a strategy such as nde.Trajectory() or a list of nde.Stage."
            )
        # the preset sees the data (e.g. "auto" checks whether collocation can go first) and
        # honours or refuses fit's keywords itself
        stages = PRESETS[strategy](
            optimizer=optimizer, steps=steps, steps_per_call=steps_per_call, data=data, model=model
        )
    elif isinstance(strategy, AbstractStrategy):
        if steps is None:
            raise ValueError("steps is required when fitting with a single strategy.")
        opt = optax.adam(1e-2) if optimizer is None else optimizer
        stages = [Stage(strategy, opt, steps, "auto" if steps_per_call is None else steps_per_call)]
    elif (
        isinstance(strategy, Sequence) and strategy and all(isinstance(s, Stage) for s in strategy)
    ):
        if optimizer is not None or steps is not None or steps_per_call is not None:
            raise ValueError(
                "with a list of nde.Stage, give each stage its own optimizer, steps and "
                "steps_per_call; do not pass optimizer=, steps= or steps_per_call= to fit."
            )
        stages = list(strategy)
    else:
        raise ValueError(
            "strategy must be a strategy (e.g. nde.Trajectory()), a non-empty list of nde.Stage, "
            f"or a preset name; got {strategy!r}."
        )
    for stage in stages:
        if not isinstance(stage.strategy, AbstractStrategy):
            raise ValueError(f"Stage.strategy must be a strategy, got {stage.strategy!r}.")
        if not isinstance(stage.optimizer, optax.GradientTransformation):
            raise ValueError(
                "optimizer must be an optax optimizer (e.g. optax.adam(0.01)), "
                f"got {stage.optimizer!r}."
            )
        if not (isinstance(stage.steps, int | np.integer) and stage.steps > 0):
            raise ValueError(f"steps must be a positive integer, got {stage.steps!r}.")
        if not _valid_per_call(stage.steps_per_call):
            raise ValueError(
                "steps_per_call must be a positive integer or 'auto', "
                f"got {stage.steps_per_call!r}."
            )
    return stages


def _valid_per_call(value) -> bool:
    if isinstance(value, str):
        return value == "auto"
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0
