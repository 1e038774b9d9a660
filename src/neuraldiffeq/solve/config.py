"""`SolveConfig`: how every model solves its equation, defined, validated and documented once.

A solve is set by four things, the same for every model (`NeuralODE`, `NeuralSDE`, `NeuralDDE`
and `solve_dde`, `FFJORD`, `ODEBlock`, `LatentODE`, `AugmentedNeuralODE`):

- `solver`: a diffrax solver, or its name (`"tsit5"`, `"dopri5"`, `"kvaerno5"`, `"euler"`,
  `"milstein"`, ...; see `neuraldiffeq.solve.ODE_SOLVERS` and `SDE_SOLVERS`), or `"auto"`
  (ODEs): `"tsit5"` or, for a stiff equation, `"kvaerno5"`, `"radau5"` or `"bdf"` (by size and
  rtol, `neuraldiffeq.solve.stiffness.implicit_for`), chosen from a stiffness estimate at
  the initial state before solving (`neuraldiffeq.solve.stiffness`; `model.resolve_solver(ts,
  y0, args)` records the choice as `model.solver`, and `nde.fit` does that before compiling).
  Implicit solvers (`"kvaerno3/4/5"`, `"kencarp3/4/5"`, `"implicit_euler"`) solve each stage by
  a Newton (chord) iteration whose tolerances are by default the step-size rule's rtol/atol;
  set them with `neuraldiffeq.solve.implicit_solver("kvaerno5", newton_rtol=...,
  newton_atol=...)`;
- the step-size rule, by ONE rule:
    * `rtol` and/or `atol` given: adaptive steps (diffrax `PIDController`); `dt0`, if also
      given, is only the first step. The solver needs an error estimate (not `"euler"`).
    * `dt0` given alone: constant steps of `dt0`, with any solver.
    * none of the three: the model's default (adaptive at its default tolerances for ODE-like
      models, constant steps for `NeuralSDE`); a solver without an error estimate then needs
      `dt0`.
  A missing one of `rtol`/`atol` takes the model's default (standalone: 1e-3 / 1e-6);
- `max_steps`: the most steps one solve may take before it counts as failed; `None` (constant
  steps only) takes exactly as many as the interval needs. Left out, it is the model's default
  (4096 for most), except that `solver="auto"` gives the implicit solver it picks for a stiff
  problem `STIFF_MAX_STEPS` (65536): tight tolerances on a stiff problem take many small,
  often rejected steps (the Oregonator at rtol = atol = 1e-8 takes about 20 000 Kvaerno5 steps,
  half of them rejected; tests/test_solve_failures.py checks it finishes). A `max_steps` given
  by hand is kept as given;
- `sensitivity`: how gradients flow through the solve (`neuraldiffeq.solve.sensitivity`: `Direct`,
  `Backsolve`, `Forward`, `Interpolating`, `Quadrature` or `"auto"`); each model resolves
  `"auto"` when it is built and refuses, with a `ValueError` naming the ones it accepts, a
  sensitivity it cannot honour.

Every constructor takes either the keyword shortcuts (`solver=`, `rtol=`, `atol=`, `dt0=`,
`max_steps=`, `sensitivity=`) or one `config=nde.SolveConfig(...)`, not both.

A solve that fails (too many steps, a collapsed step size, a Newton iteration that diverged)
raises `nde.SolveError`, naming the cause and the fix, when it runs outside compiled code; inside
`jax.jit`, `jax.grad` or `jax.vmap` (so inside every training step) there is nothing to raise
in, and its values are `FAILED` (`inf`), so the loss is `inf` and `nde.fit` skips the step (see
`on_failure` and `neuraldiffeq.solve.errors`). `model.solve(...)` returns the diffrax
`Solution`, whose `result` says what happened, without raising, under `jax.jit` too.

Example:
    >>> import jax.numpy as jnp, neuraldiffeq as nde
    >>> config = nde.SolveConfig("tsit5", rtol=1e-6, atol=1e-8, sensitivity=nde.Backsolve())
    >>> config.adaptive
    True
    >>> nde.SolveConfig("euler", dt0=0.1).adaptive  # dt0 alone: constant steps
    False
    >>> model = nde.NeuralODE(lambda t, y, args: -y, config=config)
    >>> round(float(model(jnp.linspace(0, 1, 3), jnp.ones(1))[-1, 0]), 5)
    0.36788
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import as_array, check_positive, is_concrete
from .bdf import BDF
from .errors import SolveError, failure_message, reason_of, step_counts
from .names import ODE_SOLVERS, SDE_SOLVERS, resolve_solver
from .sensitivity import AbstractSensitivity, Direct, Forward, Quadrature, resolve_sensitivity
from .stiffness import estimate_stiffness
from .structure import as_jacobian, needs_detection, resolve_pattern, with_structure

#: Standalone defaults of the adaptive tolerances (a model may have its own).
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-6

#: The value of a failed solve, in every model.
FAILED = jnp.inf

#: The `max_steps` of a model that is not given one (most models; `NeuralDDE` has its own).
DEFAULT_MAX_STEPS = 4096

#: The `max_steps` that `solver="auto"` gives the implicit solver it picks for a stiff problem
#: when `max_steps` was left out. Stiff problems at tight tolerances take many small steps, about
#: half of them rejected: the Oregonator over [0, 360] at rtol = atol = 1e-8 takes about 20 000
#: Kvaerno5 steps. 2**16 leaves three times that, and costs nothing while unused except with the
#: dense-output sensitivities (Interpolating, Quadrature), whose buffers grow with max_steps.
STIFF_MAX_STEPS = 65_536

#: The solver name chosen per problem from a stiffness estimate (`neuraldiffeq.solve.stiffness`).
AUTO = "auto"

#: The keyword shortcuts every model constructor accepts.
SHORTCUTS = ("solver", "rtol", "atol", "dt0", "max_steps", "sensitivity")


def shortcuts(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword shortcuts among a constructor's arguments (`shortcuts(locals())`).

    Every model constructor lists the shortcuts in its signature (so editors and `help` show
    them) and hands them to `build_config` through this one function.

    Example:
        >>> from neuraldiffeq.solve.config import shortcuts
        >>> shortcuts(dict(solver="tsit5", rtol=1e-6, atol=None, dt0=None, max_steps=None,
        ...                sensitivity=None, field=print))["rtol"]
        1e-06
    """
    return {name: arguments[name] for name in SHORTCUTS}


