"""`fit`: the training loop. Strategies say what to minimise; `fit` minimises it, robustly."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ..compilation.cacheable import cacheable_jit
from . import checkpoint as _ckpt
from .devices import as_mesh, per_device_value_and_grad, replicate, shard
from .diagnostics import diagnose
from .presets import PRESETS
from .solver_choice import resolve_for_fit
from .stage import Stage
from .strategies import AbstractStrategy

__all__ = ["FitFailure", "FitResult", "Stage", "StageReport", "fit"]

#: consecutive non-finite steps after which `fit` gives up (default of `max_failures`).
MAX_CONSECUTIVE_FAILURES = 50
#: `steps_per_call="auto"`: the wall time one compiled call aims at, and the most steps it fuses.
AUTO_CALL_SECONDS, AUTO_MAX_STEPS = 0.05, 1000


@dataclasses.dataclass
class StageReport:
    name: str
    steps: int
    first_loss: float
    final_loss: float
    best_loss: float
    skipped: int
    compile_seconds: float
    wall_seconds: float
    optimizer: str = ""  # e.g. "Adam(lr=0.05)" (fitting.diagnostics.describe_optimizer)
    warning: str | None = None  # set when the stage diverged (fitting.diagnostics)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        model: the model with the lowest loss seen in the last stage (each stage starts from the
            previous stage's result); for strategies whose loss is sampled afresh each step
            (`strategy.stochastic`: minibatches, SDE paths, ELBO), the last iterate instead.
        losses: loss at every step, all stages concatenated (`np.ndarray`).
        times: wall-clock seconds since the start of `fit` at every step (compilation included).
        stages: a `StageReport` per stage that ran (steps, losses, skipped steps, timings).
        skipped: total steps whose loss or gradient was not finite (their update was dropped).
        interrupted: True if Ctrl-C ended the fit early; `model` is still the best so far.
    """

    model: Any
    losses: np.ndarray
    times: np.ndarray
    stages: list[StageReport]
    skipped: int
    interrupted: bool

    @property
    def best_loss(self) -> float:
        return self.stages[-1].best_loss if self.stages else float("nan")

    def metrics(self) -> dict:
        """A JSON-serialisable summary (for `metrics.json`)."""
        return {
            "final_loss": float(self.losses[-1]) if len(self.losses) else None,
            "best_loss": self.best_loss,
            "steps": int(len(self.losses)),
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "wall_seconds": float(self.times[-1]) if len(self.times) else 0.0,
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }


