"""Fitting: losses, strategies and the training loop."""

from . import losses, presets
from .collocation import KERNELS, Collocation, collocate
from .elbo import ELBO
from .fit import FitFailure, FitResult, fit
from .likelihood import MaximumLikelihood
from .moments import MomentMatching
from .shooting import MultipleShooting, SegmentStates, segment_ranges
from .stage import Stage
from .strategies import PRESETS, AbstractStrategy, Trajectory

__all__ = [
    "KERNELS",
    "PRESETS",
    "AbstractStrategy",
    "Collocation",
    "ELBO",
    "FitFailure",
    "FitResult",
    "MaximumLikelihood",
    "MomentMatching",
    "MultipleShooting",
    "SegmentStates",
    "Stage",
    "Trajectory",
    "collocate",
    "fit",
    "losses",
    "presets",
    "segment_ranges",
]
