"""Compiled training steps that JAX's persistent compilation cache can store.

Why: JAX never reuses a cached program that calls back into Python, because the callback's
address is part of the program (and so of its cache key) and changes from process to process.
The training step of a neural ODE holds such callbacks although `fit` never needs them: diffrax
checks `SaveAt(ts=...)` (increasing, inside [t0, t1]) with `equinox.error_if`, whose failure path
is a host callback that raises. `fit` validates its data before compiling (`TimeSeries` refuses
times that do not increase), so in the step these checks can only ever pass.

`cacheable_jit(f)` traces `f` once, replaces each equinox error callback by what
`EQX_ON_ERROR=nan` would give (NaN-like values: the step's loss turns non-finite, so the step is
skipped and counted like a failed solve) and compiles the result; nothing else changes. The
original, checked `f` stays available as `.checked`, so that `fit` can replay a failed call with
the checks on and raise their message.

With `export=True` and JAX's compilation cache on, a step made only of neuraldiffeq's and its
pinned dependencies' code is also exported (`jax.export`) to a file next to that cache, and a
later process calling the same step reads the program back instead of tracing it
(`compilation.exported`). A step holding any user code is traced in every process; JAX's
compilation cache still serves its compile.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from .._compat import is_equinox_error_callback
from . import exported as _exported

logger = logging.getLogger(__name__)


def _nan_like(outvar) -> tuple[list, Any]:
    """What `EQX_ON_ERROR=nan` gives for `outvar`: NaN (floats), the largest integer, or True
    (bools); as (equations that compute it, the variable or literal holding it)."""
    aval = outvar.aval
    dtype = np.dtype(aval.dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        fill = np.nan
    elif jnp.issubdtype(dtype, jnp.integer):
        fill = np.iinfo(dtype).max
    else:
        fill = True
    closed = jax.make_jaxpr(lambda: jnp.full(aval.shape, fill, dtype))()
    inner = closed.jaxpr
    if closed.consts or len(inner.outvars) != 1:
        raise NotImplementedError
    result = inner.outvars[0]
    if isinstance(result, jcore.Literal):  # a scalar: used in place, no equation
        return [], result
    eqns = [
        eqn.replace(outvars=[outvar if v is result else v for v in eqn.outvars])
        for eqn in inner.eqns
    ]
    return eqns, outvar


def _strip_jaxpr(jaxpr) -> tuple[Any, int]:
    """`jaxpr` with every equinox error callback replaced; and how many were replaced."""
    eqns, count, subst = [], 0, {}

    def sub(v):
        return v if isinstance(v, jcore.Literal) else subst.get(v, v)

    for eqn in jaxpr.eqns:
        if is_equinox_error_callback(eqn):
            for outvar in eqn.outvars:
                new_eqns, value = _nan_like(outvar)
                eqns.extend(new_eqns)
                if value is not outvar:
                    subst[outvar] = value
            count += 1
            continue
        params, changed = {}, False
        for name, value in eqn.params.items():
            new, n = _strip_param(value)
            params[name] = new
            changed |= n > 0
            count += n
        invars = [sub(v) for v in eqn.invars]
        if changed or subst:
            eqn = eqn.replace(params=params, invars=invars)
        eqns.append(eqn)
    if count == 0:
        return jaxpr, 0
    outvars = [sub(v) for v in jaxpr.outvars]
    return jaxpr.replace(eqns=eqns, outvars=outvars), count


def _strip_param(value) -> tuple[Any, int]:
    if isinstance(value, jcore.ClosedJaxpr):
        inner, n = _strip_jaxpr(value.jaxpr)
        return (jcore.ClosedJaxpr(inner, value.consts) if n else value), n
    if isinstance(value, jcore.Jaxpr):
        return _strip_jaxpr(value)
    if isinstance(value, tuple | list) and any(
        isinstance(v, jcore.ClosedJaxpr | jcore.Jaxpr) for v in value
    ):
        stripped = [_strip_param(v) for v in value]
        items = [v for v, _ in stripped]
        # a NamedTuple (e.g. custom_linear_solve's `jaxprs`, in every implicit solver's Newton
        # step) is built from positional fields, a tuple or list from one iterable
        rebuilt = type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        return rebuilt, sum(n for _, n in stripped)
    return value, 0


def error_callbacks(closed: jcore.ClosedJaxpr) -> int:
    """How many equinox error callbacks `closed` holds (nested programs included)."""
    return _strip_jaxpr(closed.jaxpr)[1]


def _out_trees(args) -> dict:
    """The output structures an exported program may have: (first argument, array), array."""
    return {
        "carry": jax.tree_util.tree_structure((args[0], 0)),
        "array": jax.tree_util.tree_structure(0),
    }


def _committed(leaves: list) -> list:
    """`leaves` with every uncommitted array committed to the device it is on.

    Why: an exported program's outputs come back committed to their device, while a fresh
    model's arrays are not; `jax.jit` compiles a program once per kind of placement, so a
    training step fed its own output would compile a second time at its second call. Committing
    the first call's arrays (where they already are: nothing moves) gives every call one placement.
    """
    return [
        jax.device_put(x, x.sharding)
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed
        else x
        for x in leaves
    ]


class cacheable_jit:
    """`jax.jit(f, **jit_kwargs)` without equinox's error callbacks (see the module docstring).

    `f` takes and returns pytrees of arrays. Its program is traced once per input structure and
    shapes. `.checked` is the plain `jax.jit(f, **jit_kwargs)`.

    `export=True` (single-device programs only): with JAX's compilation cache on, programs
    made only of trusted code (neuraldiffeq and its pinned dependencies; see
    `compilation.exported`) whose output is the first argument's structure plus one array (a
    training step: carry in, carry and losses out), or one array, are kept on disk and read
    back by later processes without tracing. A program holding user code is traced every time.
    `.traces` counts the traces of `f`; `.source` says where the last call's program came from
    ("traced" or "exported").

    Example:
        >>> import equinox as eqx, jax.numpy as jnp
        >>> from neuraldiffeq.compilation.cacheable import cacheable_jit
        >>> f = cacheable_jit(lambda x: eqx.error_if(x, x < 0, "negative") + 1)
        >>> f(jnp.array(1.0)).item(), bool(jnp.isnan(f(jnp.array(-1.0))))
        (2.0, True)
    """

    def __init__(self, f, export: bool = False, **jit_kwargs):
        self.f, self.jit_kwargs, self.export = f, jit_kwargs, export
        self.checked = jax.jit(f, **jit_kwargs)
        self._programs: dict[Any, Any] = {}
        self.stripped = 0  # error callbacks removed from the program of the last call
        self.traces = 0  # how many times `f` was traced (not counting `.checked`)
        self.source: str | None = None  # "traced" or "exported" (read from disk): last program

    def _key(self, leaves, treedef):
        return treedef, tuple(
            (np.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves
        )

    def __call__(self, *args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        key = self._key(leaves, treedef)
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = self._program(args, leaves, treedef)
        flat, out_tree, self.stripped, self.source, commit = program
        if commit:
            leaves = _committed(leaves)
        return jax.tree_util.tree_unflatten(out_tree, flat(*leaves))

    def _program(self, args, leaves, treedef):
        entry = path = None
        if self.export and (folder := _exported.directory()) is not None:
            try:
                digest = _exported.key_of(self.f, treedef, leaves, self.jit_kwargs)
                path = folder / f"{digest}.step"
            except _exported.Unkeyable as reason:  # user code: traced, nothing kept
                logger.info("not exporting %s: it holds %s", self._name(), reason)
            except Exception as error:  # noqa: BLE001 — a fault of the key itself: say so, trace
                logger.warning(
                    "not exporting %s: computing its key failed: %r", self._name(), error
                )
            if path is not None:
                avals = [jax.typeof(x) for x in leaves]
                entry = _exported.load(path, digest, avals)
        if entry is not None:  # read back: no tracing
            exported, header = entry
            out_tree = _out_trees(args)[header.get("out", "carry")]
            flat = jax.jit(self._named(exported.call), **self.jit_kwargs)
            return flat, out_tree, header["stripped"], "exported", True
        self.traces += 1
        closed, out_shape = jax.make_jaxpr(self.f, return_shape=True)(*args)
        try:
            jaxpr, stripped = _strip_jaxpr(closed.jaxpr)
        except NotImplementedError:  # an unusual output type: keep the checks
            jaxpr, stripped = closed.jaxpr, 0
        closed = jcore.ClosedJaxpr(jaxpr, closed.consts)
        out_tree = jax.tree_util.tree_structure(out_shape)
        fun = jcore.jaxpr_as_fun(closed)

        program = self._named(fun)
        flat, commit = jax.jit(program, **self.jit_kwargs), False
        # kept on disk only when the next process can rebuild the output structure alone: the
        # first argument's (a training step's carry) and one array, or one array
        kinds = [kind for kind, tree in _out_trees(args).items() if tree == out_tree]
        if path is not None and kinds:
            try:
                exported = jax.export.export(jax.jit(program))(*leaves)
                avals = [jax.typeof(x) for x in leaves]
                extra = {"stripped": stripped, "out": kinds[0]}
                if _exported.save(path, digest, exported, extra):
                    entry = _exported.load(path, digest, avals)
                if entry is not None:
                    # the process that exports runs the program as read back, as the next
                    # process will: both compile the same module (one compilation-cache entry,
                    # the same numbers)
                    exported = entry[0]
                    flat = jax.jit(self._named(exported.call), **self.jit_kwargs)
                    commit = True
            except Exception as error:  # noqa: BLE001 — e.g. a host callback: not exportable
                logger.info("not exporting %s: %s", self._name(), error)
        elif path is not None:
            logger.info(
                "not exporting %s: its output is not (carry, array) or an array", self._name()
            )
        return flat, out_tree, stripped, "traced", commit

    def _name(self) -> str:
        return getattr(self.f, "__name__", "step")

    def _named(self, fun):
        def program(*leaves):
            return fun(*leaves)

        # the compiled module's name (jit_<name>), as in cache logs and profiles
        program.__name__ = program.__qualname__ = self._name()
        return program