class FitFailure(RuntimeError):
    """The solver failed on too many consecutive steps; `.result` holds the best model so far."""

    def __init__(self, message: str, result: FitResult):
        super().__init__(message)
        self.result = result


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
        progress: show a tqdm progress bar.
        steps_per_call: fuse this many steps into one compiled call. `"auto"` (default): as
            many as take about 50 ms (measured while fitting; one compiled program serves every
            count), one at a time when `callback` is given; a call ends early at a failed step,
            so failures are handled step by step. With a preset an int applies to every stage
            (a stage shorter than that fuses all its steps) and "auto" leaves the preset's own
            choice; with a list of stages, give each `Stage` its own instead.
        max_failures: give up (raise `FitFailure`, holding the best model) after this many
            consecutive steps with a non-finite loss or gradient. A failed step's update is
            dropped, the parameters step back halfway towards the last ones that solved, the
            optimiser state restarts there, and the
            step is counted in `result.skipped`.
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

    Ctrl-C stops the fit and returns the best model so far (`result.interrupted` is True).

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
    stages = _as_stages(strategy, optimizer, steps, steps_per_call, data, model)
    mesh = as_mesh(devices)
    if not (isinstance(max_failures, int) and max_failures > 0):
        raise ValueError(f"max_failures must be a positive integer, got {max_failures!r}.")
    key = jax.random.key(0) if key is None else key
    start = time.perf_counter()
    losses: list[np.ndarray] = []
    times: list[np.ndarray] = []
    reports: list[StageReport] = []
    interrupted = False
    step_offset = 0
    checkpoints = _open_checkpoints(checkpoint_dir, checkpoint_every, resume, model, stages, key)
    saved = checkpoints.newest() if checkpoints is not None and resume else None
    if saved is not None:  # continue the fit where its newest intact checkpoint left it
        losses, times = [saved.losses], [saved.times]
        reports = [StageReport(**r) for r in saved.reports]
        step_offset = saved.step - saved.counters["steps_done"]
        start -= saved.elapsed

    # Every stage's prepare runs first, so that a mismatch between the data and the model (or a
    # model missing what a later stage needs) is reported before anything compiles or trains.
    model = resolve_for_fit(model, data, [stage.strategy for stage in stages])  # solver="auto"
    all_prepared = [stage.strategy.prepare(model, data) for stage in stages]
    if mesh is not None:  # placed before anything compiles, so a bad batch size fails first
        all_prepared = [
            shard(stage.strategy, prepared, mesh)
            for stage, prepared in zip(stages, all_prepared, strict=True)
        ]
    for index, (stage, prepared) in enumerate(zip(stages, all_prepared, strict=True)):
        key, stage_key = jax.random.split(key)
        if saved is not None and index < saved.stage:
            continue  # finished before the checkpoint; its result is in the restored carry
        name = f"{index + 1}/{len(stages)} {type(stage.strategy).__name__}"
        run = _StageRun(model, stage, prepared, stage_key, mesh, one_at_a_time=callback is not None)
        if checkpoints is not None and checkpoints.every is not None:
            run.call_boundary = (step_offset, checkpoints.every)
        if saved is not None and index == saved.stage:
            run.restore(saved, checkpoints.directory)
        with tqdm(
            total=stage.steps,
            initial=run.steps_done,
            desc=name,
            disable=not progress or jax.process_index() > 0,  # one bar in a multi-process run
            leave=True,
        ) as bar:
            try:
                for values in run.calls():
                    now = time.perf_counter() - start
                    losses.append(values)
                    times.append(np.full(values.shape, now))
                    bar.update(len(values))
                    bar.set_postfix(
                        loss=f"{values[-1]:.4g}",
                        best=f"{run.best_loss:.4g}",
                        skipped=run.skipped,
                        refresh=False,
                    )
                    if checkpoints is not None and checkpoints.due(step_offset + run.steps_done):
                        _save(checkpoints, index, run, step_offset, losses, times, reports, start)
                    if run.consecutive_failures >= max_failures:
                        model = run.best_model()
                        reports.append(run.report(name))
                        raise FitFailure(
                            _failure_message(stage, run),
                            _result(model, losses, times, reports, interrupted),
                        )
                    if callback is not None and callback(
                        step_offset + run.steps_done, float(values[-1]), run.current_model()
                    ):
                        break
            except KeyboardInterrupt:
                interrupted = True
        model = run.result_model()
        if checkpoints is not None and run.steps_done == stage.steps:  # a finished stage
            _save(checkpoints, index, run, step_offset, losses, times, reports, start)
        reports.append(diagnose(run.report(name), stage))  # warns if the stage diverged
        step_offset += run.steps_done
        if run.skipped:
            warnings.warn(
                f"stage {name}: {run.skipped} of {run.steps_done} steps had a non-finite loss or "
                "gradient (solver failure) and were skipped."
                + (
                    f" A check inside the step said: {run.check_message}"
                    if run.check_message
                    else ""
                ),
                stacklevel=2,
            )
        if interrupted:
            break
    if checkpoints is not None:
        checkpoints.close()
    return _result(model, losses, times, reports, interrupted)


