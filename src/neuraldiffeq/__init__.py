"""neuraldiffeq: neural differential equations in JAX (diffrax + equinox + optax)."""

from . import datasets
from .data import TimeSeries
from .fitting import (
    PRESETS,
    AbstractStrategy,
    FitFailure,
    FitResult,
    Stage,
    Trajectory,
    fit,
    losses,
)
from .models import Autonomous, NeuralODE, autonomous
from .models import AugmentedNeuralODE, LatentODE, ODEBlock
from .fitting import ELBO
from .fitting import Collocation, MultipleShooting, SegmentStates, collocate
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
from .models import NeuralDDE, NeuralSDE
from .fitting import MomentMatching
from .solvers import DDESolution, solve_dde
from .fitting.likelihood import MaximumLikelihood
from .models.cnf import FFJORD, CNFStats
from .models.concat_squash import ConcatSquashLinear, ConcatSquashMLP

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
]
