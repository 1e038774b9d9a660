"""Input checks shared by the public constructors: clear `ValueError`s at the boundary."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds actual values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def as_array(x, dtype=None) -> jax.Array:
    """`jnp.asarray(x, dtype)` that compiles nothing for host data (NumPy arrays, lists).

    Why: `jnp.asarray` of a NumPy array runs a one-operation program (`stage`, and
    `convert_element_type` for a cast) that is compiled for every new shape; a first fit or
    solve called on fresh data paid for a dozen of them. Host data are cast in NumPy
    (to JAX's dtype for it: float32 unless float64 is on) and copied to the device instead. JAX
    arrays and tracers go through `jnp.asarray` as before.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq._checks import as_array
        >>> x = as_array(np.linspace(0.0, 1.0, 3))
        >>> x.dtype, x.tolist()
        (dtype('float32'), [0.0, 0.5, 1.0])
    """
    if isinstance(x, jax.Array) or not isinstance(x, np.ndarray | list | tuple | np.generic):
        return jnp.asarray(x, dtype)  # device arrays, tracers, Python scalars (weakly typed)
    host = np.asarray(x, dtype)
    return jax.device_put(host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False))


def check_positive(value, name: str) -> None:
    if not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def check_times(ts, name: str = "ts") -> jax.Array:
    """A 1-D array of at least two strictly increasing finite times (checked when concrete)."""
    if is_concrete(ts):
        arr = np.asarray(ts)
        if arr.ndim != 1 or arr.shape[0] < 2:
            raise ValueError(
                f"{name} must be a 1-D array of at least 2 times, got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values.")
        if not np.all(np.diff(arr) > 0):
            raise ValueError(f"{name} must be strictly increasing (sort it; drop repeated times).")
    ts = as_array(ts)
    if not jnp.issubdtype(ts.dtype, jnp.inexact):
        ts = ts.astype(jnp.result_type(float))
    return ts


def count_params(tree) -> int:
    """Number of trainable (floating-point array) entries in a pytree."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return int(sum(leaf.size for leaf in leaves))


def strong_floats(tree):
    """Floating arrays (and Python floats) as strongly typed arrays.

    Weakly typed scalars (e.g. a Python float traced by `jax.grad`) are not seen as
    differentiable by `eqx.filter_custom_vjp`, which would silently give a zero gradient.
    """

    def strong(x):
        if isinstance(x, float) or (eqx.is_inexact_array(x)):
            x = jnp.asarray(x)
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree_util.tree_map(strong, tree)


def as_state(y0, name: str = "y0", vector: bool = False) -> jax.Array:
    """An initial state as a strongly typed floating array (`vector`: shape (D,) required)."""
    y0 = as_array(y0)
    if vector and y0.ndim != 1:
        raise ValueError(f"{name} must be a state vector of shape (D,), got shape {y0.shape}.")
    if not jnp.issubdtype(y0.dtype, jnp.inexact):
        y0 = y0.astype(jnp.result_type(float))
    return strong_floats(y0)


# -- shared by the fitting strategies ------------------------------------------------------------


def solve_inputs(ts, y0, args=None, *, vector: bool = False):
    """The checked inputs of a solve from `y0` over `ts`: `(ts, y0, args)`, `ts` in the state's
    dtype, `y0` as `as_state` gives it, and the floats in `args` strongly typed (weakly typed
    ones would be invisible to the adjoints' custom_vjp: a zero gradient)."""
    ts = check_times(ts, "ts")
    y0 = as_state(y0, vector=vector)
    return ts.astype(y0.dtype), y0, strong_floats(args)


def check_batch_size(value, name: str = "batch_size") -> int | None:
    """None or a positive integer: the one rule (and message) for every strategy's `batch_size`.

    Example:
        >>> from neuraldiffeq._checks import check_batch_size
        >>> check_batch_size(8), check_batch_size(None)
        (8, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, int | np.integer) and value >= 1):
        raise ValueError(
            f"{name} must be None (use all the data every step) or a positive integer, "
            f"got {value!r}."
        )
    return int(value)


def check_batch_fits(batch_size: int | None, available: int, what: str) -> None:
    """A minibatch cannot hold more distinct `what` than the data have (raises `ValueError`)."""
    if batch_size is not None and batch_size > available:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {available} {what} of the data; lower it, or "
            "pass batch_size=None to use all of them every step."
        )


def draw_minibatch(key: jax.Array | None, n: int, size: int, owner: str) -> jax.Array:
    """`size` distinct indices out of `n`, drawn uniformly without replacement with `key`.

    The minibatch rule of every strategy: within one step no example counts twice, so a batch as
    large as the data is exactly the full loss, in some order. Up to `SORT_LIMIT` examples this
    is `jax.random.choice(..., replace=False)` (a random permutation: a sort of n keys); beyond,
    where sorting all n keys in every step would cost more than the step itself, Floyd's
    algorithm draws the same uniform subsets in O(size²) without touching all n.

    Example:
        >>> import jax
        >>> from neuraldiffeq._checks import draw_minibatch
        >>> sorted(draw_minibatch(jax.random.key(0), 5, 5, "example").tolist())
        [0, 1, 2, 3, 4]
    """
    if key is None:
        raise ValueError(f"a minibatching {owner} needs a PRNG key to sample with.")
    if n <= SORT_LIMIT or size > SORT_LIMIT:
        return jax.random.choice(key, n, (size,), replace=False)
    return _floyd_sample(key, n, size)


#: Up to this many examples, minibatches come from a random permutation (see `draw_minibatch`).
SORT_LIMIT = 10_000


def _floyd_sample(key, n: int, size: int) -> jax.Array:
    # Floyd (Bentley & Floyd 1987): for j = n - size, ..., n - 1 draw t in [0, j]; take t unless
    # already taken, else j. Every size-subset is equally likely.
    keys = jax.random.split(key, size)

    def body(i, chosen):
        j = n - size + i
        t = jax.random.randint(keys[i], (), 0, j + 1)
        return chosen.at[i].set(jnp.where(jnp.any(chosen == t), j, t))

    return jax.lax.fori_loop(0, size, body, jnp.full((size,), -1, dtype=int))


def check_series(ts, ys, mask=None, *, ts_name: str = "ts", ys_name: str = "ys", dim=None):
    """Times `(T,)`, values `(T, D)` or `(B, T, D)` and an optional mask like the values.

    Returns `(ts, ys, mask)` as arrays: floating `ts` and `ys` of one dtype, a boolean mask (None
    stays None) and the masked-out values zeroed, so NaN in unobserved entries is never read.
    Checks values only when they are concrete (outside `jit`); shapes always. `dim`: the state
    size D the caller needs, if any.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq._checks import check_series
        >>> ts, ys, mask = check_series(np.linspace(0, 1, 3), np.zeros((3, 2)))
        >>> ys.shape, mask is None
        ((3, 2), True)
    """
    ts = check_times(ts, ts_name)
    ys = as_array(ys)
    if not jnp.issubdtype(ys.dtype, jnp.inexact):
        ys = ys.astype(jnp.result_type(float))
    want = "D" if dim is None else str(dim)
    if ys.ndim not in (2, 3) or ys.shape[-2] != ts.shape[0]:
        raise ValueError(
            f"{ys_name} must have shape (T, {want}) or (B, T, {want}) with T = len({ts_name}) = "
            f"{ts.shape[0]}, got {ys.shape}."
        )
    if dim is not None and ys.shape[-1] != dim:
        raise ValueError(
            f"{ys_name} has {ys.shape[-1]} state components (shape {ys.shape}), the model needs "
            f"{dim}."
        )
    if mask is not None:
        mask = as_array(mask)
        if mask.shape != ys.shape:
            raise ValueError(f"mask must have the shape of {ys_name} {ys.shape}, got {mask.shape}.")
        mask = mask.astype(bool)
        ys = jnp.where(mask, ys, 0.0)
    if is_concrete(ys) and not np.all(np.isfinite(np.asarray(ys))):  # numpy: no staging in jit
        raise ValueError(
            f"{ys_name} contains NaN or infinite values"
            + (" where mask says it is observed." if mask is not None else "; pass mask= (True")
            + ("" if mask is not None else " where observed) to mark missing values.")
        )
    return ts.astype(ys.dtype), ys, mask


def check_batch_series(ts, ys, mask=None, *, dim: int, ts_name: str = "ts", ys_name: str = "ys"):
    """`check_series` for models that read a batch: `(ts, ys, mask, single)` with `ys` and
    `mask` of shape `(B, T, dim)` (one series gets a batch axis of 1, `single` True) and a mask
    of True where none was given.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq._checks import check_batch_series
        >>> ts, ys, mask, single = check_batch_series(np.linspace(0, 1, 3), np.zeros((3, 2)), dim=2)
        >>> ys.shape, bool(mask.all()), single
        ((1, 3, 2), True, True)
    """
    ts, ys, mask = check_series(ts, ys, mask, ts_name=ts_name, ys_name=ys_name, dim=dim)
    mask = jnp.ones(ys.shape, bool) if mask is None else mask
    single = ys.ndim == 2
    if single:
        ys, mask = ys[None], mask[None]
    return ts, ys, mask, single


def check_sizes(minimum: int = 1, **sizes) -> None:
    """A `ValueError` naming the first of `sizes` (name=value) that is not an integer of at
    least `minimum` (1: "positive", 0: "non-negative"); bools are refused.

    Example:
        >>> from neuraldiffeq._checks import check_sizes
        >>> check_sizes(hidden_size=4, depth=0)
        Traceback (most recent call last):
        ...
        ValueError: depth must be a positive integer, got 0.
    """
    what = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not (
            isinstance(value, int | np.integer) and value >= minimum
        ):
            raise ValueError(f"{name} must be a {what} integer, got {value!r}.")


# -- function evaluations ------------------------------------------------------------------------


def evals_per_step(solver) -> int:
    """Vector-field evaluations per step of a diffrax solver, with first-same-as-last reuse.

    Explicit Runge–Kutta solvers: one per stage, minus one when the last stage is reused as the
    next step's first (FSAL: Tsit5 and Dopri5 have 7 stages and cost 6 per step); Euler: 1.
    Others (implicit solvers, whose Newton iterations vary): a `ValueError`, not a guess.

    Example:
        >>> import diffrax
        >>> from neuraldiffeq._checks import evals_per_step
        >>> evals_per_step(diffrax.Tsit5()), evals_per_step(diffrax.Euler())
        (6, 1)
    """
    import diffrax  # imported here: the checks module does not need the solver stack otherwise

    if isinstance(solver, diffrax.Euler):
        return 1
    if isinstance(solver, diffrax.AbstractERK):
        return solver.tableau.num_stages - int(_fsal(solver))
    raise ValueError(
        f"the number of vector-field evaluations per step of {type(solver).__name__} is not "
        "fixed (only explicit Runge-Kutta solvers and Euler have a known count)."
    )


def count_nfe(solver, num_steps) -> jax.Array:
    """Vector-field evaluations of a diffrax solve that took `num_steps` steps.

    `num_steps` counts accepted and rejected steps (diffrax's `stats["num_steps"]`); each costs
    `evals_per_step(solver)`, and a first-same-as-last solver evaluates the field once more at
    the start. Works on traced step counts (under `jit`/`vmap`).

    Example:
        >>> import diffrax
        >>> from neuraldiffeq._checks import count_nfe
        >>> int(count_nfe(diffrax.Tsit5(), 10)), int(count_nfe(diffrax.Euler(), 10))
        (61, 10)
    """
    return jnp.asarray(num_steps) * evals_per_step(solver) + int(_fsal(solver))


def _fsal(solver) -> bool:
    tableau = getattr(solver, "tableau", None)
    return bool(getattr(tableau, "fsal", False))


# -- shapes, checked before anything is compiled ---------------------------------------------------


def check_state_shapes(model, ts, y0, args, *, strategy: str, call=None) -> None:
    """The model accepts the data's state `y0` and returns the data's shape (`jax.eval_shape`).

    Nothing runs and nothing compiles: shapes are traced abstractly, so a mismatch is a
    `ValueError` naming both shapes instead of a long traceback from inside the compiled step.
    If the model exposes `vector_field(t, y, args)`, the field must return dy/dt with the state's
    shape (a scalar would otherwise be broadcast silently); then, unless `call` is None,
    `call(model, ts, y0, args)` (the strategy's way of solving) must return `(T, *y0.shape)`.
    """
    y0, ts = _shape_only(y0), _shape_only(ts)
    vector_field = getattr(model, "vector_field", None)
    if vector_field is not None:
        out = eval_shape_or_raise(
            lambda t, y: vector_field(t[0], y, args),
            (ts, y0),
            f"{strategy}: the model's vector field fails on a state of shape {y0.shape} (the "
            "data's state size). Is the model built for this many state components?",
        )
        if getattr(out, "shape", None) != y0.shape:
            raise ValueError(
                f"{strategy}: the model's vector field returns shape "
                f"{getattr(out, 'shape', type(out).__name__)} for a state of shape {y0.shape}; "
                f"it must return dy/dt with the state's shape {y0.shape}."
            )
    if call is None:
        return
    out = eval_shape_or_raise(
        lambda t, y: call(model, t, y, args),
        (ts, y0),
        f"{strategy}: the model fails on the data's times {ts.shape} and state {y0.shape}. "
        "Is the model built for this many state components?",
    )
    want = (ts.shape[0], *y0.shape)
    if getattr(out, "shape", None) != want:
        raise ValueError(
            f"{strategy}: the model returns shape {getattr(out, 'shape', type(out).__name__)} "
            f"for {ts.shape[0]} times and a state of shape {y0.shape}, but the data have shape "
            f"{want} per trajectory."
        )


def _shape_only(x) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.ShapeDtypeStruct):  # callers pass shapes rather than slice their data
        return x
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


def series_shapes(ys: jax.Array, times: int | None = None) -> tuple:
    """`(ts, y0)` shapes of one series of a batch `ys` (B, T, *state), as `check_state_shapes`
    takes them (`times`: how many time points, default T); no data are sliced (eagerly, a slice
    is a program compiled for its shape).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq._checks import series_shapes
        >>> ts, y0 = series_shapes(jnp.zeros((4, 10, 2)), times=5)
        >>> ts.shape, y0.shape
        ((5,), (2,))
    """
    times = ys.shape[1] if times is None else times
    return jax.ShapeDtypeStruct((times,), ys.dtype), jax.ShapeDtypeStruct(ys.shape[2:], ys.dtype)


def eval_shape_or_raise(fn, inputs, message: str):
    """`jax.eval_shape(fn, *inputs)`; any failure becomes a `ValueError(message)` with its cause."""
    from jax import eval_shape

    try:
        return eval_shape(fn, *inputs)
    except Exception as e:  # a shape error deep in JAX: say which shapes met, keep the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{message} ({type(e).__name__}: {first})") from e
