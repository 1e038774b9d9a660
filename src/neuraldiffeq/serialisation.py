"""Saving and loading models: equinox leaf serialisation plus the structure to rebuild them.

A file holds a short header, the model's structure with every array replaced by its shape and
dtype (pickled with cloudpickle, so lambdas such as `input_fn=lambda y: y**3` survive), and the
arrays themselves written by `eqx.tree_serialise_leaves`. Files are written to a temporary file
in the same folder and renamed into place, so an interrupted save never leaves a half-written
model. Loading unpickles the structure: only load files you trust, or pass `like=` (a model of the
same structure) to read the arrays alone.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import cloudpickle
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_MAGIC = b"NEURALDIFFEQ-MODEL-1\n"


class _ArraySpec:
    """Stand-in for an array in the pickled structure."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype).str


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def save(path: str | os.PathLike, model: Any) -> None:
    """Write `model` (any equinox module / pytree) to `path` atomically.

    Example:
        >>> import tempfile, os, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.eqx")
        >>> nde.save(path, model); type(nde.load(path)).__name__
        'NeuralODE'
    """
    path = os.fspath(path)
    skeleton = jax.tree_util.tree_map(
        lambda x: _ArraySpec(x.shape, x.dtype) if _is_array(x) else x, model
    )
    try:
        structure = cloudpickle.dumps(skeleton)
    except Exception as e:  # noqa: BLE001 - cloudpickle raises many types
        raise ValueError(f"model cannot be saved: part of it cannot be pickled ({e}).") from None
    leaves = io.BytesIO()
    eqx.tree_serialise_leaves(leaves, model)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not exist.")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".eqx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(len(structure).to_bytes(8, "little"))
            f.write(structure)
            f.write(leaves.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str | os.PathLike, like: Any = None) -> Any:
    """Read a model written by `save`. With `like=`, only its arrays are read into `like`'s shape.

    Example: see `save`.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ValueError(f"cannot read model file {path!r}: {e}") from None
    if not blob.startswith(_MAGIC):
        raise ValueError(f"{path!r} is not a neuraldiffeq model file (wrong header).")
    offset = len(_MAGIC)
    size = int.from_bytes(blob[offset : offset + 8], "little")
    structure = blob[offset + 8 : offset + 8 + size]
    leaves = blob[offset + 8 + size :]
    if like is None:
        try:
            skeleton = cloudpickle.loads(structure)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path!r} is damaged or from an incompatible version: {e}") from None
        like = jax.tree_util.tree_map(
            lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, _ArraySpec) else x,
            skeleton,
            is_leaf=lambda x: isinstance(x, _ArraySpec),
        )
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(leaves), like)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path!r} does not match the model structure (or is truncated): {e}"
        ) from None
