"""Fit-time solver choice: `solver="auto"` resolved from the data before a fit compiles.

The solve layer estimates stiffness for one initial state (`neuraldiffeq.solve.stiffness`); which
states of a data set to ask about, and which answer wins, is a fitting policy and lives here.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ..solve.stiffness import EXPLICIT
from ..solve.structure import needs_detection
from .strategies import as_timeseries

#: At most this many trajectories' first states are examined by `resolve_for_fit`.
FIT_TRAJECTORIES = 8


def resolve_for_fit(model: Any, data: Any, strategies: Any = ()) -> Any:
    """`model` with `solver="auto"` resolved for fitting to `data` (what `nde.fit` calls before
    compiling): implicit if the equation is stiff from the first state of any of the first
    `FIT_TRAJECTORIES` trajectories, with the strategies' `args`. A solver waiting for its
    Jacobian's sparsity pattern (`jacobian="sparse"`) gets it detected from the first state.
    Any other model is returned as it is.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.solver_choice import resolve_for_fit
        >>> model = nde.NeuralODE(lambda t, y, a: -1e4 * y, solver="auto")
        >>> data = (jnp.linspace(0.0, 1.0, 5), jnp.ones((5, 1)))
        >>> type(resolve_for_fit(model, data).solver).__name__
        'Kvaerno5'
    """
    solver = getattr(model, "solver", None)
    pending = isinstance(solver, str) or needs_detection(solver)
    if not (pending and hasattr(model, "resolve_solver")):
        return model
    try:
        batch = as_timeseries(data).as_batch()
    except ValueError as error:
        raise ValueError(
            "solver='auto' is chosen from the data's first state, but fit's data is not a time "
            f"series ({error}); call model = model.resolve_solver(ts, y0, args) before fit, or "
            "pass a solver by name."
        ) from error
    args = next((s.args for s in strategies if getattr(s, "args", None) is not None), None)
    ys = np.asarray(batch.ys)
    starts = [y for y in ys[:, 0] if np.all(np.isfinite(y))][:FIT_TRAJECTORIES]
    if not starts:
        raise ValueError(
            "solver='auto' is chosen from the data's first state, but no trajectory has a fully "
            "observed first row; call model = model.resolve_solver(ts, y0, args) before fit."
        )
    resolved = [model.resolve_solver(batch.ts, jnp.asarray(y0), args) for y0 in starts]
    stiff = [m for m in resolved if type(m.solver).__name__.lower() != EXPLICIT]
    return stiff[0] if stiff else resolved[0]
