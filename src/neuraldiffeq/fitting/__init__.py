"""Fitting: losses, strategies and the training loop."""

from . import losses, presets
from .collocation import KERNELS, Collocation, collocate
from .elbo import ELBO
from .failure_policy import FailurePolicyState, check_failures, failure_policy
from .fit import FitFailure, FitResult, fit
from .likelihood import MaximumLikelihood
from .moments import MomentMatching
from .presets import PRESETS
from .shooting import MultipleShooting, SegmentStates, segment_ranges
from .stage import Stage
from .strategies import AbstractStrategy, Trajectory
from .supervised import Classification, Regression

__all__ = [
    "KERNELS",
    "PRESETS",
    "AbstractStrategy",
    "Classification",
    "Collocation",
    "ELBO",
    "FailurePolicyState",
    "FitFailure",
    "FitResult",
    "MaximumLikelihood",
    "MomentMatching",
    "MultipleShooting",
    "Regression",
    "SegmentStates",
    "Stage",
    "Trajectory",
    "check_failures",
    "collocate",
    "failure_policy",
    "fit",
    "losses",
    "presets",
    "segment_ranges",
]