class SolveConfig(eqx.Module):
    """One solve configuration: a solver, a step-size rule, `max_steps` and a sensitivity.

    See the module docstring (`neuraldiffeq.solve.config`) for the step-size rule.

    Arguments:
        solver: a diffrax solver, a name from `neuraldiffeq.solve` (ODE or SDE names), or
            `"auto"` (ODE models: explicit or implicit by stiffness, see `resolve_solver`).
        rtol, atol: tolerances of adaptive steps.
        dt0: constant step (given alone), or the first adaptive step (given with tolerances).
        max_steps: a positive integer, `None` with constant steps (as many as needed), or
            `"auto"` (the default): `DEFAULT_MAX_STEPS`, or `STIFF_MAX_STEPS` for the implicit
            solver that `solver="auto"` picks for a stiff problem.
        sensitivity: an `nde.Direct()`, ... instance, a lower-case name, or `"auto"`.
        jacobian: for `solver="bdf"`, `"radau5"`, `"kvaerno3"`, `"kvaerno4"`, `"kvaerno5"`
            and `"implicit_euler"` (`neuraldiffeq.solve.structure`): `"dense"`, `"sparse"`
            (the sparsity pattern detected before the first solve) or the pattern (a
            `neuraldiffeq.solve.jacobian.SparsityPattern`, an (n, n) boolean matrix or a SciPy
            sparse matrix, checked against the field on a random state). Any other solver
            refuses a sparse one. See docs/howto/stiff-problems.md.
        linear_solve: for the same solvers: `"dense"`, `"blocks"` (independent blocks),
            `"sparse"` (SuperLU) or `"auto"` (by size); `"krylov"` (GMRES) for `"bdf"` only.
            See `neuraldiffeq.solve.linear`.

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.SolveConfig("dopri5", rtol=1e-5).atol  # the other tolerance: its default
        1e-06
        >>> nde.SolveConfig("euler")
        Traceback (most recent call last):
        ...
        ValueError: solver Euler has no error estimate, so it takes constant steps: pass dt0=<step size> alone, or choose an adaptive solver such as 'tsit5'.
    """  # noqa: E501

    solver: diffrax.AbstractSolver | str  # str: only "auto", before it is resolved
    sensitivity: AbstractSensitivity | str
    rtol: float | None = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    dt0: float | None = eqx.field(static=True)
    max_steps: int | None | str = eqx.field(static=True)  # str: "auto", while solver is too
    jacobian: Any = eqx.field(static=True, default=None)
    linear_solve: str | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        solver: str | diffrax.AbstractSolver = "tsit5",
        *,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None | str = AUTO,
        sensitivity: AbstractSensitivity | str = "auto",
        jacobian: Any = None,
        linear_solve: str | None = None,
    ):
        auto = isinstance(solver, str) and solver.lower() == AUTO
        if auto:  # chosen per problem (solvers.stiffness), both candidates adaptive
            solver = AUTO
        elif isinstance(solver, str):
            solver = resolve_solver(solver, {**SDE_SOLVERS, **ODE_SOLVERS})
        else:
            solver = resolve_solver(solver)
        if not auto:  # "auto": applied to the solver it chooses (resolve_solver)
            solver = with_structure(solver, jacobian, linear_solve)
        for name, value in (("rtol", rtol), ("atol", atol), ("dt0", dt0)):
            if value is not None:
                check_positive(value, name)
        adaptive = not (dt0 is not None and rtol is None and atol is None)
        if adaptive:
            rtol = DEFAULT_RTOL if rtol is None else rtol
            atol = DEFAULT_ATOL if atol is None else atol
            if not auto and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
                name = type(solver).__name__
                if dt0 is None:
                    raise ValueError(
                        f"solver {name} has no error estimate, so it takes constant steps: pass "
                        "dt0=<step size> alone, or choose an adaptive solver such as 'tsit5'."
                    )
                raise ValueError(
                    f"solver {name} has no error estimate, so rtol/atol (adaptive steps) cannot "
                    "be honoured: pass dt0 alone for constant steps, or choose an adaptive "
                    "solver such as 'tsit5'."
                )
        if isinstance(max_steps, str) and max_steps.lower() == AUTO:
            # Only solver="auto" decides later (resolve_solver); any named solver: the default.
            max_steps = AUTO if auto else DEFAULT_MAX_STEPS
        elif max_steps is None:
            if adaptive:
                raise ValueError(
                    "max_steps=None (as many steps as the interval needs) is for constant steps "
                    "(dt0 alone); adaptive steps need a positive integer max_steps."
                )
        elif not (isinstance(max_steps, int | np.integer) and max_steps > 0):
            raise ValueError(
                f"max_steps must be a positive integer (or 'auto', or None with constant steps), "
                f"got {max_steps!r}."
            )
        if not (isinstance(sensitivity, str) and sensitivity.lower() == "auto"):
            sensitivity = resolve_sensitivity(sensitivity, 0, 0)
        self.solver = solver
        self.sensitivity = sensitivity
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.dt0 = None if dt0 is None else float(dt0)
        self.max_steps = max_steps if max_steps is None or max_steps == AUTO else int(max_steps)
        self.jacobian = as_jacobian(jacobian)
        self.linear_solve = linear_solve

    # -- the rule -------------------------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        """True for adaptive steps (tolerances set), False for constant steps of `dt0`."""
        return self.rtol is not None

    def stepsize_controller(
        self, dtmax: float | None = None, jump_ts=None
    ) -> diffrax.AbstractStepSizeController:
        """The step-size controller of this configuration: the only place one is built.

        `jump_ts`: times where the vector field jumps (a CDE's piecewise-linear control);
        adaptive steps stop there instead of rejecting steps across them. Constant steps keep
        their grid.

        Example:
            >>> import neuraldiffeq as nde
            >>> type(nde.SolveConfig(rtol=1e-4).stepsize_controller()).__name__
            'PIDController'
        """
        if self.adaptive:
            return diffrax.PIDController(
                rtol=self.rtol, atol=self.atol, dtmax=dtmax, jump_ts=jump_ts
            )
        return diffrax.ConstantStepSize()

    def steps_for(self, t0, t1) -> int:
        """`max_steps`, or with `max_steps=None` the constant steps [t0, t1] needs (+2 spare)."""
        if self.max_steps == AUTO:  # solver="auto" not resolved yet: see resolve_solver
            return DEFAULT_MAX_STEPS
        if self.max_steps is not None:
            return self.max_steps
        if is_concrete(t0) and is_concrete(t1):
            return int(np.ceil(abs(float(t1) - float(t0)) / self.dt0)) + 2
        return 4096

    def replace(self, **changes) -> SolveConfig:
        """A new configuration with some settings changed (validated again; `"auto"` is kept
        only if the sensitivity was never resolved).

        Example:
            >>> import neuraldiffeq as nde
            >>> nde.SolveConfig(rtol=1e-3).replace(rtol=1e-6).rtol
            1e-06
        """
        held = (*SHORTCUTS, "jacobian", "linear_solve")
        unknown = set(changes) - set(held)
        if unknown:
            raise ValueError(f"SolveConfig has no {sorted(unknown)}; it holds {list(held)}.")
        settings = {name: getattr(self, name) for name in held}
        settings.update(changes)
        solver = settings.pop("solver")
        return SolveConfig(solver, **settings)

    # -- the one call ---------------------------------------------------------------------------

    def diffeqsolve(
        self,
        terms: Any,
        t0,
        t1,
        y0,
        *,
        args: Any = None,
        saveat: diffrax.SaveAt,
        throw: bool = False,
        backwards: bool = False,
        jump_ts=None,
        model: str = "SolveConfig.diffeqsolve",
    ) -> diffrax.Solution:
        """`diffrax.diffeqsolve` with this configuration (`backwards`: t1 < t0, dt0 negated;
        `jump_ts`: see `stepsize_controller`).

        The sensitivity is the diffrax adjoint; "auto" must have been resolved by the model.
        `throw=True`: a failed solve raises `nde.SolveError` (with its cause and fix) when the
        result is concrete, or diffrax's run-time error inside compiled code; `throw=False`
        (the default): the `Solution` says what happened in its `result`. `model`: the name
        the error message gives the solve.

        Example:
            >>> import diffrax, jax.numpy as jnp, neuraldiffeq as nde
            >>> config = nde.SolveConfig("tsit5", rtol=1e-6, sensitivity=nde.Direct())
            >>> sol = config.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -y), 0.0, 1.0,
            ...                          jnp.ones(1), saveat=diffrax.SaveAt(t1=True))
            >>> round(float(sol.ys[0, 0]), 5)
            0.36788
        """
        if isinstance(self.sensitivity, str):
            raise ValueError(
                "sensitivity='auto' is resolved by a model when it is built; pass a concrete "
                "sensitivity (e.g. nde.Direct()) to SolveConfig.diffeqsolve."
            )
        config = self
        if isinstance(self.solver, str):  # "auto", not resolved by the model: choose for this call
            config = self.resolve_solver(terms, t0, t1, y0, args)
        solver = resolve_pattern(config.solver, terms, t0, y0, args)  # jacobian="sparse": detect
        dt0 = None if config.dt0 is None else (-config.dt0 if backwards else config.dt0)
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=saveat,
            stepsize_controller=config.stepsize_controller(jump_ts=jump_ts),
            adjoint=config.sensitivity,
            max_steps=config.steps_for(t0, t1),
            throw=False,  # decided below: our error where the result is concrete
        )
        if throw:
            if is_concrete(diffrax.is_okay(sol.result)):  # the code is an enumeration item
                on_failure(sol, None, config=config, model=model)
            else:  # compiled: diffrax's own run-time check, as diffeqsolve(throw=True) does
                sol = sol.result.error_if(sol, jnp.invert(diffrax.is_okay(sol.result)))
        return sol

    def resolve_solver(self, terms: Any, t0, t1, y0, args: Any = None) -> SolveConfig:
        """This configuration with `solver="auto"` replaced by the solver chosen for the ODE
        `terms` (a `diffrax.ODETerm` or a vector field `f(t, y, args)`) on [t0, t1] from `y0`;
        unchanged if the solver is not `"auto"`. Needs concrete values (not under `jax.jit`).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> config = nde.SolveConfig("auto", rtol=1e-6)
            >>> config.solver
            'auto'
            >>> stiff = config.resolve_solver(lambda t, y, a: -1e5 * y, 0.0, 1.0, jnp.ones(1))
            >>> type(stiff.solver).__name__, stiff.max_steps  # small, stiff, tight rtol: Radau IIA
            ('Radau5', 65536)
        """
        if not isinstance(self.solver, str):
            return self
        if isinstance(terms, diffrax.ODETerm):
            field = terms.vector_field
        elif callable(terms) and not isinstance(terms, diffrax.AbstractTerm):
            field = terms
        else:
            raise ValueError(
                "solver='auto' chooses between ODE solvers ('tsit5', 'kvaerno5'); this solve's "
                f"terms are {type(terms).__name__}: pass a solver by name instead."
            )
        rtol = DEFAULT_RTOL if self.rtol is None else self.rtol
        atol = DEFAULT_ATOL if self.atol is None else self.atol
        chosen = estimate_stiffness(field, t0, t1, y0, args, rtol=rtol, atol=atol).solver
        extra = {}
        if self.jacobian not in (None, "dense") or self.linear_solve not in (None, "dense"):
            if chosen == "tsit5":  # an explicit solver forms no Jacobian
                extra = dict(jacobian=None, linear_solve=None)
            else:
                chosen = "bdf"  # the solver built for large sparse systems (and Krylov)
        max_steps = self.max_steps
        if max_steps == AUTO:  # left out: room for the many small steps of a stiff problem
            implicit = isinstance(resolve_solver(chosen), diffrax.AbstractImplicitSolver)
            max_steps = STIFF_MAX_STEPS if implicit else DEFAULT_MAX_STEPS
        return self.replace(solver=chosen, max_steps=max_steps, **extra)

    # -- models' side ---------------------------------------------------------------------------

    def for_model(
        self,
        model: str,
        accepts: Sequence[type] | None,
        auto: Callable[[], AbstractSensitivity],
        hint: str = "",
    ) -> SolveConfig:
        """This configuration with `"auto"` resolved by `auto()`, checked against `accepts` (the
        sensitivity classes the model can honour; None = all of them).

        Example:
            >>> import neuraldiffeq as nde
            >>> config = nde.SolveConfig(sensitivity=nde.Backsolve())
            >>> config.for_model("NeuralDDE", [nde.Direct], nde.Direct)
            Traceback (most recent call last):
            ...
            ValueError: NeuralDDE cannot honour sensitivity=Backsolve(); it accepts nde.Direct() (or 'auto').
        """  # noqa: E501
        sensitivity = self.sensitivity
        if isinstance(self.solver, BDF):
            # BDF steps a state of shape (n,): Quadrature's backward state is the adjoint alone
            # (its Jacobian -Jᵀ, solved by BDF with the pattern transposed); Interpolating's
            # also holds the parameter gradient, and Backsolve re-solves the state backwards,
            # unstable where the problem is stiff (its decaying modes grow backwards)
            bdf_ok = (Direct, Forward, Quadrature)
            accepts = [c for c in (accepts or bdf_ok) if c in bdf_ok]
            hint = (
                "with solver='bdf', Backsolve re-solves the stiff state backwards (unstable) "
                "and Interpolating's backward state holds the parameter gradient, which BDF's "
                "(n,) state cannot"
            ) + (f"; {hint}" if hint else "")
            if isinstance(sensitivity, str):  # "auto": as before, a discrete or forward one
                sensitivity = [c for c in accepts if c in (Direct, Forward)][0]()
        if isinstance(sensitivity, str):
            sensitivity = auto()
        if accepts is not None and not isinstance(sensitivity, tuple(accepts)):
            options = ", ".join(f"nde.{cls.__name__}()" for cls in accepts)
            raise ValueError(
                f"{model} cannot honour sensitivity={sensitivity!r}; it accepts {options} (or "
                f"'auto'){'. ' + hint if hint else ''}."
            )
        return self.replace(sensitivity=sensitivity)


