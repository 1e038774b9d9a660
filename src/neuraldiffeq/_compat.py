"""Every use of a private internal of jax, equinox or diffrax, in one place.

neuraldiffeq uses the public APIs of the libraries under it, with the few exceptions below, which
cannot be done any other way today. Each names the upstream issue or pull request it works
around, and `tests/test_compat.py` has a test per internal that fails loudly when the internal
moves (a new release renamed it) or when the upstream fix lands (then the workaround should be
deleted). The versions these were written against are the upper bounds in `pyproject.toml`.

Nothing else in `src/` may name a private module of these libraries (`tests/test_compat.py`
greps for it).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import equinox as eqx
import jax

__all__ = [
    "JAX_CALLBACK_LOGGER",
    "checkpointed_while_loop",
    "closure_conversion_ignores_manual_sharding",
    "is_equinox_error_callback",
    "saved_states",
    "wrap_term",
]

# -- diffrax's loop state ------------------------------------------------------------------------
# The continuous adjoints (`solve/continuous_adjoint.py`) are diffrax adjoints of our own: their
# `loop` receives and returns diffrax's loop state, whose saved values are `SaveState` records
# (one per `SubSaveAt`). diffrax documents `AbstractAdjoint.loop` but not the state's types, so
# finding the saved values needs the private class. Upstream: diffrax exposes no public loop state
# (patrick-kidger/diffrax issue #209, "Tidy up adjoints", made `loop` the extension point but kept
# `State`/`SaveState` in `diffrax._integrate`).


def _save_state_type() -> type:
    from diffrax._integrate import SaveState

    return SaveState


def saved_states(save_state: Any) -> list:
    """The `SaveState` records (each with `.ts` and `.ys`) of a diffrax loop's `save_state`.

    Example:
        >>> from neuraldiffeq._compat import saved_states
        >>> saved_states(None)  # a loop state without saved values
        []
    """
    state_type = _save_state_type()
    leaves = jax.tree_util.tree_leaves(save_state, is_leaf=lambda x: isinstance(x, state_type))
    return [leaf for leaf in leaves if isinstance(leaf, state_type)]


# -- equinox's checkpointed while loop ----------------------------------------------------------
# `solve/batched.py` steps a whole batch of adaptive solves in one loop; to differentiate through
# it as diffrax does (`RecursiveCheckpointAdjoint`: O(log steps) memory, treeverse re-runs), it
# uses the loop diffrax itself uses, which equinox keeps in `equinox.internal` (private: no
# stability promise). Upstream: diffrax's own loops call `eqxi.while_loop(kind="checkpointed")`
# (diffrax `_adjoint.py`, `RecursiveCheckpointAdjoint.loop`); equinox does not export it publicly.


def checkpointed_while_loop(cond_fun, body_fun, init_val, *, max_steps: int, checkpoints):
    """`lax.while_loop` with at most `max_steps` steps, reverse-differentiable with `checkpoints`
    saved states (`None`: O(log max_steps)), as diffrax's `RecursiveCheckpointAdjoint` loop.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq._compat import checkpointed_while_loop
        >>> step = lambda a: lambda c: (c[0] + 1, c[1] * a)
        >>> f = lambda a: checkpointed_while_loop(lambda c: c[0] < 3, step(a), (0, 1.0),
        ...                                       max_steps=8, checkpoints=None)[1]
        >>> float(jax.grad(f)(2.0))  # d/da a^3 = 3 a^2
        12.0
    """
    import equinox.internal as eqxi

    return eqxi.while_loop(
        cond_fun,
        body_fun,
        init_val,
        max_steps=max_steps,
        kind="checkpointed",
        checkpoints=checkpoints,
    )


def wrap_term(term: Any, direction: Any) -> Any:
    """The term as `diffrax.diffeqsolve` hands it to the solver and the step-size controller.

    `diffeqsolve` wraps every term in its private `WrapTerm` (time reversal by `direction`). The
    wrapper changes no number for a forward solve, but the controller's choice of the first step
    depends on it (diffrax's `_select_initial_step` estimates a first step only for a bare
    `ODETerm`, else starts from 0.01), so a loop that must take diffrax's steps uses it too.

    Example:
        >>> import diffrax, jax.numpy as jnp
        >>> from neuraldiffeq._compat import wrap_term
        >>> term = wrap_term(diffrax.ODETerm(lambda t, y, a: -y), jnp.array(1))
        >>> float(term.vf(0.0, jnp.array(2.0), None))
        -2.0
    """
    from diffrax._term import WrapTerm

    return WrapTerm(term, direction)


# -- equinox's error callbacks -------------------------------------------------------------------
# `eqx.error_if` raises through a host callback (`jax.pure_callback`). JAX never stores a program
# holding a host callback in its persistent compilation cache (the callback's address is part of
# the program; jax-ml/jax pull request #21819 documents this pitfall), so
# `compilation.cacheable` replaces equinox's callbacks by what `EQX_ON_ERROR=nan` would give. Which
# callbacks are equinox's is learnt here, without naming equinox's private module: by tracing a
# known `eqx.error_if` and keeping the code objects of the callbacks it holds. What is internal is
# the attribute of JAX's callback parameter that holds the Python function (`callback_func`).


@functools.cache
def _equinox_error_codes() -> frozenset:
    closed = jax.make_jaxpr(lambda x: eqx.error_if(x, x < 0, "probe"))(1.0)
    codes = set()

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pure_callback":
                codes.add(_callback_code(eqn))
            for value in eqn.params.values():
                for item in value if isinstance(value, tuple | list) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(closed.jaxpr)
    codes.discard(None)
    if not codes:
        raise RuntimeError(
            "eqx.error_if holds no recognisable host callback in this equinox/jax version: "
            "neuraldiffeq._compat needs updating."
        )
    return frozenset(codes)


def _callback_code(eqn) -> Any:
    function = getattr(eqn.params.get("callback"), "callback_func", None)
    return getattr(function, "__code__", None)


def is_equinox_error_callback(eqn) -> bool:
    """Whether a jaxpr equation is one of equinox's error callbacks (`eqx.error_if`'s raise).

    Example:
        >>> import equinox as eqx, jax
        >>> from neuraldiffeq._compat import is_equinox_error_callback
        >>> closed = jax.make_jaxpr(lambda x: jax.pure_callback(abs, x, x))(1.0)
        >>> is_equinox_error_callback(closed.jaxpr.eqns[0])  # a callback, not equinox's
        False
    """
    if eqn.primitive.name != "pure_callback":
        return False
    return _callback_code(eqn) in _equinox_error_codes()


# -- JAX's callback logger -----------------------------------------------------------------------
# A failed `eqx.error_if` inside a compiled call is logged with its whole traceback by JAX's
# callback module before it is raised; `fit` replays a failed call to learn the check's message
# and silences that logger meanwhile. The logger is named after JAX's private module.
JAX_CALLBACK_LOGGER = "jax._src.callback"


# -- equinox's closure conversion inside shard_map ------------------------------------------------
# equinox compares the shapes, dtypes *and shardings* of a closure-converted function's arguments
# with those it was converted with. Inside `shard_map`, an array computed in the body carries the
# manual mesh while a constant does not, so the backward pass of diffrax's checkpointed step loop
# (`sensitivity=nde.Direct()`) fails with "Closure-converted function called with different
# dynamic arguments" (patrick-kidger/diffrax issue #765). equinox pull request #1261 (open) fixes
# it in equinox the same way: arguments that differ only in that sharding are accepted.
#
# This is the one run-time replacement of a dependency's function left in neuraldiffeq: no public
# option or way of calling reaches that check (with `check_vma=True` diffrax's loops are refused
# instead; constants made by diffrax itself inside the loop cannot be given the manual mesh). It
# is in place only while `fitting.devices` traces a sharded step, and only calls that equinox's
# own check refuses are re-checked, on shapes, dtypes and static parts alone.


@contextlib.contextmanager
def closure_conversion_ignores_manual_sharding():
    """While active, equinox's closure-converted functions accept arguments that differ from
    their example arguments only in sharding (see the comment above this function)."""
    from equinox import _ad

    original = _ad._check_closure_convert_input

    def check(self, args, kwargs):
        try:
            return original(self, args, kwargs)
        except ValueError:
            expected = _ad._unflatten(self.in_dynamic_struct)
            dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
            if not _same_shapes(jax.eval_shape(lambda: dynamic), expected):
                raise
            if _ad.tree_equal(static, _ad._unflatten(self.in_static)) is not True:
                raise
            return dynamic

    _ad._check_closure_convert_input = check  # the run-time patch (see above)
    try:
        yield
    finally:
        _ad._check_closure_convert_input = original


def _same_shapes(a, b) -> bool:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    return tree_a == tree_b and all(
        x.shape == y.shape and x.dtype == y.dtype for x, y in zip(leaves_a, leaves_b, strict=True)
    )
