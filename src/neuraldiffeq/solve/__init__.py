"""The solve layer: solver names, the one solve configuration, sensitivities (diffrax adjoints and
the continuous adjoints), interpolation, stiffness estimation, and the solvers diffrax lacks
(DDE, Radau IIA for DAEs).

It imports nothing above it (models, fitting, input/output, the command line): every model is
built on it, and nothing here knows about training.
"""

from .brownian import GridBrownianPath
from .config import SolveConfig
from .dde import DDESolution, solve_dde
from .errors import SolveError
from .events import Event, HybridSolution, Schedule
from .interpolation import Interpolation, interpolation_coeffs
from .names import IMPLICIT_SOLVERS, ODE_SOLVERS, SDE_SOLVERS, implicit_solver, resolve_solver
from .sensitivity import (
    AbstractSensitivity,
    Backsolve,
    Direct,
    Forward,
    Interpolating,
    Quadrature,
    resolve_sensitivity,
)

__all__ = [
    "Event",
    "HybridSolution",
    "Schedule",
    "IMPLICIT_SOLVERS",
    "ODE_SOLVERS",
    "SDE_SOLVERS",
    "AbstractSensitivity",
    "Backsolve",
    "DDESolution",
    "GridBrownianPath",
    "Direct",
    "Forward",
    "Interpolating",
    "Interpolation",
    "Quadrature",
    "SolveConfig",
    "SolveError",
    "implicit_solver",
    "interpolation_coeffs",
    "resolve_sensitivity",
    "resolve_solver",
    "solve_dde",
]