def build_config(
    model: str,
    config: SolveConfig | None,
    given: Mapping[str, Any],
    defaults: Mapping[str, Any],
    solvers: Mapping[str, Callable[[], diffrax.AbstractSolver]] = ODE_SOLVERS,
) -> SolveConfig:
    """A model constructor's `SolveConfig`: `config`, or the keyword shortcuts `given` (None =
    not given) over the model's `defaults`, by the step-size rule of the module docstring.

    Example:
        >>> from neuraldiffeq.solve.config import build_config
        >>> defaults = dict(solver="tsit5", rtol=1e-5, atol=1e-5)
        >>> build_config("FFJORD", None, dict(dt0=0.1), defaults).adaptive  # dt0 alone
        False
        >>> build_config("FFJORD", None, dict(rtol=1e-3), defaults).atol  # model's default
        1e-05
    """
    given = {name: value for name, value in given.items() if value is not None}
    if config is not None:
        if not isinstance(config, SolveConfig):
            raise ValueError(
                f"config must be an nde.SolveConfig, got {type(config).__name__}; or pass the "
                f"keyword shortcuts {', '.join(SHORTCUTS)} instead."
            )
        if given:
            raise ValueError(
                f"{model}: pass either config=nde.SolveConfig(...) or the keyword shortcuts "
                f"({', '.join(sorted(given))}), not both."
            )
        return config
    settings = dict(defaults)
    tolerances = {"rtol", "atol"} & given.keys()
    if "dt0" in given and not tolerances:  # dt0 alone: constant steps, no default tolerances
        settings.pop("rtol", None)
        settings.pop("atol", None)
    if tolerances:  # tolerances given: adaptive steps, no default constant step
        settings.pop("dt0", None)
    settings.update(given)
    solver = settings.pop("solver", "tsit5")
    if isinstance(solver, str) and solver.lower() == AUTO:
        if not all(name in solvers for name in ("tsit5", "kvaerno5")):
            raise ValueError(
                f"{model}: solver='auto' chooses between the ODE solvers 'tsit5' and "
                f"'kvaerno5'; pass one of {', '.join(sorted(solvers))} instead."
            )
        if "max_steps" not in given:  # the model's default, or room for a stiff problem
            settings["max_steps"] = AUTO
    elif isinstance(solver, str):  # names are looked up in the model's own table
        solver = resolve_solver(solver, solvers)
    return SolveConfig(solver, **settings)