class _StageRun:
    """The compiled loop of one stage, with the best parameters tracked on device."""

    def __init__(
        self, model, stage: Stage, prepared, key, mesh: Mesh | None = None, one_at_a_time=False
    ):
        self.stage, self.prepared, self.key = stage, prepared, key
        self.one_at_a_time = one_at_a_time  # "auto" with a callback: one step per call
        params, self.static = eqx.partition(model, eqx.is_inexact_array)
        self.optimizer = optax.with_extra_args_support(stage.optimizer)

        # Everything that changes from step to step lives on device, in one carry.
        # The carry's types must equal the step's outputs, or the second call would recompile.
        # Built by one compiled program rather than one per array operation: each of those
        # would be compiled (or read from the compilation cache) on a first fit.
        def initial(params, key):
            best_loss = jnp.array(jnp.inf, dtype=jnp.float32)
            carry = (params, self.optimizer.init(params), params, best_loss, key, params)
            return jax.tree_util.tree_map(_strong_type, carry)

        self.carry = jax.jit(initial)(params, key)
        # With a mesh: the carry (model, optimizer state, best model, key) lives whole on every
        # device, and the step's outputs are pinned there too, so that the second call sees the
        # same shardings as the first and does not recompile.
        self.out_shardings = None
        self.per_device = None  # (value_and_grad, value) computed device by device, if possible
        if mesh is not None:
            self.out_shardings = NamedSharding(mesh, PartitionSpec())
            self.carry = replicate(self.carry, self.out_shardings)
            reduction = stage.strategy.batch_reduction(model, prepared)
            if reduction is not None:
                self.per_device = (reduction, stage.strategy.batch_axes(prepared), mesh)
        self.best_loss = float("inf")
        self.first_loss = float("nan")
        self.last_loss = float("nan")
        self.steps_done = self.skipped = self.consecutive_failures = 0
        self.call_boundary: tuple[int, int] | None = None  # (global step offset, every)
        self.check_message: str | None = None  # the first line of a failed in-step check
        self.compile_seconds = 0.0
        self.started = time.perf_counter()
        self._compiled: dict[int, Any] = {}

    def current_model(self):
        return eqx.combine(self.carry[0], self.static)

    def best_model(self):
        return eqx.combine(self.carry[2], self.static)

    def result_model(self):
        """The best parameters, or the last ones when the loss is a noisy (sampled) estimate."""
        if self.stage.strategy.stochastic:
            return self.current_model()
        return self.best_model()

    def calls(self):
        """Run the stage, yielding the losses of each compiled call."""
        remaining = self.stage.steps - self.steps_done  # not all of them after a resume
        auto = self.stage.steps_per_call == "auto"
        n_auto = 1  # "auto": the first calls run one step; then as many as fill AUTO_CALL_SECONDS
        while remaining > 0:
            n = min(n_auto if auto else self.stage.steps_per_call, remaining)
            if auto and self.call_boundary is not None:  # "auto" calls end on checkpoint steps
                offset, every = self.call_boundary
                n = min(n, every - (offset + self.steps_done) % every)
            key = "auto" if auto else n  # "auto": one program, the count is an argument
            first = key not in self._compiled
            if first:
                # Compiled without equinox's error callbacks, so that the persistent
                # compilation cache can keep it (`_cacheable`); jax.jit's dispatch, first call
                # compiles. With that cache on, the traced program is kept next to it and read
                # back by the next process (`_exported`); not with a mesh (one device only).
                self._compiled[key] = cacheable_jit(
                    _make_steps(
                        self.static, self.stage.strategy, self.optimizer, key, self.per_device
                    ),
                    export=self.out_shardings is None,
                    compiler_options=self.stage.strategy.compiler_options,
                    out_shardings=self.out_shardings,
                )
            args = (self.carry, self.prepared) + ((np.int32(n),) if auto else ())
            t0 = time.perf_counter()
            carry, out = self._compiled[key](*args)
            out = np.asarray(out)  # one transfer: row 0 the losses, row 1 finiteness, row 2 done
            elapsed = time.perf_counter() - t0
            done = int(out[2].sum()) if auto else n
            values, finite = out[0, :done], out[1, :done].astype(bool)
            if self._compiled[key].stripped and (~finite & ~np.isinf(values)).any():
                # A NaN may be a check that failed inside the step (an error that the cacheable
                # program turns into NaN, e.g. lineax's singular Newton matrix inside an implicit
                # solver): replay the call with the checks on to learn the check's message. The
                # step stays skipped, like a failed solve (which gives inf and is not replayed),
                # and the message goes into the stage's warning and any FitFailure.
                self.check_message = self.check_message or _failed_check(
                    self._compiled[key].checked, args
                )
            self.carry = carry
            if first:  # compilation plus one call of n steps
                self.compile_seconds += elapsed
            elif auto and not self.one_at_a_time:
                per_step = elapsed / max(done, 1)
                n_auto = int(np.clip(AUTO_CALL_SECONDS / per_step, 1, AUTO_MAX_STEPS))
                if jax.process_count() > 1:  # the processes' timings differ; their programs
                    # must not: every process runs process 0's count (else the collectives hang)
                    n_auto = int(multihost_utils.broadcast_one_to_all(np.int32(n_auto)))
            self._record(values, finite)
            remaining -= done
            yield values

    def counters(self) -> dict:
        """What a checkpoint keeps of the host-side bookkeeping (the rest is in the carry)."""
        names = ("steps_done", "skipped", "consecutive_failures", "best_loss", "first_loss")
        return {name: getattr(self, name) for name in (*names, "last_loss")}

    def restore(self, saved: _ckpt.Saved, directory: str) -> None:
        """Continue from a checkpoint: its carry (placed as `__init__` places one), counters."""
        place = None  # host arrays straight to every device (multi-host too) when sharded
        if self.out_shardings is not None:
            place = lambda host: jax.device_put(host, self.out_shardings)  # noqa: E731
        carry = _ckpt.restore_carry(saved, self.carry, directory, place)
        self.carry = jax.tree_util.tree_map(_strong_type, carry)
        for name, value in saved.counters.items():
            setattr(self, name, value)

    def _record(self, values, finite):
        if self.steps_done == 0:
            self.first_loss = float(values[0])
        self.steps_done += len(values)
        self.skipped += int(np.sum(~finite))
        for ok in finite:
            self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
        self.last_loss = float(values[-1])
        if finite.any():  # mirrors the on-device rule: finite and strictly lower
            self.best_loss = min(self.best_loss, float(np.min(values[finite])))

    def report(self, name: str) -> StageReport:
        return StageReport(
            name=name,
            steps=self.steps_done,
            first_loss=self.first_loss,
            final_loss=self.last_loss,
            best_loss=self.best_loss,
            skipped=self.skipped,
            compile_seconds=self.compile_seconds,
            wall_seconds=time.perf_counter() - self.started,
        )


