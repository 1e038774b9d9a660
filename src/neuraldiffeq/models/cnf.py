"""Continuous normalizing flows (Chen et al. 2018) and FFJORD (Grathwohl et al. 2019).

A sample x of the data is carried to the base distribution by dz/dt = f(t, z), z(0) = x, and
the change of log-density obeys d log p(z(t))/dt = -tr(∂f/∂z). Integrating both together,

    log p(x) = log p_base(z(t1)) + ∫_0^t1 tr(∂f/∂z(t)) dt.

The trace is either exact (the full Jacobian by forward mode: D Jacobian-vector products per
sample, best for small D) or Hutchinson's unbiased estimate ε^T (∂f/∂z) ε, one vector-Jacobian
product per evaluation with the probe ε drawn once and held fixed over the solve (FFJORD). The
whole batch is one ODE (state `(N, D)` plus `(N,)` log-density), so all samples share the adaptive
steps, as in the FFJORD code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive, count_nfe, is_concrete
from ..compilation.options import compiler_options
from ..solve.config import (
    FAILED,
    SHORTCUTS,
    HasSolveConfig,
    SolveConfig,
    build_config,
    on_failure,
    shortcuts,
)
from ..solve.sensitivity import AbstractSensitivity, Direct

#: FFJORD's solve defaults (the FFJORD paper's).
FFJORD_DEFAULTS = dict(solver="dopri5", rtol=1e-5, atol=1e-5, max_steps=4096, sensitivity="direct")

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class StandardNormal(eqx.Module):
    """The standard normal base distribution N(0, I) of a flow.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.models.cnf import StandardNormal
        >>> round(float(StandardNormal().log_prob(jnp.zeros((1, 2)))[0]), 4)
        -1.8379
    """

    def log_prob(self, z: jax.Array) -> jax.Array:
        return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def sample(self, key: jax.Array, shape: tuple[int, ...], dtype=None) -> jax.Array:
        return jax.random.normal(key, shape, dtype=dtype or jnp.result_type(float))


class CNFStats(NamedTuple):
    """What a log-density solve reports besides the log-density.

    Attributes:
        kinetic: per sample, ∫‖f(t, z)‖² dt (RNODE's kinetic-energy regulariser), shape (N,).
        jacobian: per sample, ∫‖ε^T ∂f/∂z‖² dt (Hutchinson; with the exact trace, the exact
            squared Frobenius norm ∫‖∂f/∂z‖²_F dt), shape (N,).
        num_steps: solver steps taken (accepted and rejected).
        nfe: number of evaluations of the batched dynamics (each one evaluates the field and
            its trace for every sample), counted from the solver's stages per step.
    """

    kinetic: jax.Array
    jacobian: jax.Array
    num_steps: jax.Array
    nfe: jax.Array


class _Dynamics(eqx.Module):
    """d/dt of (z, Δlog p[, kinetic, jacobian]) for a batch z of shape (N, D).

    args = (probe, context): Hutchinson's probe (N, D) or None, the per-row context (N, C) or None.
    """

    field: Callable
    scale: jax.Array | None
    trace: str = eqx.field(static=True)
    regularise: bool = eqx.field(static=True)

    def __call__(self, t, state, args):
        if self.scale is not None:  # trainable end time: s in [0, 1], t = s t1, d/ds = t1 d/dt
            derivatives = self._dt(t * self.scale, state, args)
            return jax.tree_util.tree_map(lambda d: self.scale * d, derivatives)
        return self._dt(t, state, args)

    def _dt(self, t, state, args):
        z = state[0]
        probe, context = args
        # The field on the whole batch: rows do not interact, so J v is per sample.
        batch_field = _batch(self.field, t, context)
        if self.trace == "exact":
            dz, jvp = jax.linearize(batch_field, z)
            # D products J e_j, unrolled: a vmap over the basis would turn the training
            # gradient's sums over it into reductions that are slow on the CPU.
            trace = frobenius = jnp.zeros(z.shape[:1], z.dtype)
            for j in range(z.shape[1]):
                column = jvp(jnp.zeros_like(z).at[:, j].set(1))  # row n: J_n e_j
                trace = trace + column[:, j]
                frobenius = frobenius + jnp.sum(column**2, axis=-1)
        else:
            dz, vjp = jax.vjp(batch_field, z)
            (probe_jac,) = vjp(probe)  # ε^T J, one VJP for the whole batch
            trace = jnp.sum(probe_jac * probe, axis=-1)
            frobenius = jnp.sum(probe_jac**2, axis=-1)
        if self.regularise:
            return dz, trace, jnp.sum(dz**2, axis=-1), frobenius
        return dz, trace


class _Field(eqx.Module):
    """The field on a batch, for the transforms that need no log-density."""

    field: Callable
    scale: jax.Array | None

    def __call__(self, t, z, context):
        if self.scale is not None:  # as in _Dynamics
            return self.scale * _batch(self.field, t * self.scale, context)(z)
        return _batch(self.field, t, context)(z)


def _batch(field, t, context):
    """z (N, D) -> the field on every row, row n conditioned on context[n] (args) if given."""
    if context is None:
        return jax.vmap(lambda zi: field(t, zi, None))
    return lambda z: jax.vmap(lambda zi, ci: field(t, zi, ci))(z, context)


class FFJORD(HasSolveConfig):
    """A continuous normalizing flow: exact trace (CNF) or Hutchinson's estimator (FFJORD).

    Data are at t = 0, the base distribution (default standard normal) at t = t1.

    Arguments:
        field: the vector field `f(t, z, args)` on one sample z of shape (D,), e.g.
            `nde.ConcatSquashMLP(D, key=...)`.
        t1: end time of the flow (FFJORD: 0.5 for the toy data).
        train_t1: make t1 a trainable parameter (stored as sqrt(t1), FFJORD's choice, so it
            stays positive).
        trace: `"exact"` (full Jacobian by forward mode, D JVPs per sample) or `"hutchinson"`
            (one VJP per evaluation with a probe fixed over the solve).
        probe: Hutchinson's probe, `"rademacher"` (lower variance) or `"gaussian"`.
        solver, rtol, atol, dt0, max_steps, sensitivity, config: the solve settings, as in
            `nde.NeuralODE` (one `nde.SolveConfig`; see `neuraldiffeq.solve.config` for the
            step-size rule). Defaults (FFJORD's): `"dopri5"`, rtol = atol = 1e-5, max_steps 4096,
            `nde.Direct()`. With `train_t1=True` the solve runs in s = t / t1 over [0, 1], so
            `dt0` is a fraction of t1. Every sensitivity applies to the augmented state (samples
            and log-density): `nde.Direct()` (exact gradient of the solve), `nde.Backsolve()`
            (FFJORD's continuous adjoint, O(1) memory), `nde.Interpolating()`,
            `nde.Quadrature()`, `nde.Forward()` (a flow usually has too many parameters for it);
            `"auto"` is `nde.Direct()` (the state is the whole batch).
        base: the base distribution: any object with `log_prob(z)` over the last axis and
            `sample(key, shape)`; default `StandardNormal()`.
        dim: the data dimension D, needed by `sample`; taken from `field.in_size` if not given.

    A conditional flow: every method takes `context=` of shape (N, C), one conditioning vector
    per row, handed to the field as its `args` (e.g. `nde.ConcatSquashMLP(D, context_size=C)`);
    the flow is then a family of flows indexed by the context, as the amortised posterior of
    `nde.VAE`. Without it the field gets `args=None`.

    A failed solve (e.g. `max_steps` reached) gives a log-density of `-inf` (the loss, its
    negative, is `inf`, so `nde.fit` skips the step) and `inf` from `forward`, `inverse` and
    `sample` (`neuraldiffeq.solve.config.on_failure`).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> field = nde.ConcatSquashMLP(2, hidden=(16, 16), key=jax.random.key(0))
        >>> flow = nde.FFJORD(field, t1=0.5, trace="exact")
        >>> x = flow.sample(jax.random.key(1), 5)
        >>> flow.log_prob(x).shape
        (5,)
    """

    field: Callable
    config: SolveConfig
    base: Any
    sqrt_t1: jax.Array | None
    fixed_t1: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    probe: str = eqx.field(static=True)
    dim: int | None = eqx.field(static=True)

    def __init__(
        self,
        field: Callable,
        *,
        t1: float = 0.5,
        train_t1: bool = False,
        trace: str = "hutchinson",
        probe: str = "rademacher",
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
        base: Any = None,
        dim: int | None = None,
    ):
        if not callable(field):
            raise ValueError(
                f"field must be callable as field(t, z, args), got {type(field).__name__}; "
                "e.g. nde.ConcatSquashMLP(dim, key=jax.random.key(0))."
            )
        check_positive(t1, "t1")
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {trace!r}.")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}.")
        given = shortcuts(locals())
        config = build_config("FFJORD", config, given, FFJORD_DEFAULTS)
        config = config.for_model("FFJORD", None, Direct)
        if base is None:
            base = StandardNormal()
        elif not (
            callable(getattr(base, "log_prob", None)) and callable(getattr(base, "sample", None))
        ):
            raise ValueError(
                "base must have log_prob(z) and sample(key, shape) methods (default: standard "
                f"normal), got {type(base).__name__}."
            )
        if dim is None:
            dim = getattr(field, "in_size", None)
        if dim is not None and not (isinstance(dim, int | np.integer) and dim > 0):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}.")
        self.field, self.config, self.base = field, config, base
        self.sqrt_t1 = jnp.sqrt(jnp.asarray(float(t1))) if train_t1 else None
        self.fixed_t1 = float(t1)
        self.trace, self.probe = trace, probe
        self.dim = None if dim is None else int(dim)

    # -- public -----------------------------------------------------------------------------

    @property
    def t1(self) -> jax.Array | float:
        """The end time (a trainable array when `train_t1=True`)."""
        return self.fixed_t1 if self.sqrt_t1 is None else self.sqrt_t1**2

    def log_prob(
        self, x: jax.Array, key: jax.Array | None = None, *, context: jax.Array | None = None
    ) -> jax.Array:
        """Log-density of each row of `x` (N, D) -> (N,). `key` draws Hutchinson's probe.

        `context` (N, C): each row's conditioning vector (see the class docstring).

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)))
            >>> flow.log_prob(jnp.zeros((3, 2)), jax.random.key(1)).shape
            (3,)
        """
        logp, _ = self._log_prob(x, key, context, regularise=False)
        return logp

    def forward_and_logdet(
        self, x: jax.Array, key: jax.Array | None = None, *, context: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """z(t1) from z(0) = x (N, D), and log|det ∂z(t1)/∂x| = ∫ tr(∂f/∂z) dt per row (N,).

        The change of variables for a flow used as a sampler (a VAE's posterior): if x has
        density q0, z(t1) has log-density log q0(x) - logdet. With Hutchinson's trace the logdet
        is an unbiased estimate. A failed solve gives `inf` for both.

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)),
            ...                   trace="exact")
            >>> z, logdet = flow.forward_and_logdet(jnp.ones((3, 2)))
            >>> z.shape, logdet.shape
            ((3, 2), (3,))
        """
        x = self._check(x, "x")
        context = self._check_context(context, x)
        sol, _ = self._augmented_solve(x, key, context, regularise=False)
        z, logdet = jax.tree_util.tree_map(lambda leaf: leaf[0], sol.ys)
        why = dict(config=self.config, model="FFJORD")
        return on_failure(sol, z, **why), on_failure(sol, logdet, **why)

    def log_prob_and_stats(
        self, x: jax.Array, key: jax.Array | None = None, *, context: jax.Array | None = None
    ) -> tuple[jax.Array, CNFStats]:
        """Log-density plus the RNODE regularisers and solver counts (see `CNFStats`).

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)))
            >>> logp, stats = flow.log_prob_and_stats(jnp.zeros((3, 2)), jax.random.key(1))
            >>> stats.kinetic.shape, int(stats.nfe) > 0
            ((3,), True)
        """
        return self._log_prob(x, key, context, regularise=True)

    def forward(self, x: jax.Array, *, context: jax.Array | None = None) -> jax.Array:
        """Map data (N, D) to the base space: z(t1) from z(0) = x.

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)))
            >>> x = jnp.ones((4, 2))
            >>> bool(jnp.allclose(flow.inverse(flow.forward(x)), x, atol=1e-3))
            True
        """
        x = self._check(x, "x")
        return self._transport(x, self._check_context(context, x), backwards=False)

    def inverse(self, z: jax.Array, *, context: jax.Array | None = None) -> jax.Array:
        """Map base-space points (N, D) to data space, integrating backwards from t1 to 0."""
        z = self._check(z, "z")
        return self._transport(z, self._check_context(context, z), backwards=True)

    def sample(self, key: jax.Array, n: int, *, context: jax.Array | None = None) -> jax.Array:
        """`n` samples (n, D): base samples carried backwards through the flow.

        Example:
            >>> import jax, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)))
            >>> flow.sample(jax.random.key(1), 10).shape
            (10, 2)
        """
        if not (isinstance(n, int | np.integer) and n > 0):
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        if self.dim is None:
            raise ValueError(
                "sample needs the data dimension: pass dim=D to nde.FFJORD (it could not be "
                "read from field.in_size)."
            )
        dtype = jnp.result_type(float)
        z = self.base.sample(key, (int(n), self.dim)).astype(dtype)
        return self._transport(z, self._check_context(context, z), backwards=True)

    def with_options(self, **changes) -> FFJORD:
        """The same flow (same field, trained end time and base) with other solve settings.

        Accepts `trace`, `probe` and the solve settings `solver`, `rtol`, `atol`, `dt0`,
        `max_steps`, `sensitivity` (changed in `flow.config` with `SolveConfig.replace`: the
        others are kept, so pass `rtol=None, atol=None, dt0=h` for constant steps) or a whole
        `config`; e.g. train with Hutchinson's estimator at loose tolerances, evaluate exactly
        and tightly.

        Example:
            >>> import jax, neuraldiffeq as nde
            >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)))
            >>> exact = flow.with_options(trace="exact", rtol=1e-6, atol=1e-6)
            >>> exact.trace, exact.rtol
            ('exact', 1e-06)
        """
        solve = set(SHORTCUTS)
        allowed = {"trace", "probe", "config"} | solve
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(
                f"with_options does not change {sorted(unknown)}; it accepts {sorted(allowed)}."
            )
        settings = {k: changes.pop(k) for k in list(changes) if k in solve}
        config = changes.pop("config", None)
        if config is not None and settings:
            raise ValueError(
                "with_options: pass either config=nde.SolveConfig(...) or the solve settings "
                f"({', '.join(sorted(settings))}), not both."
            )
        if config is None:
            config = self.config.replace(**settings)
        new = FFJORD(
            self.field,
            t1=self.fixed_t1,
            train_t1=self.sqrt_t1 is not None,
            trace=changes.get("trace", self.trace),
            probe=changes.get("probe", self.probe),
            config=config,
            base=self.base,
            dim=self.dim,
        )
        if self.sqrt_t1 is not None:  # keep the trained end time
            new = eqx.tree_at(lambda f: f.sqrt_t1, new, self.sqrt_t1)
        return new

    # -- internals --------------------------------------------------------------------------

    def _check(self, x, name: str) -> jax.Array:
        if is_concrete(x):
            arr = np.asarray(x)
            if arr.ndim != 2:
                raise ValueError(
                    f"{name} must be a batch of shape (N, D), got shape {arr.shape}; "
                    "use x[None] for a single point."
                )
            if self.dim is not None and arr.shape[1] != self.dim:
                raise ValueError(
                    f"{name} has {arr.shape[1]} columns but the flow is {self.dim}-dimensional."
                )
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains NaN or infinite values.")
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        return x

    def _check_context(self, context, x) -> jax.Array | None:
        if context is None:
            return None
        if is_concrete(context):
            arr = np.asarray(context)
            if arr.ndim != 2 or arr.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context must have shape (N, C) with one row per sample (N = {x.shape[0]}), "
                    f"got shape {arr.shape}."
                )
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                raise ValueError("context contains NaN or infinite values.")
        elif jnp.ndim(context) != 2 or jnp.shape(context)[0] != x.shape[0]:
            raise ValueError(
                f"context must have shape (N, C) with N = {x.shape[0]}, got {jnp.shape(context)}."
            )
        return jnp.asarray(context, x.dtype)

    def _scale(self):
        return None if self.sqrt_t1 is None else self.sqrt_t1**2

    def _solve(self, term, y0, args, *, backwards: bool):
        # A trainable end time enters the field as a scale on [0, 1] rather than as the end of
        # the interval: every sensitivity (Backsolve included) differentiates w.r.t. the field.
        end = 1.0 if self.sqrt_t1 is not None else self.fixed_t1
        t0, t1 = (end, 0.0) if backwards else (0.0, end)
        return self.config.diffeqsolve(
            diffrax.ODETerm(term),
            t0,
            t1,
            y0,
            args=args,
            saveat=diffrax.SaveAt(t1=True),
            backwards=backwards,
        )

    def _transport(self, z, context, *, backwards: bool):
        sol = self._solve(_Field(self.field, self._scale()), z, context, backwards=backwards)
        return on_failure(sol, sol.ys[0], config=self.config, model="FFJORD")

    def _log_prob(self, x, key, context, *, regularise: bool):
        x = self._check(x, "x")
        context = self._check_context(context, x)
        sol, probe = self._augmented_solve(x, key, context, regularise=regularise)
        n = x.shape[0]
        zeros = jnp.zeros((n,), x.dtype)
        final = jax.tree_util.tree_map(lambda leaf: leaf[0], sol.ys)
        logp = self.base.log_prob(final[0]) + final[1]
        # -inf under jit: the loss, -log p, is then inf
        logp = on_failure(sol, logp, -FAILED, config=self.config, model="FFJORD")
        num_steps = sol.stats["num_steps"]
        kinetic, jacobian = (final[2], final[3]) if regularise else (zeros, zeros)
        stats = CNFStats(kinetic, jacobian, num_steps, count_nfe(self.solver, num_steps))
        return logp, stats

    def _augmented_solve(self, x, key, context, *, regularise: bool):
        """Solve (z, ∫tr[, kinetic, jacobian]) from (x, 0[, 0, 0]) over [0, t1]."""
        n = x.shape[0]
        if self.trace == "hutchinson":
            if key is None:
                raise ValueError(
                    "trace='hutchinson' draws a random probe: pass key=jax.random.key(...) "
                    "(or use trace='exact')."
                )
            if self.probe == "rademacher":
                probe = jax.random.rademacher(key, x.shape, dtype=x.dtype)
            else:
                probe = jax.random.normal(key, x.shape, dtype=x.dtype)
        else:
            probe = None
        zeros = jnp.zeros((n,), x.dtype)
        y0 = (x, zeros, zeros, zeros) if regularise else (x, zeros)
        term = _Dynamics(self.field, self._scale(), self.trace, regularise)
        return self._solve(term, y0, (probe, context), backwards=False), probe


@functools.cache
def _log_prob_jit():
    return eqx.filter_jit(
        lambda flow, x, key: flow.log_prob(x, key), compiler_options=compiler_options()
    )


def batched_log_prob(flow: FFJORD, x, key: jax.Array | None = None, batch_size: int = 1000):
    """`flow.log_prob` of many rows (N, D) -> (N,) as a NumPy array, in compiled batches.

    Batches are padded to `batch_size`, so one compiled program serves every batch, and each
    batch is its own solve (its own adaptive steps).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.models.cnf import batched_log_prob
        >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)), trace="exact")
        >>> batched_log_prob(flow, jnp.zeros((5, 2)), batch_size=4).shape
        (5,)
    """
    x = flow._check(x, "x")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    key = jax.random.key(0) if key is None else key
    n = x.shape[0]
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = x[start : start + batch_size]
        m = chunk.shape[0]
        if m < batch_size:  # pad with copies of the first row; their values are dropped
            pad = jnp.broadcast_to(chunk[:1], (batch_size - m, x.shape[1]))
            chunk = jnp.concatenate([chunk, pad])
        out.append(np.asarray(_log_prob_jit()(flow, chunk, jax.random.fold_in(key, i)))[:m])
    return np.concatenate(out)


def mean_nll(flow: FFJORD, x, key: jax.Array | None = None, batch_size: int = 1000) -> float:
    """Mean negative log-likelihood (nats) of the rows of `x`, in compiled batches.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.models.cnf import mean_nll
        >>> flow = nde.FFJORD(nde.ConcatSquashMLP(2, (8,), key=jax.random.key(0)), trace="exact")
        >>> mean_nll(flow, jnp.zeros((5, 2)), batch_size=4) > 0
        True
    """
    return -float(np.mean(batched_log_prob(flow, x, key, batch_size)))


__all__ = ["FFJORD", "CNFStats", "StandardNormal", "batched_log_prob", "mean_nll"]