def on_failure(
    result: Any,
    tree: Any,
    value: float = FAILED,
    *,
    config: SolveConfig | None = None,
    model: str | None = None,
    stats: Mapping[str, Any] | None = None,
) -> Any:
    """`tree` where the solve succeeded; where it failed, `value` (default `FAILED` = inf) inside
    compiled code, and a `SolveError` naming the cause and the fix outside it.

    Every model passes its outputs through this one helper, so a failed solve behaves the same
    everywhere. Inside `jax.jit`, `jax.grad` or `jax.vmap` (every step of `nde.fit`) the result
    code is traced and no Python error can be raised: states are `inf`, and quantities whose
    loss is their negative (log-densities, ELBOs) are `-inf`, so every loss is `inf` and
    `nde.fit` skips the step. Called directly, the result code is concrete, and a failure raises
    `nde.SolveError` (`neuraldiffeq.solve.errors`) instead of returning `inf` without a word.

    Arguments:
        result: diffrax's result code, or a solution holding one (`.result`, and `.stats` with
            its step counts, e.g. a `diffrax.Solution`).
        tree: the outputs of the solve (with a batch of result codes, their leading axes are
            the batch's).
        value: the value of a failed output inside compiled code.
        config, model, stats: what the error message reports (the solve configuration, the
            model's name, step counts); `stats` defaults to the solution's.

    Example:
        >>> import diffrax, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.solve.config import on_failure
        >>> jax.jit(on_failure)(diffrax.RESULTS.max_steps_reached, jnp.zeros(2))
        Array([inf, inf], dtype=float32)
        >>> try:
        ...     on_failure(diffrax.RESULTS.max_steps_reached, jnp.zeros(2), model="NeuralODE")
        ... except nde.SolveError as e:
        ...     print(str(e)[:73])
        NeuralODE: the solve failed: it reached its max_steps (the most steps one
    """
    if hasattr(result, "result"):  # a solution
        stats = getattr(result, "stats", None) if stats is None else stats
        result = result.result
    ok = diffrax.is_okay(result)  # success, or a terminating event
    if not is_concrete(ok):

        def fill(x):  # a batch of result codes covers the leading axes of each output
            ok_x = jnp.reshape(ok, jnp.shape(ok) + (1,) * (jnp.ndim(x) - jnp.ndim(ok)))
            return jnp.where(ok_x, x, jnp.asarray(value, x.dtype))

        return jax.tree_util.tree_map(fill, tree)
    ok = np.asarray(ok)
    if ok.all():  # called eagerly: no program to compile
        return tree
    if ok.ndim and stats is not None:  # a batch: the step counts of its first failure
        first = int(np.flatnonzero(~ok.reshape(-1))[0])
        stats = {
            key: np.asarray(v).reshape(-1)[first] if np.size(v) == ok.size else v
            for key, v in stats.items()
        }
    message = failure_message(
        result,
        model=model or "the solve",
        config=config,
        stats=stats,
        failed=int((~ok).sum()),
        total=int(ok.size),
        stiff_max_steps=STIFF_MAX_STEPS,
    )
    raise SolveError(
        message, model=model or "the solve", reason=reason_of(result), stats=step_counts(stats)
    )


