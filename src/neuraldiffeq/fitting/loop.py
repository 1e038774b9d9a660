"""The compiled loop of one stage: `StageRun` runs a stage's steps in compiled calls.

Everything that changes from step to step lives on the device in one carry (parameters, the
`failure_policy`-wrapped optimizer state, the best parameters and loss, the PRNG key); the host
keeps counters (steps done, skipped, failures in a row, best loss) read from each call's output.
A call fuses several steps (`Stage.steps_per_call`); "auto" sizes calls from their measured time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._compat import JAX_CALLBACK_LOGGER
from ..compilation.cacheable import cacheable_jit
from .devices import per_device_value_and_grad, replicate
from .failure_policy import failure_policy
from .results import StageReport
from .stage import Stage
from .strategies import AbstractStrategy

__all__ = [
    "AUTO_CALL_SECONDS",
    "AUTO_MAX_STEPS",
    "StageRun",
    "build_ahead",
    "in_callers_settings",
    "make_steps",
]

#: `steps_per_call="auto"`: the wall time one compiled call aims at, and the most steps it fuses.
AUTO_CALL_SECONDS, AUTO_MAX_STEPS = 0.05, 1000


class StageRun:
    """The compiled loop of one stage, with the best parameters tracked on device.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.loop import StageRun
        >>> data = nde.datasets.spiral(n_points=10, t1=1.0)
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp))
        >>> stage = nde.Stage(nde.Trajectory(), optax.adam(0.01), steps=4, steps_per_call=2)
        >>> run = StageRun(model, stage, stage.strategy.prepare(model, data), jax.random.key(0))
        >>> [len(losses) for losses in run.calls()], run.steps_done
        ([2, 2], 4)
    """

    def __init__(
        self,
        model,
        stage: Stage,
        prepared,
        key,
        *,
        index: int = 0,
        name: str | None = None,
        one_at_a_time: bool = False,
        ahead: Future | None = None,
    ):
        self.stage, self.prepared, self.key = stage, prepared, key
        self.ahead = ahead  # the "auto" program, being built in the background (`build_ahead`)
        self.index = index  # the stage's position in the fit
        self.name = name or f"{index + 1} {type(stage.strategy).__name__}"
        self.one_at_a_time = one_at_a_time  # "auto" with a callback: one step per call
        self.model = model
        params, self.static = eqx.partition(model, eqx.is_inexact_array)
        self.optimizer = failure_policy(stage.optimizer)

        # The carry's types must equal the step's outputs, or the second call would recompile.
        # Built by one compiled program rather than one per array operation: each of those
        # would be compiled (or read from the compilation cache) on a first fit.
        def initial(params, key):
            best_loss = jnp.array(jnp.inf, dtype=jnp.float32)
            carry = (params, self.optimizer.init(params), params, best_loss, key)
            return jax.tree_util.tree_map(_strong_type, carry)

        self.carry = jax.jit(initial)(params, key)
        self.out_shardings = None  # set by use_mesh
        self.per_device = None  # (reduction, batch axes, mesh): loss and gradient per device
        self.best_loss = float("inf")
        self.first_loss = float("nan")
        self.last_loss = float("nan")
        self.steps_done = self.skipped = self.consecutive_failures = 0
        self.call_boundary: tuple[int, int] | None = None  # (global step offset, every)
        self.check_message: str | None = None  # the first line of a failed in-step check
        self.compile_seconds = 0.0
        self.started = time.perf_counter()
        self._compiled: dict[Any, Any] = {}

    def use_mesh(self, mesh: Mesh) -> None:
        """Run data-parallel on `mesh` (before the first call): the carry lives whole on every
        device, and the step's outputs are pinned there too, so that the second call sees the
        same shardings as the first and does not recompile."""
        self.out_shardings = NamedSharding(mesh, PartitionSpec())
        self.carry = replicate(self.carry, self.out_shardings)
        strategy = self.stage.strategy
        reduction = strategy.batch_reduction(self.model, self.prepared)
        if reduction is not None:
            self.per_device = (reduction, strategy.batch_axes(self.prepared), mesh)

    def current_model(self):
        return eqx.combine(self.carry[0], self.static)

    def best_model(self):
        return eqx.combine(self.carry[2], self.static)

    def result_model(self):
        """The best parameters, or the last ones when the loss is a noisy (sampled) estimate."""
        if self.stage.strategy.stochastic:
            return self.current_model()
        return self.best_model()

    def calls(self) -> Iterator[np.ndarray]:
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
            t0 = time.perf_counter()
            if first:
                self._compiled[key] = self._program(key)
            args = (self.carry, self.prepared) + ((np.int32(n),) if auto else ())
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
            if first:  # compilation (or waiting for `build_ahead`) plus one call of n steps
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

    def _program(self, key):
        """The compiled program running `key` steps per call ("auto": the count is an argument)."""
        if key == "auto" and self.ahead is not None and self.out_shardings is None:
            program, self.ahead = self.ahead.result(), None  # its errors are raised here
            return program
        # Compiled without equinox's error callbacks, so that the persistent compilation cache
        # can keep it (`cacheable`); the first call compiles. With that cache on, the traced
        # program is kept next to it and read back by the next process (`exported`); not with
        # a mesh (one device only).
        return cacheable_jit(
            make_steps(self.static, self.stage.strategy, self.optimizer, key, self.per_device),
            export=self.out_shardings is None,
            compiler_options=self.stage.strategy.compiler_options,
            out_shardings=self.out_shardings,
        )

    def counters(self) -> dict:
        """What a checkpoint keeps of the host-side bookkeeping (the rest is in the carry)."""
        names = ("steps_done", "skipped", "consecutive_failures", "best_loss", "first_loss")
        return {name: getattr(self, name) for name in (*names, "last_loss")}

    def restore(self, carry, counters: dict) -> None:
        """Continue from a checkpoint's carry (placed as this run's is) and counters."""
        self.carry = jax.tree_util.tree_map(_strong_type, carry)
        for name, value in counters.items():
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

    def report(self) -> StageReport:
        return StageReport(
            name=self.name,
            steps=self.steps_done,
            first_loss=self.first_loss,
            final_loss=self.last_loss,
            best_loss=self.best_loss,
            skipped=self.skipped,
            compile_seconds=self.compile_seconds,
            wall_seconds=time.perf_counter() - self.started,
        )


#: JAX settings that a `with` block may set for the calling thread only (public context
#: managers of `jax`): `build_ahead` builds under the caller's values, so that the program built
#: in the background is the one the caller's thread would build.
_THREAD_SETTINGS = (
    "enable_x64",
    "default_device",
    "default_matmul_precision",
    "numpy_rank_promotion",
    "numpy_dtype_promotion",
    "debug_nans",
    "debug_infs",
    "default_prng_impl",
    "softmax_custom_jvp",
    "enable_checks",
    "threefry_partitionable",
    "log_compiles",
    "explain_cache_misses",
)


def build_ahead(executor: Executor, model, stage: Stage, prepared, key) -> Future | None:
    """Trace and compile a later stage's program in the background (on `executor`), while
    earlier stages run; pass the future to that stage's `StageRun(..., ahead=...)`.

    The program is the one the stage would compile at its first call (the same function of the
    same structures, shapes and placement, built under the calling thread's JAX settings), so
    that results are unchanged; only the wait moves. `model` only gives the parameters'
    structure and shapes (the stages before may change their values, never their shapes).
    Built by calling it on a throwaway carry for zero steps. None (nothing to build ahead)
    unless the stage fuses its steps with "auto" (one program for every count).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from neuraldiffeq.fitting.loop import StageRun, build_ahead
        >>> data = nde.datasets.spiral(n_points=10, t1=1.0)
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp))
        >>> stage = nde.Stage(nde.Trajectory(), optax.adam(0.01), steps=3)
        >>> prepared = stage.strategy.prepare(model, data)
        >>> with ThreadPoolExecutor(1) as executor:
        ...     ahead = build_ahead(executor, model, stage, prepared, jax.random.key(0))
        ...     run = StageRun(model, stage, prepared, jax.random.key(0), ahead=ahead)
        ...     [len(losses) for losses in run.calls()]
        [1, 1, 1]
    """
    if stage.steps_per_call != "auto" or jax.config.jax_disable_jit:
        return None

    def build():
        run = StageRun(model, stage, prepared, key)
        program = run._program("auto")
        jax.block_until_ready(program(run.carry, prepared, np.int32(0)))
        return program

    return executor.submit(in_callers_settings(build))


def in_callers_settings(job: Callable[..., Any]) -> Callable[..., Any]:
    """`job`, to be run on another thread under the JAX settings the calling thread has now
    (those a `with` block may set for one thread: `_THREAD_SETTINGS`), so that what it traces
    and compiles is what the calling thread would.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> from neuraldiffeq.fitting.loop import in_callers_settings
        >>> with jax.enable_x64(True):
        ...     job = in_callers_settings(lambda: jnp.asarray(1.0).dtype)
        >>> with ThreadPoolExecutor(1) as executor:
        ...     str(executor.submit(job).result())
        'float64'
    """
    settings = {name: getattr(jax.config, f"jax_{name}") for name in _THREAD_SETTINGS}

    def in_settings(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for name, value in settings.items():
                stack.enter_context(getattr(jax, name)(value))
            return job(*args, **kwargs)

    return in_settings


def make_steps(static, strategy: AbstractStrategy, optimizer, n: int | str, per_device=None):
    """A pure function running `n` optimizer steps (a `lax.scan` when n > 1). `n="auto"`:
    the count is a third argument (at most AUTO_MAX_STEPS) and the run stops after a failed step.
    `optimizer`: a `failure_policy`-wrapped optax optimizer (it skips failed steps).
    `per_device`: (reduction, batch axes, mesh) to compute the loss and gradient device by device
    (see `devices.per_device_value_and_grad`); None: one program over the whole batch.
    """

    def loss_of(params, prepared, key):
        return strategy.loss(eqx.combine(params, static), prepared, key)

    value_and_grad = jax.value_and_grad(loss_of)
    if per_device is not None:
        value_and_grad, loss_of = per_device_value_and_grad(loss_of, *per_device)

    def one_step(carry, prepared):
        params, opt_state, best_params, best_loss, key = carry
        key, step_key = jax.random.split(key)
        value, grads = value_and_grad(params, prepared, step_key)
        # a failed step's update steps back instead (see failure_policy)
        updates, opt_state = optimizer.update(
            grads,
            opt_state,
            params,
            value=value,
            grad=grads,
            value_fn=lambda p: loss_of(p, prepared, step_key),
        )
        finite = opt_state.last_finite
        improved = finite & (value < best_loss)
        best_params = _tree_where(improved, params, best_params)
        best_loss = jnp.where(improved, value.astype(best_loss.dtype), best_loss)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, best_params, best_loss, key), (value, finite)

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


def _tree_where(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def _failed_check(checked, args) -> str | None:
    """Run the checked program; the message of the equinox check that fails, if one does."""
    callbacks = logging.getLogger(JAX_CALLBACK_LOGGER)  # it logs each failed check's traceback
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
