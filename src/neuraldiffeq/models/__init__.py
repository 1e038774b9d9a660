"""Model classes: differential equations with neural networks inside."""

from .augmented import AugmentedNeuralODE
from .dde import NeuralDDE
from .latent import LatentODE
from .ode import Autonomous, NeuralODE, autonomous
from .odeblock import ODEBlock
from .sde import NeuralSDE

__all__ = [
    "AugmentedNeuralODE",
    "Autonomous",
    "LatentODE",
    "NeuralODE",
    "ODEBlock",
    "autonomous",
    "NeuralDDE",
    "NeuralSDE",
]
