"""Solvers: diffrax's by name, plus what diffrax lacks (the DDE solver)."""

from .dde import DDESolution, solve_dde
from .names import ODE_SOLVERS, SDE_SOLVERS, resolve_solver

__all__ = ["ODE_SOLVERS", "SDE_SOLVERS", "DDESolution", "resolve_solver", "solve_dde"]
