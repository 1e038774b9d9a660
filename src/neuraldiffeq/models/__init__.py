"""Model classes: differential equations with neural networks inside."""

from . import transforms
from .augmented import AugmentedNeuralODE
from .cde import NeuralCDE
from .cnf import FFJORD, CNFStats, StandardNormal, batched_log_prob, mean_nll
from .concat_squash import (
    ConcatSquashConv,
    ConcatSquashConvNet,
    ConcatSquashLinear,
    ConcatSquashMLP,
)
from .dde import NeuralDDE
from .hamiltonian import HamiltonianNN, SeparableHamiltonian
from .hybrid import Exogenous, HybridODE
from .latent import LatentODE
from .latent_sde import LatentSDE
from .ode import Autonomous, NeuralODE, autonomous
from .odeblock import ODEBlock
from .odemm import NeuralODEMM
from .sde import NeuralSDE
from .second_order import SecondOrderNeuralODE
from .vae import VAE, PlanarFlow

__all__ = [
    "Exogenous",
    "HybridODE",
    "HamiltonianNN",
    "NeuralCDE",
    "NeuralODEMM",
    "SecondOrderNeuralODE",
    "SeparableHamiltonian",
    "transforms",
    "CNFStats",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "FFJORD",
    "StandardNormal",
    "batched_log_prob",
    "mean_nll",
    "AugmentedNeuralODE",
    "Autonomous",
    "LatentODE",
    "LatentSDE",
    "NeuralODE",
    "ODEBlock",
    "autonomous",
    "NeuralDDE",
    "NeuralSDE",
    "ConcatSquashConv",
    "ConcatSquashConvNet",
    "PlanarFlow",
    "VAE",
]