def _make_steps(static, strategy: AbstractStrategy, optimizer, n: int | str, per_device=None):
    """A pure function running `n` optimizer steps (a `lax.scan` when n > 1). `n="auto"`:
    the count is a third argument (at most AUTO_MAX_STEPS) and the run stops after a failed step.
    `per_device`: (reduction, batch axes, mesh) to compute the loss and gradient device by device
    (see `devices.per_device_value_and_grad`); None: one program over the whole batch.
    """

    def loss_of(params, prepared, key):
        return strategy.loss(eqx.combine(params, static), prepared, key)

    value_and_grad = jax.value_and_grad(loss_of)
    if per_device is not None:
        value_and_grad, loss_of = per_device_value_and_grad(loss_of, *per_device)

    def one_step(carry, prepared):
        params, opt_state, best_params, best_loss, key, good_params = carry
        key, step_key = jax.random.split(key)
        value, grads = value_and_grad(params, prepared, step_key)
        finite = jnp.isfinite(value) & _all_finite(grads)
        updates, new_state = optimizer.update(
            grads,
            opt_state,
            params,
            value=value,
            grad=grads,
            value_fn=lambda p: loss_of(p, prepared, step_key),
        )
        improved = finite & (value < best_loss)
        best_params = _tree_where(improved, params, best_params)
        best_loss = jnp.where(improved, value.astype(best_loss.dtype), best_loss)
        # A failed solve (non-finite loss or gradient) drops the update and steps back halfway
        # towards the last parameters that solved: retrying from the same point would fail
        # forever when the parameters themselves (not a random draw) broke the solver.
        halfway = jax.tree_util.tree_map(lambda p, g: g + 0.5 * (p - g), params, good_params)
        good_params = _tree_where(finite, params, good_params)
        params = _tree_where(finite, optax.apply_updates(params, updates), halfway)
        # ...and restarts the optimiser there: its state (momenta, L-BFGS memory) led into the
        # failure, and an unchanged state would propose the same failing step again.
        opt_state = _tree_where(finite, new_state, optimizer.init(halfway))
        return (params, opt_state, best_params, best_loss, key, good_params), (value, finite)

    def fused(carry, prepared, count):
        # a while loop whose trip count is a runtime value: one program for every count
        dtype = jnp.result_type(float)
        out = jnp.zeros((3, AUTO_MAX_STEPS), dtype)  # losses, finite, done

        def body(state):
            i, carry, out, _ = state
            carry, (value, finite) = one_step(carry, prepared)
            row = jnp.stack([value.astype(dtype), finite.astype(dtype), jnp.ones((), dtype)])
            return i + 1, carry, out.at[:, i].set(row), finite

        def cond(state):
            i, _, _, ok = state
            return (i < jnp.minimum(count, AUTO_MAX_STEPS)) & ok

        state = (jnp.zeros((), jnp.int32), carry, out, jnp.asarray(True))
        _, carry, out, _ = jax.lax.while_loop(cond, body, state)
        return carry, out

    def steps(carry, prepared):
        if n == 1:  # no scan around a single step: less to trace and compile
            carry, (value, finite) = one_step(carry, prepared)
            value, finite = value[None], finite[None]
        else:
            carry, (value, finite) = jax.lax.scan(
                lambda c, _: one_step(c, prepared), carry, length=n
            )
        return carry, jnp.stack([value, finite.astype(value.dtype)])

    return fused if n == "auto" else steps


