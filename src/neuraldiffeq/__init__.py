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

__version__ = "0.1.0"

# public name -> the module that defines it, grouped by topic; a name equal to its module's last
# part is that module itself (e.g. `nde.datasets`)
_PUBLIC: dict[str, str] = {
    # data
    "TimeSeries": ".data",
    "datasets": ".datasets",
    "transforms": ".transforms",
    # models and their solve configuration
    "SolveConfig": ".solve_config",
    "solvers": ".solvers",
    "NeuralODE": ".models",
    "autonomous": ".models",
    "Autonomous": ".models",
    "AugmentedNeuralODE": ".models",
    "ODEBlock": ".models",
    "NeuralSDE": ".models",
    "NeuralDDE": ".models",
    "solve_dde": ".solvers",
    "DDESolution": ".solvers",
    "FFJORD": ".models.cnf",
    "CNFStats": ".models.cnf",
    "ConcatSquashLinear": ".models.concat_squash",
    "ConcatSquashMLP": ".models.concat_squash",
    "ConcatSquashConv": ".models.concat_squash",
    "ConcatSquashConvNet": ".models.concat_squash",
    "LatentODE": ".models",
    "NeuralODEMM": ".models.odemm",
    "HamiltonianNN": ".models.hamiltonian",
    "SeparableHamiltonian": ".models.hamiltonian",
    "SecondOrderNeuralODE": ".models.second_order",
    "NeuralCDE": ".models.cde",
    "Interpolation": ".interpolation",
    "interpolation_coeffs": ".interpolation",
    "LatentSDE": ".models",
    "VAE": ".models.vae",
    "PlanarFlow": ".models.vae",
    # sensitivities
    "AbstractSensitivity": ".sensitivity",
    "Direct": ".sensitivity",
    "Backsolve": ".sensitivity",
    "Forward": ".sensitivity",
    "Interpolating": ".sensitivity",
    "Quadrature": ".sensitivity",
    "resolve_sensitivity": ".sensitivity",
    # fitting
    "fit": ".fitting",
    "Stage": ".fitting",
    "FitResult": ".fitting",
    "FitFailure": ".fitting",
    "PRESETS": ".fitting",
    "AbstractStrategy": ".fitting",
    "Trajectory": ".fitting",
    "MultipleShooting": ".fitting",
    "SegmentStates": ".fitting",
    "Collocation": ".fitting",
    "collocate": ".fitting",
    "MomentMatching": ".fitting",
    "MaximumLikelihood": ".fitting.likelihood",
    "ELBO": ".fitting",
    "Classification": ".fitting.supervised",
    "Regression": ".fitting.supervised",
    "losses": ".fitting",
    "compiler_options": "._compile",
    # files
    "save": ".serialisation",
    "load": ".serialisation",
    # compilation cache
    "enable_compilation_cache": ".cache",
    "default_cache_dir": ".cache",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC.get(name)
    if module_name is None:
        raise AttributeError(f"module 'neuraldiffeq' has no attribute {name!r}")
    module = importlib.import_module(module_name, __name__)
    value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, for type checkers and the API docs (griffe reads these)
    from . import datasets, solvers, transforms
    from ._compile import compiler_options
    from .cache import default_cache_dir, enable_compilation_cache
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
    from .fitting.supervised import Classification, Regression
    from .interpolation import Interpolation, interpolation_coeffs
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
    from .models.odemm import NeuralODEMM
    from .models.second_order import SecondOrderNeuralODE
    from .models.vae import VAE, PlanarFlow
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
    from .solve_config import SolveConfig
    from .solvers import DDESolution, solve_dde
