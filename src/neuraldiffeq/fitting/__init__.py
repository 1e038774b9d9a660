"""Fitting: losses, strategies and the training loop."""

from . import losses
from .fit import FitFailure, FitResult, Stage, fit
from .strategies import PRESETS, AbstractStrategy, Trajectory

__all__ = [
    "PRESETS",
    "AbstractStrategy",
    "FitFailure",
    "FitResult",
    "Stage",
    "Trajectory",
    "fit",
    "losses",
]
