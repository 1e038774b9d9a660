"""Model classes: differential equations with neural networks inside."""

from .ode import Autonomous, NeuralODE, autonomous

__all__ = ["Autonomous", "NeuralODE", "autonomous"]
