"""Solvers: diffrax's by name, plus what diffrax lacks (the DDE solver)."""

from .names import ODE_SOLVERS, resolve_solver

__all__ = ["ODE_SOLVERS", "resolve_solver"]
