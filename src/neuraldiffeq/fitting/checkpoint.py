"""Resumable fits: `fit(..., checkpoint_dir=..., checkpoint_every=N, resume=True)`.

A checkpoint holds everything `fit` needs to continue exactly where it stopped: the stage being
run, its step count and counters, the compiled loop's carry (parameters, optimizer state, best
parameters and loss, the PRNG key, the last parameters that solved), and the losses, times and
stage reports so far. The arrays are written by `orbax-checkpoint` (the JAX ecosystem's checkpoint
library: it writes into a temporary folder and renames it when complete, and in a multi-host run
every process takes part while replicated arrays are written by process 0 only); the rest is a
JSON item of the same checkpoint.

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
import warnings
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpoints", "Saved", "fingerprint"]

#: checkpoints kept in the folder: the newest, and older ones to fall back to if it is damaged.
KEEP = 3
_FORMAT = 1


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


def fingerprint(model: Any, stages: list, key: jax.Array) -> dict:
    """What must not change between a fit and its resumption (JSON-serialisable)."""
    from .diagnostics import describe_optimizer

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

    def __init__(self, directory: str | os.PathLike, every: int | None, resume: bool, print_):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.fingerprint = print_
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
            "fingerprint": self.fingerprint,
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
                self._check_fingerprint(meta)
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

    def _check_fingerprint(self, meta: dict) -> None:
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise _Damaged("no fit metadata")
        saved, now = meta["fingerprint"], self.fingerprint
        if saved == now:
            return
        for what in ("format", "model", "key"):
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
