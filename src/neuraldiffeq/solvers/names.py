"""Solver lookup by name, so users can write `solver="tsit5"` and get a clear error on a typo."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping

import diffrax

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


def resolve_solver(
    solver: str | diffrax.AbstractSolver,
    table: Mapping[str, Callable[[], diffrax.AbstractSolver]] = ODE_SOLVERS,
    argname: str = "solver",
) -> diffrax.AbstractSolver:
    """A diffrax solver instance from a name in `table` (case-insensitive) or an instance.

    Example:
        >>> from neuraldiffeq.solvers import resolve_solver
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
