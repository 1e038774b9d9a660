"""Named recipes of mixed training: `nde.fit(model, data, "auto")`.

A preset is a function returning a list of `Stage`s, registered in `PRESETS`. Every preset takes
the same keywords, and honours each of them or raises a `ValueError`:

- `optimizer`: replaces the Adam of the solving stages (collocation keeps its own Adam(1e-2));
- `steps`: Adam steps of each solving stage (default 300), or of the collocation stage in
  `"collocation"` (default 2000);
- `steps_per_call`: fuse this many steps into one compiled call in every stage, or `"auto"`
  (default: 100 for collocation, whose steps solve no equation and so are far cheaper than
  solving ones, "auto" elsewhere: as many as fill `fit`'s time budget per call, see `fit`);
- `lbfgs_steps`: the final L-BFGS polish on the full trajectory (default 100, 0 for none;
  `"collocation"` has none and refuses a positive value);
- `data`: the series to be fitted; `"auto"` looks at it to decide whether collocation goes
  first (the others ignore it).

The presets:

- `"auto"`, the recommended recipe: multiple shooting over segments of three points (short
  solves from the data: robust against the local minima of long horizons), then the full
  trajectory with Adam, then an L-BFGS polish. Collocation goes first when `data` is given
  and `collocation_first(data)` finds its derivative estimates good enough (dense or noisy
  series), not on sparse fast dynamics (the 30-point spirals). Measured on the DiffEqFlux
  spirals (benchmarks/RESULTS.md): trajectory loss 0.0025-0.0060 on [0, 1.5] and 0.044-0.070 on
  [0, 5] (3 seeds each).
- `"mixed"`: collocation first (no solves: a vector field in well under a second), then the
  solving stages of `"auto"`, whatever the data.
- `"trajectory"`: Adam on the full trajectory, then L-BFGS (DiffEqFlux's neural ODE tutorial).
- `"shooting"`: multiple shooting, then an L-BFGS polish on the full trajectory.
- `"collocation"`: collocation alone (no solve at all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from .collocation import Collocation, collocate
from .shooting import MultipleShooting
from .stage import Stage
from .strategies import Trajectory, as_timeseries

logger = logging.getLogger(__name__)

#: Adam steps of each solving stage when `steps` is not given.
DEFAULT_STEPS = 300
#: Collocation steps solve no equation, so they are cheap; fused 100 per compiled call.
COLLOCATION_STEPS = 2000
COLLOCATION_STEPS_PER_CALL = 100
LBFGS_STEPS = 100
#: `"auto"` puts collocation first when the estimated systematic error of the smoothed
#: derivatives (`CollocationInfo.relative_error`) is at most this fraction of their size.
#: Measured: 0.028-0.033 on the 300-point [0, 1.5] spiral with noise 0.05 (collocation first
#: pays there, benchmarks/RESULTS.md), 0.003 on 200 clean Lotka-Volterra points, 0.052 on
#: the 30-point [0, 1.5] spiral and 0.42 on the 30-point [0, 5] one (it does not pay).
COLLOCATION_ERROR_THRESHOLD = 0.04

#: Segments of three points (DiffEqFlux's multiple-shooting tutorial): the shortest that still
#: constrain the field between observations; longer ones bring back single shooting's minima.
SHOOTING_GROUP_SIZE = 3


def collocation_first(data: Any, kernel: str = "epanechnikov") -> tuple[bool, str]:
    """Whether collocation should start a fit of `data`, and why (a sentence with the numbers).

    Yes when `nde.collocate(..., info=True)` estimates the systematic error of its derivatives
    (squared bias + 2h x variance, see `nde.collocate`) at most `COLLOCATION_ERROR_THRESHOLD`
    of their root-mean-square size for every state.

    Example:
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.presets import collocation_first
        >>> collocation_first(nde.datasets.spiral(n_points=200))[0]
        True
        >>> collocation_first(nde.datasets.spiral(n_points=30, t1=5.0))[0]
        False
    """
    series = as_timeseries(data)
    mask = None if series.mask is None else np.asarray(series.mask)
    _, _, info = collocate(series.ts, series.ys, kernel, mask=mask, info=True)
    error = info.relative_error
    verdict = error <= COLLOCATION_ERROR_THRESHOLD
    reason = (
        f"estimated systematic error of the smoothed derivatives {100 * error:.1f}% of their "
        f"size ({'<=' if verdict else '>'} {100 * COLLOCATION_ERROR_THRESHOLD:.0f}%; "
        f"derivative bandwidths {np.round(info.derivative_bandwidth, 4).tolist()} of the span)"
    )
    return bool(verdict), reason


def _check(steps, steps_per_call, lbfgs_steps) -> None:
    for name, value in (("steps", steps), ("steps_per_call", steps_per_call)):
        if name == "steps_per_call" and value == "auto":
            continue
        if value is not None and not (isinstance(value, int | np.integer) and value > 0):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
    if lbfgs_steps is not None and not (
        isinstance(lbfgs_steps, int | np.integer) and lbfgs_steps >= 0
    ):
        raise ValueError(
            f"lbfgs_steps must be a non-negative integer or None, got {lbfgs_steps!r}."
        )


def _adam(optimizer, lr):
    return optax.adam(lr) if optimizer is None else optimizer


def _stage(strategy, optimizer, steps, steps_per_call, default_per_call="auto") -> Stage:
    per_call = default_per_call if steps_per_call is None else steps_per_call
    return Stage(
        strategy, optimizer, steps, per_call if per_call == "auto" else min(per_call, steps)
    )


def _polish(lbfgs_steps, steps_per_call) -> list[Stage]:
    """The final L-BFGS stage on the full trajectory (none when `lbfgs_steps` is 0)."""
    n = LBFGS_STEPS if lbfgs_steps is None else lbfgs_steps
    return [_stage(Trajectory(), optax.lbfgs(), n, steps_per_call)] if n else []


def _solving(optimizer, steps, steps_per_call) -> list[Stage]:
    """Multiple shooting (Adam 0.05: short solves tolerate large steps), then the trajectory."""
    steps = DEFAULT_STEPS if steps is None else steps
    shooting = MultipleShooting(group_size=SHOOTING_GROUP_SIZE, continuity=100.0)
    return [
        _stage(shooting, _adam(optimizer, 5e-2), steps, steps_per_call),
        _stage(Trajectory(), _adam(optimizer, 1e-2), steps, steps_per_call),
    ]


def _collocation(optimizer, steps, steps_per_call) -> Stage:
    return _stage(
        Collocation(), _adam(optimizer, 1e-2), steps, steps_per_call, COLLOCATION_STEPS_PER_CALL
    )


def auto(
    optimizer=None, steps=None, *, steps_per_call=None, lbfgs_steps=None, data=None
) -> list[Stage]:
    """[Collocation ->] multiple shooting -> trajectory -> L-BFGS: the robust default.

    With `data`, collocation goes first when `collocation_first(data)` says its derivatives
    are good enough; the choice and its reason are logged (logger `neuraldiffeq.fitting.presets`,
    level INFO) and visible in the returned stages. Without `data` there is no collocation.

    Example:
        >>> import neuraldiffeq as nde
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["auto"]()]
        ['MultipleShooting', 'Trajectory', 'Trajectory']
        >>> dense = nde.datasets.spiral(n_points=200)
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["auto"](data=dense, lbfgs_steps=0)]
        ['Collocation', 'MultipleShooting', 'Trajectory']
    """
    _check(steps, steps_per_call, lbfgs_steps)
    stages = _solving(optimizer, steps, steps_per_call) + _polish(lbfgs_steps, steps_per_call)
    if data is None:
        logger.info('"auto": no data given, so no collocation stage')
        return stages
    first, reason = collocation_first(data)
    logger.info('"auto": %s collocation stage: %s', "with a" if first else "no", reason)
    if first:
        stages = [_collocation(None, COLLOCATION_STEPS, steps_per_call)] + stages
    return stages


def mixed(
    optimizer=None, steps=None, *, steps_per_call=None, lbfgs_steps=None, data=None
) -> list[Stage]:
    """Collocation -> multiple shooting -> trajectory -> L-BFGS, whatever the data.

    Collocation keeps its own Adam(1e-2) and runs `COLLOCATION_STEPS` steps.

    Example:
        >>> import neuraldiffeq as nde
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["mixed"]()]
        ['Collocation', 'MultipleShooting', 'Trajectory', 'Trajectory']
    """
    _check(steps, steps_per_call, lbfgs_steps)
    return (
        [_collocation(None, COLLOCATION_STEPS, steps_per_call)]
        + _solving(optimizer, steps, steps_per_call)
        + _polish(lbfgs_steps, steps_per_call)
    )


def trajectory(
    optimizer=None, steps=None, *, steps_per_call=None, lbfgs_steps=None, data=None
) -> list[Stage]:
    """Adam on the whole trajectory, then L-BFGS.

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["trajectory"]())
        2
    """
    _check(steps, steps_per_call, lbfgs_steps)
    steps = DEFAULT_STEPS if steps is None else steps
    return [_stage(Trajectory(), _adam(optimizer, 1e-2), steps, steps_per_call)] + _polish(
        lbfgs_steps, steps_per_call
    )


def shooting(
    optimizer=None, steps=None, *, steps_per_call=None, lbfgs_steps=None, data=None
) -> list[Stage]:
    """Multiple shooting with Adam, then L-BFGS on the whole trajectory.

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["shooting"]())
        2
    """
    _check(steps, steps_per_call, lbfgs_steps)
    return _solving(optimizer, steps, steps_per_call)[:1] + _polish(lbfgs_steps, steps_per_call)


def collocation(
    optimizer=None, steps=None, *, steps_per_call=None, lbfgs_steps=None, data=None
) -> list[Stage]:
    """Collocation alone (no ODE solve, so no L-BFGS polish: `lbfgs_steps` must be 0 or None).

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["collocation"]())
        1
    """
    _check(steps, steps_per_call, lbfgs_steps)
    if lbfgs_steps:
        raise ValueError(
            'the "collocation" preset solves no ODE, so it has no L-BFGS polish on the '
            'trajectory: pass lbfgs_steps=0 or None, or use the "mixed" preset.'
        )
    steps = COLLOCATION_STEPS if steps is None else steps
    return [_collocation(optimizer, steps, steps_per_call)]


#: The preset registry, explicit: name -> function(optimizer=None, steps=None, data=None, ...)
#: returning a list of `Stage`s (what `fit(model, data, "name")` runs). Add an entry to offer
#: another preset by name.
PRESETS: dict[str, Callable[..., list[Stage]]] = {
    "auto": auto,
    "mixed": mixed,
    "trajectory": trajectory,
    "shooting": shooting,
    "collocation": collocation,
}
