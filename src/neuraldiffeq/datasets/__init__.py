"""Built-in data: synthetic generators from the tutorials and papers, and small real data sets."""

from .latent_spirals import Spirals, spirals
from .lorenz import stochastic_lorenz
from .real import LYNX_HARE_CSV, lynx_hare
from .synthetic import lotka_volterra, robertson, spiral
from .toy2d import TOY_2D, toy_2d

__all__ = [
    "TOY_2D",
    "toy_2d",
    "LYNX_HARE_CSV",
    "lotka_volterra",
    "lynx_hare",
    "robertson",
    "spiral",
    "spirals",
    "Spirals",
    "stochastic_lorenz",
]
