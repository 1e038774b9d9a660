"""Resumable fits: `fit(..., checkpoint_dir=..., checkpoint_every=N, resume=True)`.

A checkpoint holds everything `fit` needs to continue exactly where it stopped: the stage being
run, its step count and counters, the compiled loop's carry (parameters, optimizer state, best
parameters and loss, the PRNG key, the last parameters that solved), and the losses, times and
stage reports so far. The arrays are written by `orbax-checkpoint` (the JAX ecosystem's checkpoint
library: it writes into a temporary folder and renames it when complete, and in a multi-host run
every process takes part while replicated arrays are written by process 0 only); the rest is a
JSON item of the same checkpoint.

`CheckpointHook` is what `fit` calls: it opens the folder, restores the newest checkpoint into
the fit's record on resume, and writes one every `checkpoint_every` steps and at each stage end.

Each checkpoint also records a SHA-256 digest of its arrays and metadata. On `resume=True` the
newest checkpoint whose digest matches is loaded; one that is incomplete, unreadable or damaged is
skipped with a warning (and deleted, so that the fit can write that step again), never loaded.
A checkpoint from another fit (other model structure, strategies, optimizer, steps or key) is
refused with a `ValueError`: continuing it would silently train something else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from typing import Any

import jax
import numpy as np

from .diagnostics import describe_optimizer
from .hooks import FitHook
from .results import StageReport

__all__ = ["CheckpointHook", "Checkpoints", "Saved", "fit_identity"]

#: checkpoints kept in the folder: the newest, and older ones to fall back to if it is damaged.
KEEP = 3
#: 2: the carry holds the failure policy's state (`failure_policy.FailurePolicyState`)
_FORMAT = 2


@dataclasses.dataclass
class Saved:
    """One verified checkpoint: where the fit stood, and the carry's arrays (NumPy, host)."""

    step: int  # global step (all stages) at which it was written
    stage: int  # index of the stage being run
    counters: dict  # the stage run's counters (steps_done, skipped, best_loss, ...)
    losses: np.ndarray
    times: np.ndarray
    reports: list[dict]  # StageReport fields of the stages already finished
    elapsed: float  # seconds since the start of the fit when it was written
    carry: dict  # "paths", "leaves" (shape/dtype descriptor of the carry)
    leaves: list[np.ndarray]


def fit_identity(model: Any, stages: list, key: jax.Array) -> dict:
    """What identifies a fit: what must not change between a fit and its resumption
    (JSON-serialisable; the model's type, each stage's settings, the key).

    Example:
        >>> import jax, optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.checkpoint import fit_identity
        >>> stages = [nde.Stage(nde.Trajectory(), optax.adam(0.05), 10)]
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> fit_identity(model, stages, jax.random.key(0))["stages"][0]["optimizer"]
        'Adam(lr=0.05)'
    """

    def simple_fields(strategy) -> dict:
        out = {}
        for f in dataclasses.fields(strategy):
            value = getattr(strategy, f.name, None)
            if value is None or isinstance(value, bool | int | float | str):
                out[f.name] = value
        return out

    return {
        "format": _FORMAT,
        "model": type(model).__name__,
        "stages": [
            {
                "strategy": type(s.strategy).__name__,
                "settings": simple_fields(s.strategy),
                "optimizer": describe_optimizer(s.optimizer),
                "steps": int(s.steps),
                "steps_per_call": s.steps_per_call
                if isinstance(s.steps_per_call, int)
                else str(s.steps_per_call),
            }
            for s in stages
        ],
        "key": np.asarray(_key_data(key)).tolist(),
    }


