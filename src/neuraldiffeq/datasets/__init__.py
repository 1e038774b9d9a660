"""Built-in data: synthetic generators from the tutorials and papers, and small real data sets."""

from .real import LYNX_HARE_CSV, lynx_hare
from .synthetic import lotka_volterra, spiral

__all__ = ["LYNX_HARE_CSV", "lotka_volterra", "lynx_hare", "spiral"]