class HasSolveConfig(eqx.Module):
    """A model with a `config: SolveConfig`; its settings are readable as attributes."""

    @property
    def solver(self) -> diffrax.AbstractSolver | str:
        """The solver in use (`"auto"` until `resolve_solver` chose one)."""
        return self.config.solver

    def resolve_solver(self, ts, y0, args: Any = None) -> HasSolveConfig:
        """This model with `solver="auto"` replaced by the solver chosen for solving from `y0`
        over `ts` (explicit `"tsit5"`, or implicit `"kvaerno5"` when the stiffness estimate of
        `neuraldiffeq.solve.stiffness` says so); the model itself if its solver is not
        `"auto"`. Call it outside `jax.jit` (`nde.fit` calls it before compiling).

        Example:
            >>> import jax.numpy as jnp, neuraldiffeq as nde
            >>> model = nde.NeuralODE(lambda t, y, k: -k * y, solver="auto")
            >>> ts = jnp.linspace(0.0, 10.0, 5)
            >>> type(model.resolve_solver(ts, jnp.ones(2), 1e4).solver).__name__
            'Kvaerno5'
            >>> type(model.resolve_solver(ts, jnp.ones(2), 1.0).solver).__name__
            'Tsit5'
        """
        if not isinstance(self.config.solver, str) and not needs_detection(self.config.solver):
            return self
        field = getattr(self, "vector_field", None)
        if field is None:
            raise ValueError(
                f"{type(self).__name__} has no vector_field, so solver='auto' cannot estimate "
                "its stiffness: pass a solver by name, e.g. 'tsit5' or 'kvaerno5'."
            )
        ts = np.asarray(ts) if is_concrete(ts) else ts  # end points without compiled slices
        config = self.config.resolve_solver(field, ts[0], ts[-1], as_array(y0), args)
        solver = resolve_pattern(config.solver, field, ts[0], as_array(y0), args)
        config = eqx.tree_at(lambda c: c.solver, config, solver)
        return eqx.tree_at(lambda m: m.config, self, config)

    @property
    def sensitivity(self) -> AbstractSensitivity:
        """The sensitivity in use ("auto" already resolved when the model was built)."""
        return self.config.sensitivity

    @property
    def rtol(self) -> float | None:
        return self.config.rtol

    @property
    def atol(self) -> float | None:
        return self.config.atol

    @property
    def dt0(self) -> float | None:
        return self.config.dt0

    @property
    def max_steps(self) -> int | None:
        return self.config.max_steps
