"""neuraldiffeq: neural differential equations in JAX (diffrax + equinox + optax).

Names are imported when first used, so `import neuraldiffeq` (and `neuraldiffeq --help`) does
not pay for JAX, diffrax or matplotlib until a model, a solve or a plot needs them.

Example:
    >>> import neuraldiffeq as nde
    >>> nde.NeuralODE.__name__
    'NeuralODE'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it, grouped by topic; a name equal to its module's last
# part is that module itself (e.g. `nde.datasets`)
_PUBLIC: dict[str, str] = {
    # data
    "TimeSeries": ".io",
    "datasets": ".datasets",
    "transforms": ".models.transforms",
    # models and their solve configuration
    "SolveConfig": ".solve",
    "SolveError": ".solve",
    "GridBrownianPath": ".solve",
    "solvers": ".solve",
    "NeuralODE": ".models",
    "autonomous": ".models",
    "Autonomous": ".models",
    "AugmentedNeuralODE": ".models",
    "ODEBlock": ".models",
    "NeuralSDE": ".models",
    "NeuralDDE": ".models",
    "solve_dde": ".solve",
    "DDESolution": ".solve",
    "FFJORD": ".models",
    "CNFStats": ".models",
    "ConcatSquashLinear": ".models",
    "ConcatSquashMLP": ".models",
    "ConcatSquashConv": ".models",
    "ConcatSquashConvNet": ".models",
    "LatentODE": ".models",
    "NeuralODEMM": ".models",
    "HamiltonianNN": ".models",
    "SeparableHamiltonian": ".models",
    "SecondOrderNeuralODE": ".models",
    "NeuralCDE": ".models",
    "Interpolation": ".solve",
    "interpolation_coeffs": ".solve",
    "LatentSDE": ".models",
    "VAE": ".models",
    "PlanarFlow": ".models",
    # hybrid models: events, scheduled jumps, exogenous inputs
    "HybridODE": ".models",
    "Exogenous": ".models",
    "Event": ".solve",
    "Schedule": ".solve",
    "HybridSolution": ".solve",
    "PerSeries": ".fitting",
    # sensitivities
    "AbstractSensitivity": ".solve",
    "Direct": ".solve",
    "Backsolve": ".solve",
    "Forward": ".solve",
    "Interpolating": ".solve",
    "Quadrature": ".solve",
    "resolve_sensitivity": ".solve",
    # fitting
    "fit": ".fitting",
    "Stage": ".fitting",
    "FitResult": ".fitting",
    "FitFailure": ".fitting",
    "failure_policy": ".fitting",
    "FailurePolicyState": ".fitting",
    "check_failures": ".fitting",
    "PRESETS": ".fitting",
    "AbstractStrategy": ".fitting",
    "Trajectory": ".fitting",
    "MultipleShooting": ".fitting",
    "SegmentStates": ".fitting",
    "Collocation": ".fitting",
    "collocate": ".fitting",
    "MomentMatching": ".fitting",
    "MaximumLikelihood": ".fitting",
    "ELBO": ".fitting",
    "Classification": ".fitting",
    "Regression": ".fitting",
    "losses": ".fitting",
    "compiler_options": ".compilation",
    # inference: equation discovery and Bayesian posteriors
    "Library": ".inference",
    "SparseTerm": ".inference",
    "Discovery": ".inference",
    "discover": ".inference",
    "priors": ".inference.priors",
    "Prior": ".inference",
    "sample_posterior": ".inference",
    "Posterior": ".inference",
    "PosteriorWarning": ".inference",
    "posterior_predictive": ".inference",
    # files
    "save": ".io",
    "load": ".io",
    # compilation cache
    "enable_compilation_cache": ".compilation",
    "default_cache_dir": ".compilation",
}

#: public names that are modules under another name (`nde.solvers` is the solve layer)
_MODULES = ("solvers",)

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC.get(name)
    if module_name is None:
        raise AttributeError(f"module 'neuraldiffeq' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = (
        module
        if module_name.rsplit(".", 1)[-1] == name or name in _MODULES
        else getattr(module, name)
    )
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, for type checkers and the API docs (griffe reads these)
    from . import datasets
    from . import solve as solvers
    from .compilation.options import compiler_options
    from .compilation.persistent import default_cache_dir, enable_compilation_cache
    from .fitting import (
        ELBO,
        PRESETS,
        AbstractStrategy,
        Collocation,
        FailurePolicyState,
        FitFailure,
        FitResult,
        MomentMatching,
        MultipleShooting,
        SegmentStates,
        Stage,
        Trajectory,
        check_failures,
        collocate,
        failure_policy,
        fit,
        losses,
    )
    from .fitting.likelihood import MaximumLikelihood
    from .fitting.strategies import PerSeries
    from .fitting.supervised import Classification, Regression
    from .inference import (
        Discovery,
        Library,
        Posterior,
        PosteriorWarning,
        Prior,
        SparseTerm,
        discover,
        posterior_predictive,
        priors,
        sample_posterior,
    )
    from .io.model_files import load, save
    from .io.timeseries import TimeSeries
    from .models import (
        AugmentedNeuralODE,
        Autonomous,
        LatentODE,
        LatentSDE,
        NeuralDDE,
        NeuralODE,
        NeuralSDE,
        ODEBlock,
        autonomous,
        transforms,
    )
    from .models.cde import NeuralCDE
    from .models.cnf import FFJORD, CNFStats
    from .models.concat_squash import (
        ConcatSquashConv,
        ConcatSquashConvNet,
        ConcatSquashLinear,
        ConcatSquashMLP,
    )
    from .models.hamiltonian import HamiltonianNN, SeparableHamiltonian
    from .models.hybrid import Exogenous, HybridODE
    from .models.odemm import NeuralODEMM
    from .models.second_order import SecondOrderNeuralODE
    from .models.vae import VAE, PlanarFlow
    from .solve import DDESolution, solve_dde
    from .solve.brownian import GridBrownianPath
    from .solve.config import SolveConfig
    from .solve.errors import SolveError
    from .solve.events import Event, HybridSolution, Schedule
    from .solve.interpolation import Interpolation, interpolation_coeffs
    from .solve.sensitivity import (
        AbstractSensitivity,
        Backsolve,
        Direct,
        Forward,
        Interpolating,
        Quadrature,
        resolve_sensitivity,
    )