def _strong_type(x):
    # Optimiser states may start with weakly typed scalars that come back strongly typed.
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.number):
        return jnp.asarray(x, dtype=x.dtype)
    return x


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _tree_where(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


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


def _open_checkpoints(directory, every, resume, model, stages, key) -> _ckpt.Checkpoints | None:
    if every is not None and not (
        isinstance(every, int | np.integer) and not isinstance(every, bool) and every > 0
    ):
        raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}.")
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True or False, got {resume!r}.")
    if directory is None:
        if every is not None or resume:
            raise ValueError(
                "checkpoint_every= and resume=True need checkpoint_dir= (the folder that holds "
                "the checkpoints)."
            )
        return None
    return _ckpt.Checkpoints(directory, every, resume, _ckpt.fingerprint(model, stages, key))


def _save(checkpoints, index, run: _StageRun, step_offset, losses, times, reports, start) -> None:
    elapsed = time.perf_counter() - start
    step = step_offset + run.steps_done
    checkpoints.save(step, index, run.counters(), run.carry, losses, times, reports, elapsed)


def _failed_check(checked, args) -> str | None:
    """Run the checked program; the message of the equinox check that fails, if one does."""
    callbacks = logging.getLogger("jax._src.callback")  # it logs each failed check's traceback
    level = callbacks.level
    callbacks.setLevel(logging.CRITICAL)
    try:
        jax.block_until_ready(checked(*args))  # on a GPU the check raises only when waited for
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        for line in lines:  # "...EquinoxRuntimeError: <the check's message>"
            if "EquinoxRuntimeError: " in line:
                return line.split("EquinoxRuntimeError: ", 1)[1]
        return lines[-1] if lines else type(error).__name__
    finally:
        callbacks.setLevel(level)
    return None


def _failure_message(stage: Stage, run: _StageRun) -> str:
    return (
        f"{run.consecutive_failures} consecutive steps of {type(stage.strategy).__name__} had a "
        "non-finite loss or gradient, so the solver is failing on this model. Try a stiff solver "
        "(solver='kvaerno5'), looser tolerances or a larger max_steps, a smaller learning rate, "
        "or a smaller initialisation of the network. The best model so far is in error.result."
        + (f" A check inside the step said: {run.check_message}" if run.check_message else "")
    )


def _result(model, losses, times, reports, interrupted) -> FitResult:
    if jax.process_count() > 1:  # each process gets the model as an ordinary local one
        model = jax.tree_util.tree_map(
            lambda x: (
                x.addressable_data(0)
                if isinstance(x, jax.Array) and not x.is_fully_addressable
                else x
            ),
            model,
        )
    return FitResult(
        model=model,
        losses=np.concatenate(losses) if losses else np.zeros(0),
        times=np.concatenate(times) if times else np.zeros(0),
        stages=reports,
        skipped=sum(r.skipped for r in reports),
        interrupted=interrupted,
    )
