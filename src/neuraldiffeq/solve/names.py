"""Solver lookup by name, so users can write `solver="tsit5"` and get a clear error on a typo."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping

import diffrax

from .bdf import BDF
from .dae import Radau5

#: ODE solvers by their usual (DifferentialEquations.jl / torchdiffeq) names.
ODE_SOLVERS: Mapping[str, Callable[[], diffrax.AbstractSolver]] = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "ralston": diffrax.Ralston,
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "implicit_euler": diffrax.ImplicitEuler,
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "kencarp3": diffrax.KenCarp3,
    "kencarp4": diffrax.KenCarp4,
    "kencarp5": diffrax.KenCarp5,
    # ours (diffrax has neither): Radau IIA (order 5, `neuraldiffeq.solve.dae`) and the
    # variable-order BDF/NDF for large stiff systems (`neuraldiffeq.solve.bdf`)
    "radau5": Radau5,
    "bdf": BDF,
}


#: SDE solvers by their usual (torchsde / diffrax) names. Itô: "euler" (Euler–Maruyama),
#: "milstein". Stratonovich: "euler_heun", "heun", "midpoint", "reversible_heun",
#: "stratonovich_milstein". Stochastic Runge–Kutta (need space-time Lévy area, which `NeuralSDE`
#: provides): "srk"/"general_shark" (general noise), "spark", "slow_rk" (commutative noise), and
#: for additive noise "shark", "sra1", "sea".
SDE_SOLVERS: Mapping[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "euler_maruyama": diffrax.Euler,
    "milstein": diffrax.ItoMilstein,
    "ito_milstein": diffrax.ItoMilstein,
    "euler_heun": diffrax.EulerHeun,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "reversible_heun": diffrax.ReversibleHeun,
    "stratonovich_milstein": diffrax.StratonovichMilstein,
    "srk": diffrax.GeneralShARK,
    "general_shark": diffrax.GeneralShARK,
    "spark": diffrax.SPaRK,
    "slow_rk": diffrax.SlowRK,
    "shark": diffrax.ShARK,
    "sra1": diffrax.SRA1,
    "sea": diffrax.SEA,
}


#: The implicit ODE solvers: each stage is a nonlinear equation solved by a Newton iteration.
IMPLICIT_SOLVERS = (
    "implicit_euler", "kvaerno3", "kvaerno4", "kvaerno5", "kencarp3", "kencarp4", "kencarp5"
)  # fmt: skip


def implicit_solver(
    name: str,
    *,
    newton_rtol: float | None = None,
    newton_atol: float | None = None,
    kappa: float = 1e-2,
) -> diffrax.AbstractSolver:
    """An implicit solver by name, with the tolerances of its Newton iterations set.

    Each step of an implicit solver solves its stage equations by a simplified Newton (chord)
    iteration (diffrax's `VeryChord`: the Jacobian is factorised once per step), stopping when
    the update is below `newton_atol + newton_rtol * |y|` (in the max norm) or when the
    iteration contracts fast enough (`kappa`); if it does not converge the step is rejected
    and retried smaller. With both tolerances None (the default, and what a solver given by
    name gets) they are the step-size rule's `rtol`/`atol`. Gradients flow through the Newton
    solve by the implicit function theorem, which assumes the stage equations are solved
    exactly: tighter Newton tolerances than the step tolerances give more accurate gradients
    (on Van der Pol with mu = 1000, Newton at 1e-12 agrees with finite differences where Newton
    at the step tolerances does not; tests/test_stiff.py checks it). The
    tolerances must be reachable in the working precision: in float32, Newton tolerances of
    1e-10 are never met, every step is rejected and the solve fails (max_steps).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.solve import implicit_solver
        >>> solver = implicit_solver("kvaerno5", newton_rtol=1e-8, newton_atol=1e-8)
        >>> solver.root_finder.rtol
        1e-08
        >>> model = nde.NeuralODE(lambda t, y, a: -1e3 * y, solver=solver, rtol=1e-6)
        >>> abs(float(model(jnp.array([0.0, 1.0]), jnp.ones(1))[-1, 0])) < 1e-4
        True
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in IMPLICIT_SOLVERS:
        raise ValueError(
            f"implicit_solver takes the name of an implicit solver, one of "
            f"{', '.join(IMPLICIT_SOLVERS)}; got {name!r}."
        )
    if newton_rtol is None and newton_atol is None:
        return ODE_SOLVERS[key]()
    if newton_rtol is None or newton_atol is None:
        raise ValueError(
            "give both newton_rtol and newton_atol (or neither, to use the step tolerances)."
        )
    for arg, value in (
        ("newton_rtol", newton_rtol),
        ("newton_atol", newton_atol),
        ("kappa", kappa),
    ):
        if not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"{arg} must be a positive number, got {value!r}.")
    root_finder = diffrax.VeryChord(rtol=float(newton_rtol), atol=float(newton_atol), kappa=kappa)
    return ODE_SOLVERS[key](root_finder=root_finder)


def resolve_solver(
    solver: str | diffrax.AbstractSolver,
    table: Mapping[str, Callable[[], diffrax.AbstractSolver]] = ODE_SOLVERS,
    argname: str = "solver",
) -> diffrax.AbstractSolver:
    """A diffrax solver instance from a name in `table` (case-insensitive) or an instance.

    Example:
        >>> from neuraldiffeq.solve import resolve_solver
        >>> type(resolve_solver("tsit5")).__name__
        'Tsit5'
    """
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    if not isinstance(solver, str):
        raise ValueError(
            f"{argname} must be a solver name or a diffrax solver instance, "
            f"got {type(solver).__name__}."
        )
    key = solver.lower().replace("-", "_")
    if key not in table:
        close = difflib.get_close_matches(key, list(table), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown {argname} {solver!r}.{hint} Valid names: {', '.join(sorted(table))}; "
            "or pass a diffrax solver instance."
        )
    return table[key]()


def solver_name(solver: object) -> str | None:
    """The name of a solver (its key in `ODE_SOLVERS`/`SDE_SOLVERS`, else its class name);
    `"auto"` as it is; None for None.

    Example:
        >>> import diffrax
        >>> from neuraldiffeq.solve.names import solver_name
        >>> solver_name(diffrax.Kvaerno5()), solver_name("auto")
        ('kvaerno5', 'auto')
    """
    if solver is None or isinstance(solver, str):
        return solver
    for table in (ODE_SOLVERS, SDE_SOLVERS):
        for name, cls in table.items():
            if type(solver) is cls:
                return name
    return type(solver).__name__
