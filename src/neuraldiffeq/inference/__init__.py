"""Inference on fitted models: equation discovery (PySINDy) and Bayesian posteriors (NUTS).

- `discovery`: `Library`, `SparseTerm`, `discover` -> `Discovery` (a formula for a network);
- `priors`: `Prior` and `Normal`, `LogNormal`, `HalfNormal`, `Uniform`;
- `posterior`: `sample_posterior` -> `Posterior`, `posterior_predictive`;
- `plots`: the pictures of both.
"""

from . import priors
from .discovery import Discovery, Library, SparseTerm, discover
from .posterior import Posterior, PosteriorWarning, posterior_predictive, sample_posterior
from .priors import Prior

__all__ = [
    "Discovery",
    "Library",
    "Posterior",
    "PosteriorWarning",
    "Prior",
    "SparseTerm",
    "discover",
    "posterior_predictive",
    "priors",
    "sample_posterior",
]
