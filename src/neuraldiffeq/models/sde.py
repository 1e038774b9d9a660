"""Neural stochastic differential equations dy = drift(t, y) dt + diffusion(t, y) dW (diffrax)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import lineax as lx
import numpy as np

from .._checks import solve_inputs
from ..solve.brownian import brownian_path, resolve_brownian
from ..solve.config import HasSolveConfig, SolveConfig, build_config, on_failure, shortcuts
from ..solve.names import SDE_SOLVERS
from ..solve.sensitivity import AbstractSensitivity, Backsolve, Direct, Forward

#: NeuralSDE's solve defaults: Euler–Maruyama with constant steps of 0.01.
SDE_DEFAULTS = dict(solver="euler", dt0=0.01, max_steps=None, sensitivity="direct")

NOISE_TYPES = ("diagonal", "general")


class NeuralSDE(HasSolveConfig):
    """An SDE dy = drift(t, y, args) dt + diffusion(t, y, args) dW solved with diffrax.

    Noise:
        - `noise="diagonal"`: `diffusion` returns shape (D,), one independent Brownian motion per
          state (the diffusion matrix is diag(diffusion(t, y))).
        - `noise="general"`: `diffusion` returns shape (D, m) for an m-dimensional Brownian motion
          (`brownian_dim=m`, inferred from the diffusion's output if not given).

    Solvers (by name, see `neuraldiffeq.solve.SDE_SOLVERS`): Itô `"euler"` (Euler–Maruyama,
    the default), `"milstein"`; Stratonovich `"euler_heun"`, `"heun"`, `"midpoint"`,
    `"reversible_heun"`, `"stratonovich_milstein"`; stochastic Runge–Kutta `"srk"`
    (diffrax GeneralShARK), `"spark"`, `"slow_rk"`, and for additive noise `"shark"`, `"sra1"`,
    `"sea"`. The drift and diffusion become diffrax's `MultiTerm(ODETerm, ControlTerm)`.

    Brownian motion (`brownian=`, with the Lévy area the solver needs): `"grid"` draws one
    Gaussian increment per step of the constant-step grid (`nde.GridBrownianPath`); `"tree"`
    is a `diffrax.VirtualBrownianTree`, which can be queried at any time (tolerance dt0 / 16)
    but walks a tree of bridges for every query. `"auto"` (the default) takes `"grid"` with
    `nde.Direct()` and `nde.Forward()` (they only re-run the forward steps) and `"tree"` with
    `nde.Backsolve()` (its backward solve queries the path on its own grid); `"grid"` with
    `Backsolve()` is refused. Both have the distribution of Brownian motion on the grid, but
    they are different paths for the same key; the grid path also changes with `dt0` and the
    solve's interval. `model.brownian` is the kind in use.

    Solve settings: `solver`, `dt0`, `max_steps`, `sensitivity`, or one
    `config=nde.SolveConfig(...)` (see `neuraldiffeq.solve.config`); defaults `"euler"`,
    dt0 = 0.01, `max_steps=None` (exactly the constant steps the interval needs), `nde.Direct()`.
    Steps are constant, `dt0` long: adaptive steps (rtol/atol) are refused.

    Sensitivities: `nde.Direct()` (default, and what `"auto"` gives; discrete adjoint with
    checkpointing), `nde.Forward()` (forward mode through the same path), or `nde.Backsolve()`
    (continuous adjoint, O(1) memory; diffrax supports it for Stratonovich solvers of a single
    term only: `"heun"` or `"midpoint"`; its gradient converges to the Direct one as dt0 → 0, with
    the same Brownian path). `Interpolating` and `Quadrature` are ODE adjoints and are refused.

    `model(ts, y0, key)` returns one path at `ts`, shape (T, D) (inf where the solver failed);
    `model.sample(ts, y0, key, n)` returns n paths, shape (n, T, D). The same key gives the same
    path.

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralSDE(lambda t, y, args: -y, lambda t, y, args: 0.2 * y, dt0=0.01)
        >>> model.sample(jnp.linspace(0, 1, 30), jnp.array([2.0, 0.0]), jax.random.key(0), 8).shape
        (8, 30, 2)
    """

    drift: Callable
    diffusion: Callable
    config: SolveConfig
    noise: str = eqx.field(static=True)
    brownian_dim: int | None = eqx.field(static=True)
    # "grid" or "tree" (resolved); files written before it existed were solved on a tree
    brownian: str = eqx.field(static=True, default="tree")

    def __init__(
        self,
        drift: Callable,
        diffusion: Callable,
        noise: str = "diagonal",
        brownian_dim: int | None = None,
        solver: str | diffrax.AbstractSolver | None = None,
        *,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        config: SolveConfig | None = None,
        brownian: str = "auto",
    ):
        for name, fn in (("drift", drift), ("diffusion", diffusion)):
            if not callable(fn):
                raise ValueError(
                    f"{name} must be callable as {name}(t, y, args), got {type(fn).__name__}."
                )
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be 'diagonal' or 'general', got {noise!r}.")
        if brownian_dim is not None:
            if not (isinstance(brownian_dim, int | np.integer) and brownian_dim > 0):
                raise ValueError(f"brownian_dim must be a positive integer, got {brownian_dim!r}.")
            if noise == "diagonal":
                raise ValueError(
                    "brownian_dim is only for noise='general' (with diagonal noise the Brownian "
                    "motion has one component per state)."
                )
        self.config = sde_config("NeuralSDE", config, shortcuts(locals()))
        self.brownian = resolve_brownian(brownian, self.config.sensitivity, "NeuralSDE")
        self.drift, self.diffusion = drift, diffusion
        self.noise, self.brownian_dim = noise, brownian_dim

    # -- public -----------------------------------------------------------------------------

    def __call__(self, ts, y0, key: jax.Array, args: Any = None) -> jax.Array:
        ts, y0 = self._prepare(ts, y0)
        sol = self._solve(ts, y0, key, args, throw=False)
        return on_failure(sol, sol.ys, config=self.config, model="NeuralSDE")

    def sample(self, ts, y0, key: jax.Array, n: int, args: Any = None) -> jax.Array:
        """`n` independent paths at `ts`, shape (n, T, D) (vmap over `jax.random.split(key, n)`).

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> gbm = nde.NeuralSDE(lambda t, y, a: 0.1 * y, lambda t, y, a: 0.2 * y, dt0=0.05)
            >>> gbm.sample(jnp.linspace(0, 1, 5), jnp.ones(1), jax.random.key(1), 4).shape
            (4, 5, 1)
        """
        if not (isinstance(n, int | np.integer) and n > 0):
            raise ValueError(f"n (number of paths) must be a positive integer, got {n!r}.")
        ts, y0 = self._prepare(ts, y0)
        return jax.vmap(lambda k: self(ts, y0, k, args))(jax.random.split(key, int(n)))

    def solve(self, ts, y0, key: jax.Array, args: Any = None, *, throw: bool = False):
        """The full diffrax `Solution` of one path (stats, result).

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`: where
        the model itself would raise `nde.SolveError` or return `inf`, `sol.result` says why
        (e.g. `diffrax.RESULTS.max_steps_reached`) and `sol.stats` counts the steps. `throw=True`
        raises `nde.SolveError` instead (diffrax's run-time error inside compiled code).

        Example:
            >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
            >>> m = nde.NeuralSDE(lambda t, y, a: -y, lambda t, y, a: 0.1 * y, dt0=0.1)
            >>> sol = m.solve(jnp.linspace(0, 1, 3), jnp.ones(2), jax.random.key(0))
            >>> int(sol.stats["num_steps"])
            10
        """
        ts, y0 = self._prepare(ts, y0)
        return self._solve(ts, y0, key, args, throw=throw)

    # -- internals --------------------------------------------------------------------------

    def _prepare(self, ts, y0):
        ts, y0, _ = solve_inputs(ts, y0, vector=True)  # args go to drift and diffusion as given
        return ts, y0

    def _brownian_shape(self, ts, y0, args) -> tuple[int, ...]:
        """Check the diffusion's output shape (static, so this also works under jit)."""
        out = jax.eval_shape(self.diffusion, ts[0], y0, args)
        shape = getattr(out, "shape", None)
        (d,) = y0.shape
        if self.noise == "diagonal":
            if shape != (d,):
                raise ValueError(
                    f"with noise='diagonal' the diffusion must return shape (D,) = ({d},), got "
                    f"{shape}. For a (D, m) matrix use noise='general'."
                )
            return (d,)
        if shape is None or len(shape) != 2 or shape[0] != d:
            raise ValueError(
                f"with noise='general' the diffusion must return a (D, m) matrix with D = {d}, "
                f"got {shape}."
            )
        if self.brownian_dim is not None and shape[1] != self.brownian_dim:
            raise ValueError(
                f"the diffusion returns shape {shape} but brownian_dim={self.brownian_dim}; "
                f"make them agree (m = {shape[1]})."
            )
        return (shape[1],)

    def _terms(self, ts, y0, key, args):
        bm_shape = self._brownian_shape(ts, y0, args)
        drift_out = jax.eval_shape(self.drift, ts[0], y0, args)
        if getattr(drift_out, "shape", None) != y0.shape:
            raise ValueError(
                f"drift must return dy/dt of the state's shape {y0.shape}, got "
                f"{getattr(drift_out, 'shape', type(drift_out).__name__)}."
            )
        if self.noise == "diagonal":
            diffusion = _Diagonal(self.diffusion)
        else:
            diffusion = self.diffusion
        bm = jax.ShapeDtypeStruct(bm_shape, y0.dtype)
        return sde_terms(
            self.config, self.drift, diffusion, ts[0], ts[-1], bm, key, self.brownian, "NeuralSDE"
        )

    def _solve(self, ts, y0, key, args, *, throw):
        terms = self._terms(ts, y0, key, args)
        # With max_steps=None and concrete ts the constant-step count is known, which keeps the
        # loop bound (and the reverse pass's checkpoints) small.
        return self.config.diffeqsolve(
            terms,
            ts[0],
            ts[-1],
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts),
            throw=throw,
            model="NeuralSDE",
        )


def sde_config(owner: str, config: SolveConfig | None, given: dict) -> SolveConfig:
    """The solve configuration of an SDE model (`owner` names it in errors): constant steps, and
    a sensitivity among `nde.Direct()`, `nde.Forward()` and, for a Stratonovich solver of a
    single term, `nde.Backsolve()` (`"auto"` gives `nde.Direct()`)."""
    config = build_config(owner, config, given, SDE_DEFAULTS, SDE_SOLVERS)
    if config.adaptive:
        raise ValueError(
            f"{owner} takes constant steps: pass dt0=<step size> alone (no rtol/atol)."
        )
    accepts = [Direct, Forward] + ([Backsolve] if _backsolve_ok(config.solver) else [])
    hint = (
        "nde.Backsolve() needs a Stratonovich solver of a single term ('heun' or "
        "'midpoint'); Interpolating and Quadrature are ODE adjoints"
    )
    return config.for_model(owner, accepts, Direct, hint)


def sde_terms(
    config: SolveConfig,
    drift: Callable,
    diffusion: Callable,
    t0,
    t1,
    bm_shape: jax.ShapeDtypeStruct,
    key: jax.Array,
    brownian: str,
    owner: str,
    both: Callable | None = None,
) -> diffrax.MultiTerm:
    """drift dt + diffusion dW for a solve on [t0, t1], W of shape/dtype `bm_shape` with the
    Lévy area `config`'s solver needs: a `GridBrownianPath` on the solve's constant-step grid
    (`brownian="grid"`) or a `diffrax.VirtualBrownianTree` of tolerance dt0 / 16 (`"tree"`).
    `both(t, y, args) -> (drift, diagonal of the diffusion)`, if given, evaluates the two
    together (`JointTerms`)."""
    # checked again here: a model whose config was swapped (eqx.tree_at) after it was built
    brownian = resolve_brownian(brownian, config.sensitivity, owner)
    path = brownian_path(brownian, t0, t1, config.dt0, bm_shape, key, _levy_area(config.solver))
    terms = (diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, path))
    return diffrax.MultiTerm(*terms) if both is None else JointTerms(*terms, both)


class JointTerms(diffrax.MultiTerm):
    """drift dt + diagonal diffusion dW, as `diffrax.MultiTerm(ODETerm, ControlTerm)`, for a
    drift that computes the diffusion anyway: `both(t, y, args)` returns the drift and the
    diffusion's diagonal from one evaluation.

    Why: the latent SDE's drift carries the KL integrand ½|(f - h) / g|², so evaluating drift
    and diffusion separately runs the diffusion networks twice at every step, and XLA does not
    merge the two copies. Solvers that evaluate the whole term at a point (`vf`, `vf_prod`:
    Euler, Heun, midpoint, ...) now evaluate it once, with the same operations as before; those
    that evaluate drift and diffusion at different points (stochastic Runge–Kutta, Milstein)
    use the two terms, as for any `MultiTerm`.

    Example:
        >>> import diffrax, jax.numpy as jnp
        >>> from neuraldiffeq.models.sde import JointTerms
        >>> bm = diffrax.UnsafeBrownianPath(shape=(2,), key=jax.random.key(0))
        >>> drift, diffusion = (lambda t, y, a: -y), (lambda t, y, a: 0.1 * y)
        >>> terms = JointTerms(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm),
        ...                    lambda t, y, a: (-y, 0.1 * y))
        >>> f, g = terms.vf(0.0, jnp.ones(2), None)
        >>> f.tolist(), g.as_matrix().tolist()
        ([-1.0, -1.0], [[0.10000000149011612, 0.0], [0.0, 0.10000000149011612]])
    """

    joint: diffrax.AbstractTerm  # `both` as a term: diffeqsolve wraps it like the others

    def __init__(self, drift: diffrax.ODETerm, diffusion: diffrax.ControlTerm, both: Callable):
        self.terms = (drift, diffusion)
        self.joint = _BothFields(both)

    def vf(self, t, y, args):
        f, g = self.joint.vf(t, y, args)
        return f, lx.DiagonalLinearOperator(g)

    def vf_prod(self, t, y, args, control):
        return self.prod(self.vf(t, y, args), control)


class _Diagonal(eqx.Module):
    """diffusion(t, y) of shape (D,) as the diagonal operator diffrax's ControlTerm expects."""

    fn: Callable

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(self.fn(t, y, args))


class _BothFields(diffrax.AbstractTerm):
    """The vector fields of `JointTerms`, in a term of their own so that `diffrax.diffeqsolve`
    wraps it as it wraps every term (its `WrapTerm` flips time for solves backwards)."""

    both: Callable

    def vf(self, t, y, args):
        return self.both(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        raise NotImplementedError("JointTerms multiplies by the controls of its two terms")


def _backsolve_ok(solver) -> bool:
    # diffrax: BacksolveAdjoint needs a Stratonovich solver taking one (non-Multi) term;
    # ReversibleHeun passes that check but its backsolve gradients are wrong (they disagree
    # with finite differences), so no.
    return (
        isinstance(solver, diffrax.AbstractStratonovichSolver)
        and solver.term_structure is diffrax.AbstractTerm
        and not isinstance(solver, diffrax.ReversibleHeun)
    )


def _levy_area(solver):
    needed = getattr(solver, "minimal_levy_area", None)
    if needed is None or issubclass(diffrax.BrownianIncrement, needed):
        return diffrax.BrownianIncrement
    if issubclass(diffrax.SpaceTimeLevyArea, needed):
        return diffrax.SpaceTimeLevyArea
    return diffrax.SpaceTimeTimeLevyArea