def describe_carry(carry: Any) -> dict:
    """Paths, shapes and dtypes of the carry's leaves (the model and optimizer state)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(carry)
    return {
        "paths": [jax.tree_util.keystr(path) for path, _ in flat],
        "leaves": [[list(np.shape(x)), _dtype_name(x)] for _, x in flat],
    }


class Checkpoints:
    """The checkpoint folder of one fit: an `orbax.checkpoint.CheckpointManager` and its rules.

    Example:
        >>> import tempfile, equinox as eqx, jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> data = nde.datasets.spiral(n_points=10, t1=1.0)
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp))
        >>> folder = tempfile.mkdtemp()
        >>> first = nde.fit(model, data, nde.Trajectory(), steps=4, progress=False,
        ...                 checkpoint_dir=folder, checkpoint_every=2)
        >>> again = nde.fit(model, data, nde.Trajectory(), steps=4, progress=False,
        ...                 checkpoint_dir=folder, resume=True)  # finished: nothing left to run
        >>> bool((again.losses == first.losses).all())
        True
    """

    def __init__(self, directory: str | os.PathLike, every: int | None, resume: bool, identity):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.identity = identity  # fit_identity(...) of the fit writing or resuming
        self.manager = ocp.CheckpointManager(
            self.directory,
            # cleanup: the temporary folder of a save that was killed is removed, so that the
            # resumed fit can write that step again
            options=ocp.CheckpointManagerOptions(
                max_to_keep=KEEP, create=True, cleanup_tmp_directories=True
            ),
        )
        self.last_saved = -1
        if not resume and self.manager.all_steps():
            raise ValueError(
                f"checkpoint_dir {self.directory!r} already holds checkpoints (steps "
                f"{sorted(self.manager.all_steps())}). Pass resume=True to continue that fit, or "
                "give an empty or new folder."
            )

    # -- saving -------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether a call that ended at global `step` should write a checkpoint."""
        return self.every is not None and step // self.every > max(self.last_saved, 0) // (
            self.every
        )

    def save(self, step, stage, counters, carry, losses, times, reports, elapsed) -> None:
        """Write a checkpoint at global `step` (all processes call this; orbax coordinates)."""
        if step <= self.last_saved:
            return
        leaves = [_key_data(x) if _is_key(x) else x for x in jax.tree_util.tree_leaves(carry)]
        meta = {
            "fingerprint": self.identity,  # the name on disk since format 1
            "step": int(step),
            "stage": int(stage),
            "counters": counters,
            "losses": np.concatenate(losses).tolist() if losses else [],
            "loss_dtype": str(np.concatenate(losses).dtype) if losses else "float32",
            "times": np.concatenate(times).tolist() if times else [],
            "reports": [dataclasses.asdict(r) for r in reports],
            "elapsed": float(elapsed),
            "carry": describe_carry(carry),
        }
        meta["digest"] = _digest([_local_numpy(x) for x in leaves], meta)
        ocp = self._ocp
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_named(leaves)),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self.last_saved = int(step)

    def close(self) -> None:
        """Wait for the last (asynchronous) save to be complete on disk."""
        self.manager.wait_until_finished()
        self.manager.close()

    # -- resuming -----------------------------------------------------------------------------

    def newest(self) -> Saved | None:
        """The newest complete, intact checkpoint of this fit; damaged ones are skipped."""
        ocp = self._ocp
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )["meta"]
                self._check_identity(meta)
                n = len(meta["carry"]["leaves"])
                restore_args = {
                    name: ocp.RestoreArgs(restore_type=np.ndarray) for name in _names(n)
                }
                state = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(restore_args=restore_args)
                    ),
                )["state"]
                leaves = [np.asarray(state[name]) for name in _names(n)]
                expected = meta.pop("digest")
                if _digest(leaves, meta) != expected:
                    raise _Damaged("its arrays or metadata do not match the digest written")
            except ValueError:
                raise  # another fit's checkpoint: refused, not skipped
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory!r} is incomplete or damaged "
                    f"and was skipped ({type(e).__name__}: {e}); deleting it.",
                    stacklevel=3,
                )
                self.manager.delete(step)
                continue
            self.last_saved = int(step)
            dtype = np.dtype(meta["loss_dtype"])
            return Saved(
                step=int(step),
                stage=int(meta["stage"]),
                counters=meta["counters"],
                losses=np.asarray(meta["losses"], dtype=dtype),
                times=np.asarray(meta["times"], dtype=np.float64),
                reports=meta["reports"],
                elapsed=float(meta["elapsed"]),
                carry=meta["carry"],
                leaves=leaves,
            )
        return None

    def _check_identity(self, meta: dict) -> None:
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise _Damaged("no fit metadata")
        saved, now = meta["fingerprint"], self.identity
        if saved == now:
            return
        if saved.get("format") != now["format"]:
            raise ValueError(
                f"checkpoint_dir {self.directory!r} holds a checkpoint written by another "
                f"version of neuraldiffeq (checkpoint format {saved.get('format')!r}, this "
                f"version reads format {now['format']!r}); finish that fit with the version "
                "that started it, or start afresh in another checkpoint_dir."
            )
        for what in ("model", "key"):
            if saved.get(what) != now[what]:
                raise ValueError(
                    f"checkpoint_dir {self.directory!r} holds a fit with another {what} "
                    f"({saved.get(what)!r}, this fit: {now[what]!r}); resume it with the same "
                    "model, data, strategy and key, or use another checkpoint_dir."
                )
        raise ValueError(
            f"checkpoint_dir {self.directory!r} holds a fit with other stages "
            f"({saved.get('stages')!r}; this fit: {now['stages']!r}); resume it with the same "
            "strategy, optimizer and steps, or use another checkpoint_dir."
        )


