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
from .sensitivity import AbstractSensitivity, Backsolve, Direct, Forward, resolve_sensitivity
from .serialisation import load, save

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AbstractSensitivity",
    "AbstractStrategy",
    "Autonomous",
    "Backsolve",
    "Direct",
    "FitFailure",
    "FitResult",
    "Forward",
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
