"""neuraldiffeq: neural differential equations in JAX (diffrax + equinox + optax)."""

from . import datasets, transforms
from ._compile import compiler_options
from .data import TimeSeries
from .fitting import (
    ELBO,
    PRESETS,
    AbstractStrategy,
    Collocation,
    FitFailure,
    FitResult,
    MomentMatching,
    MultipleShooting,
    SegmentStates,
    Stage,
    Trajectory,
    collocate,
    fit,
    losses,
)
from .fitting.likelihood import MaximumLikelihood
from .models import (
    AugmentedNeuralODE,
    Autonomous,
    LatentODE,
    NeuralDDE,
    NeuralODE,
    NeuralSDE,
    ODEBlock,
    autonomous,
)
from .models.cnf import FFJORD, CNFStats
from .models.concat_squash import ConcatSquashLinear, ConcatSquashMLP
from .sensitivity import (
    AbstractSensitivity,
    Backsolve,
    Direct,
    Forward,
    Interpolating,
    Quadrature,
    resolve_sensitivity,
)
from .serialisation import load, save
from .solvers import DDESolution, solve_dde

__version__ = "0.1.0"

__all__ = [
    "DDESolution",
    "MomentMatching",
    "NeuralDDE",
    "NeuralSDE",
    "solve_dde",
    "ELBO",
    "Collocation",
    "MultipleShooting",
    "SegmentStates",
    "collocate",
    "compiler_options",
    "AugmentedNeuralODE",
    "LatentODE",
    "ODEBlock",
    "PRESETS",
    "AbstractSensitivity",
    "AbstractStrategy",
    "Autonomous",
    "CNFStats",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "FFJORD",
    "MaximumLikelihood",
    "Backsolve",
    "Direct",
    "FitFailure",
    "FitResult",
    "Forward",
    "Interpolating",
    "Quadrature",
    "NeuralODE",
    "Stage",
    "TimeSeries",
    "Trajectory",
    "autonomous",
    "datasets",
    "fit",
    "load",
    "losses",
    "resolve_sensitivity",
    "save",
    "transforms",
]