def restore_carry(saved: Saved, like: Any, directory: str, place=None) -> Any:
    """The saved carry, with the structure (and PRNG key types) of `like`; refuses a mismatch.

    `place` puts the restored host arrays on their devices (`jax.device_put` with the carry's
    sharding in a data-parallel fit; `jnp.asarray` by default); PRNG keys are re-wrapped after.
    """
    described = describe_carry(like)
    if described != saved.carry:
        diff = next(
            (
                f"{p}: saved {s}, this fit {n}"
                for p, s, n in zip(
                    described["paths"], saved.carry["leaves"], described["leaves"], strict=False
                )
                if s != n
            ),
            f"{len(saved.carry['leaves'])} arrays saved, {len(described['leaves'])} in this fit",
        )
        if described["paths"] != saved.carry["paths"] and "saved" not in diff:
            diff = "the parameters and optimizer state have another structure"
        raise ValueError(
            f"checkpoint_dir {directory!r} holds a fit of another model structure ({diff}); "
            "resume it with the same model and optimizer, or use another checkpoint_dir."
        )
    flat, treedef = jax.tree_util.tree_flatten(like)
    host = [
        np.asarray(value, dtype=(jax.random.key_data(x) if _is_key(x) else x).dtype)
        for x, value in zip(flat, saved.leaves, strict=True)
    ]
    placed = (place or (lambda t: [jax.numpy.asarray(v) for v in t]))(host)
    leaves = [
        jax.random.wrap_key_data(value, impl=jax.random.key_impl(x)) if _is_key(x) else value
        for x, value in zip(flat, placed, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


class CheckpointHook(FitHook):
    """`fit`'s checkpoints: the folder opened at the start (refused if it already holds
    checkpoints and `resume` is False), the newest intact checkpoint restored into the fit's
    record and its stage's run on resume, one written after the call that completes each
    multiple of `every` steps and at the end of each finished stage.

    Example:
        >>> import tempfile, jax, optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.checkpoint import CheckpointHook
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> stages = [nde.Stage(nde.Trajectory(), optax.adam(0.05), 10)]
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> hook = CheckpointHook(tempfile.mkdtemp(), 5, True, model, stages, jax.random.key(0))
        >>> log = FitLog()
        >>> hook.on_start(log)  # an empty folder: nothing to resume
        >>> log.first_stage, hook.saved
        (0, None)
        >>> hook.on_end(log, None)
    """

    def __init__(self, directory, every, resume, model, stages, key):
        if every is not None and not (
            isinstance(every, int | np.integer) and not isinstance(every, bool) and every > 0
        ):
            raise ValueError(f"checkpoint_every must be a positive integer, got {every!r}.")
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}.")
        self.resume = resume
        self.checkpoints = Checkpoints(directory, every, resume, fit_identity(model, stages, key))
        self.saved: Saved | None = None

    @classmethod
    def of(cls, directory, every, resume, model, stages, key) -> CheckpointHook | None:
        """The hook for `fit`'s checkpoint arguments; None without a `checkpoint_dir`."""
        if directory is None:
            if every is not None or resume:
                raise ValueError(
                    "checkpoint_every= and resume=True need checkpoint_dir= (the folder that "
                    "holds the checkpoints)."
                )
            return None
        return cls(directory, every, resume, model, stages, key)

    def on_start(self, log):
        self.saved = self.checkpoints.newest() if self.resume else None
        if self.saved is not None:  # continue the fit where its newest intact checkpoint left it
            saved = self.saved
            log.losses, log.times = [saved.losses], [saved.times]
            log.reports = [StageReport(**r) for r in saved.reports]
            log.step_offset = saved.step - saved.counters["steps_done"]
            log.first_stage = saved.stage
            log.start -= saved.elapsed

    def on_stage_start(self, log, run):
        if self.checkpoints.every is not None:  # "auto" calls end on checkpoint steps
            run.call_boundary = (log.step_offset, self.checkpoints.every)
        if self.saved is not None and run.index == self.saved.stage:
            place = None  # host arrays straight to every device (multi-host too) when sharded
            if run.out_shardings is not None:
                place = lambda host: jax.device_put(host, run.out_shardings)  # noqa: E731
            carry = restore_carry(self.saved, run.carry, self.checkpoints.directory, place)
            run.restore(carry, self.saved.counters)

    def on_step(self, log, run, losses):
        if self.checkpoints.due(log.step_offset + run.steps_done):
            self._save(log, run)

    def on_stage_end(self, log, run):
        if run.steps_done == run.stage.steps:  # a finished stage
            self._save(log, run)

    def on_end(self, log, result):
        self.checkpoints.close()

    def _save(self, log, run) -> None:
        self.checkpoints.save(
            log.step_offset + run.steps_done,
            run.index,
            run.counters(),
            run.carry,
            log.losses,
            log.times,
            log.reports,
            time.perf_counter() - log.start,
        )


class _Damaged(Exception):
    pass


def _names(n: int) -> list[str]:
    return [f"leaf_{i:05d}" for i in range(n)]


def _named(leaves: list) -> dict:
    return dict(zip(_names(len(leaves)), leaves, strict=True))


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _dtype_name(x) -> str:
    return str(x.dtype) if hasattr(x, "dtype") else type(x).__name__


def _local_numpy(x) -> np.ndarray:
    # The carry is replicated: any process's first shard is the whole array (multi-host too).
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def _digest(leaves: list[np.ndarray], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for x in leaves:
        x = np.ascontiguousarray(x)
        h.update(f"{x.shape}{x.dtype}".encode())
        h.update(x.tobytes())
    return h.hexdigest()
