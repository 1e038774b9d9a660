"""`Stage`: one step of a mixed training recipe (a strategy, an optimizer, a number of steps).

Its own module so that recipes (`presets.py`) and `fit` both import it without importing each
other.
"""

from __future__ import annotations

import dataclasses

import optax

from .strategies import AbstractStrategy


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a mixed training loop: minimise `strategy`'s loss with `optimizer`.

    `steps_per_call` fuses that many optimizer steps into one compiled call (`lax.scan`), which
    removes Python dispatch overhead on tiny models at the cost of coarser progress updates;
    `"auto"` (default) fuses as many as take about 50 ms (see `fit`).

    Example:
        >>> import optax, neuraldiffeq as nde
        >>> stage = nde.Stage(nde.Trajectory(), optax.adam(0.05), steps=300)
        >>> stage.steps_per_call
        'auto'
    """

    strategy: AbstractStrategy
    optimizer: optax.GradientTransformation
    steps: int
    steps_per_call: int | str = "auto"
