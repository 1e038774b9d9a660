"""Brownian motion on a constant-step grid: `GridBrownianPath`, and the rule that picks it.

An SDE solved with constant steps reads its Brownian motion only over the steps of its grid.
`diffrax.VirtualBrownianTree` can answer any query (any sub-interval, to a tolerance) by
walking a tree of Brownian bridges from a key, about `log2(interval / tol)` levels for each
end of every step, and does so again each time a step is recomputed in the reverse pass.
`GridBrownianPath` answers only the grid's steps, each with one independent Gaussian draw made
when the step is evaluated: the same distribution there, at the cost of one draw per step, and
no memory. (Drawing all steps in advance instead was no faster in the latent SDE training
step and slower in the neural SDE one, where the solve is vmapped over paths: see
benchmarks/RESULTS.md, issue #31.)

Which path a model uses (`brownian=` of `nde.NeuralSDE` and `nde.LatentSDE`):

- `"grid"`: `GridBrownianPath` on the solve's constant-step grid;
- `"tree"`: `diffrax.VirtualBrownianTree` (tolerance dt0 / 16);
- `"auto"` (the default): `"grid"` with `nde.Direct()` and `nde.Forward()`, which only
  re-run the same steps; `"tree"` with `nde.Backsolve()`, whose backward solve queries the
  path on its own (reversed) grid.

Both are reproducible: the same key (and the same grid) gives the same path on every call.
They are different paths for the same key, and a grid path also changes with the grid
(`dt0`, and the interval of the solve), while a tree path does not.

Example:
    >>> import diffrax, jax, jax.numpy as jnp
    >>> from neuraldiffeq.solve.brownian import GridBrownianPath
    >>> bm = GridBrownianPath(0.0, 1.0, 0.25, jax.ShapeDtypeStruct((2,), jnp.float32),
    ...                       jax.random.key(0))
    >>> bm.evaluate(0.25, 0.5).shape
    (2,)
    >>> term = diffrax.ControlTerm(lambda t, y, a: 0.1 * jnp.diag(y), bm)  # as any path
    >>> sol = diffrax.diffeqsolve(diffrax.MultiTerm(diffrax.ODETerm(lambda t, y, a: -y), term),
    ...                           diffrax.Euler(), 0.0, 1.0, 0.25, jnp.ones(2))
    >>> sol.ys.shape
    (1, 2)
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .sensitivity import Direct, Forward

#: The Brownian path kinds a model accepts (`brownian=`); see the module docstring.
BROWNIAN_KINDS = ("auto", "grid", "tree")

_LEVY_PARTS = {
    diffrax.BrownianIncrement: 1,
    diffrax.SpaceTimeLevyArea: 2,
    diffrax.SpaceTimeTimeLevyArea: 3,
}


class GridBrownianPath(diffrax.AbstractBrownianPath):
    """Brownian motion on [t0, t1] at diffrax's constant-step grid for steps of `dt0`.

    The grid is the one `diffrax.ConstantStepSize` walks: n = ceil((t1 - t0) / dt0) steps
    (t0 + dt0, then t0 + (t1 - t0)·k/n, ending at t1). Step k draws `W ~ N(0, h)` for its
    length h (and with `levy_area=diffrax.SpaceTimeLevyArea` the space-time Lévy area
    `H ~ N(0, h/12)`, with `SpaceTimeTimeLevyArea` also `K ~ N(0, h/720)`, independent of W):
    the standard normals of step k are `jax.random.normal(jax.random.fold_in(key, k), ...)`,
    drawn when the step is evaluated, so the same key gives the same path in every call,
    however often a step is re-evaluated (the reverse pass of `nde.Direct()` recomputes
    steps), with concrete or traced times.

    `evaluate(s, u)` is the increment over the grid step that starts at s (u its end); s must
    be a grid time and [s, u] its step. Other intervals are not Brownian increments of this
    path: use `diffrax.VirtualBrownianTree` for solves whose steps are not the grid's
    (adaptive steps, the backward solve of `nde.Backsolve()`). The value W(t) alone
    (`evaluate(t)`) is not available.

    Arguments:
        t0, t1: the interval of the solve (arrays or numbers; may be traced).
        dt0: the constant step (a Python float).
        shape: a `jax.ShapeDtypeStruct` of the Brownian motion (one array).
        key: a JAX PRNG key.
        levy_area: `diffrax.BrownianIncrement` (default), `diffrax.SpaceTimeLevyArea` or
            `diffrax.SpaceTimeTimeLevyArea`.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> shape = jax.ShapeDtypeStruct((3,), jnp.float32)
        >>> bm = nde.GridBrownianPath(0.0, 1.0, 0.1, shape, jax.random.key(1))
        >>> bool(jnp.all(bm.evaluate(0.3, 0.4) == bm.evaluate(0.3, 0.4)))  # same key, same path
        True
    """

    t0: jax.Array
    t1: jax.Array
    key: jax.Array
    dt0: float = eqx.field(static=True)
    shape: jax.ShapeDtypeStruct = eqx.field(static=True)
    levy_area: type = eqx.field(static=True)

    def __init__(
        self,
        t0,
        t1,
        dt0: float,
        shape: jax.ShapeDtypeStruct,
        key: jax.Array,
        levy_area: type = diffrax.BrownianIncrement,
    ):
        if not isinstance(shape, jax.ShapeDtypeStruct):
            raise ValueError(
                f"shape must be a jax.ShapeDtypeStruct (one array), got {type(shape).__name__}."
            )
        if not jnp.issubdtype(shape.dtype, jnp.floating):
            raise ValueError(f"shape's dtype must be floating point, got {shape.dtype}.")
        if levy_area not in _LEVY_PARTS:
            raise ValueError(
                "levy_area must be diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea or "
                f"diffrax.SpaceTimeTimeLevyArea, got {levy_area!r}."
            )
        if not (np.isscalar(dt0) and float(dt0) > 0):
            raise ValueError(f"dt0 must be a positive number, got {dt0!r}.")
        dtype = jnp.result_type(t0, t1, float)
        self.t0, self.t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        self.dt0, self.shape, self.key, self.levy_area = float(dt0), shape, key, levy_area

    # -- the grid -----------------------------------------------------------------------------

    def _num_steps(self) -> jax.Array:
        # diffrax.ConstantStepSize.init: ceil((t1 - t0) / nextafter(dt0)), in the time dtype
        dt0 = jnp.asarray(self.dt0, self.t0.dtype)
        return jnp.ceil((self.t1 - self.t0) / jnp.nextafter(dt0, jnp.inf)).astype(jnp.int32)

    def _index(self, s) -> jax.Array:
        """The grid step starting at time s: round((s - t0) / h) for the grid's uniform step h
        (the first step, t0 + dt0, is at most half a step longer, so it rounds to 1)."""
        n = jnp.maximum(self._num_steps(), 1)
        position = (s - self.t0) / (self.t1 - self.t0) * n.astype(self.t0.dtype)
        return jnp.clip(jnp.round(position).astype(jnp.int32), 0, n - 1)

    def _draw(self, k) -> jax.Array:
        parts = _LEVY_PARTS[self.levy_area]
        key = jax.random.fold_in(self.key, k)
        return jax.random.normal(key, (parts, *self.shape.shape), self.shape.dtype)

    # -- diffrax's interface ------------------------------------------------------------------

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        """The increment (with `use_levy`, the Lévy area) over the grid step [t0, t1]."""
        del left
        if t1 is None:
            raise ValueError(
                "GridBrownianPath gives increments over the steps of its grid: call "
                "evaluate(t0, t1) with a step's start and end, not a single time."
            )
        # times are not differentiated (as in diffrax's Brownian paths)
        s = jax.lax.stop_gradient(jnp.asarray(t0, self.t0.dtype))
        u = jax.lax.stop_gradient(jnp.asarray(t1, self.t0.dtype))
        z = self._draw(self._index(s))
        h = (u - s).astype(self.shape.dtype)
        root = jnp.sqrt(h)
        w = root * z[0]
        if not use_levy:
            return w
        dt = u - s
        if self.levy_area is diffrax.BrownianIncrement:
            return diffrax.BrownianIncrement(dt=dt, W=w)
        hh = root / math.sqrt(12) * z[1]
        if self.levy_area is diffrax.SpaceTimeLevyArea:
            return diffrax.SpaceTimeLevyArea(dt=dt, W=w, H=hh)
        kk = root / math.sqrt(720) * z[2]
        return diffrax.SpaceTimeTimeLevyArea(dt=dt, W=w, H=hh, K=kk)


def resolve_brownian(kind: str, sensitivity, owner: str) -> str:
    """`"grid"` or `"tree"` for a model's `brownian=` and its (resolved) sensitivity: `"auto"`
    chooses (module docstring), an explicit choice is honoured or refused with a ValueError.

    Example:
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.solve.brownian import resolve_brownian
        >>> resolve_brownian("auto", nde.Direct(), "NeuralSDE")
        'grid'
        >>> resolve_brownian("auto", nde.Backsolve(), "NeuralSDE")
        'tree'
    """
    if not (isinstance(kind, str) and kind in BROWNIAN_KINDS):
        raise ValueError(f"{owner}: brownian must be 'auto', 'grid' or 'tree', got {kind!r}.")
    replays_steps = isinstance(sensitivity, Direct | Forward)
    if kind == "auto":
        return "grid" if replays_steps else "tree"
    if kind == "grid" and not replays_steps:
        raise ValueError(
            f"{owner}: brownian='grid' draws the Brownian motion on the forward solve's step "
            f"grid, which sensitivity={sensitivity!r} does not re-use (its backward solve "
            "queries the path at other times); use brownian='tree' (or 'auto'), or "
            "nde.Direct() / nde.Forward()."
        )
    return kind


def brownian_path(
    kind: str,
    t0,
    t1,
    dt0: float,
    shape: jax.ShapeDtypeStruct,
    key: jax.Array,
    levy_area,
) -> diffrax.AbstractBrownianPath:
    """The Brownian path of a resolved `kind` ("grid" or "tree") on [t0, t1]: a
    `GridBrownianPath`, or a `VirtualBrownianTree` of tolerance dt0 / 16.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.solve.brownian import brownian_path
        >>> bm = brownian_path("tree", 0.0, 1.0, 0.1, jax.ShapeDtypeStruct((2,), jnp.float32),
        ...                    jax.random.key(0), None)
        >>> type(bm).__name__
        'VirtualBrownianTree'
    """
    if levy_area is None:
        levy_area = diffrax.BrownianIncrement
    if kind == "grid":
        return GridBrownianPath(t0, t1, dt0, shape, key, levy_area)
    if kind == "tree":
        return diffrax.VirtualBrownianTree(
            t0, t1, tol=dt0 / 16, shape=shape, key=key, levy_area=levy_area
        )
    raise ValueError(f"brownian kind must be 'grid' or 'tree', got {kind!r}.")
