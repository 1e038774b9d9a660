"""Solvers: diffrax's by name, plus what diffrax lacks (the DDE solver)."""

from .dde import DDESolution, solve_dde
from .names import IMPLICIT_SOLVERS, ODE_SOLVERS, SDE_SOLVERS, implicit_solver, resolve_solver

__all__ = [
    "IMPLICIT_SOLVERS",
    "ODE_SOLVERS",
    "SDE_SOLVERS",
    "DDESolution",
    "implicit_solver",
    "resolve_solver",
    "solve_dde",
]
