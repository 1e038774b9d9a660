"""Named recipes of mixed training: `nde.fit(model, data, "auto")`.

A preset is a function `(optimizer=None, steps=None) -> list[Stage]` registered in `PRESETS`.

- `"auto"`, the recommended recipe: multiple shooting over segments of three points (short
  solves from the data: robust against the local minima of long horizons), then the full
  trajectory with Adam, then an L-BFGS polish. `steps` is the number of Adam steps of each
  solving stage (default 300). Measured on the DiffEqFlux spirals (benchmarks/RESULTS.md):
  trajectory loss 0.0025-0.0060 on [0, 1.5] and 0.044-0.070 on [0, 5] (3 seeds each).
- `"mixed"`: collocation first (no solves: a vector field in well under a second), then the
  `"auto"` stages. Collocation pays off on dense series (hundreds of points); on sparse ones its
  smoothed derivatives are biased and it starts the solving stages from a worse place than a
  random network (the [0, 5] spiral with 30 points: 35-139 instead of 0.044-0.070).
- `"trajectory"`: Adam on the full trajectory, then L-BFGS (DiffEqFlux's neural ODE tutorial).
- `"shooting"`: multiple shooting, then an L-BFGS polish on the full trajectory.
- `"collocation"`: collocation alone (no solve at all).

`optimizer` replaces the Adam of the solving stages (collocation keeps its own learning rate);
`lbfgs_steps` (default 100, 0 for none) sets the final L-BFGS polish.
"""

from __future__ import annotations

import optax

from .collocation import Collocation
from .shooting import MultipleShooting
from .stage import Stage
from .strategies import PRESETS, Trajectory

#: Adam steps of each solving stage when `steps` is not given.
DEFAULT_STEPS = 300
#: Collocation steps are ~100x cheaper than solving ones; fused 100 per compiled call.
COLLOCATION_STEPS = 2000
LBFGS_STEPS = 100


def _adam(optimizer, lr):
    return optax.adam(lr) if optimizer is None else optimizer


def _polish(lbfgs_steps: int) -> list[Stage]:
    """The final L-BFGS stage on the full trajectory (none when `lbfgs_steps` is 0)."""
    return [Stage(Trajectory(), optax.lbfgs(), lbfgs_steps)] if lbfgs_steps else []


#: Segments of three points (DiffEqFlux's multiple-shooting tutorial): the shortest that still
#: constrain the field between observations; longer ones bring back single shooting's minima.
SHOOTING_GROUP_SIZE = 3


def _shooting(optimizer, steps: int) -> Stage:
    # Adam 0.05: shooting's short solves tolerate large steps, and it leaves the smaller
    # learning rate to the full-trajectory stage.
    strategy = MultipleShooting(group_size=SHOOTING_GROUP_SIZE, continuity=100.0)
    return Stage(strategy, _adam(optimizer, 5e-2), steps)


def _collocation(optimizer, steps: int) -> Stage:
    return Stage(Collocation(), _adam(optimizer, 1e-2), steps, steps_per_call=min(100, steps))


def auto(optimizer=None, steps=None, lbfgs_steps: int = LBFGS_STEPS) -> list[Stage]:
    """Multiple shooting -> trajectory -> L-BFGS: the robust default.

    Example:
        >>> import neuraldiffeq as nde
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["auto"]()]
        ['MultipleShooting', 'Trajectory', 'Trajectory']
    """
    steps = DEFAULT_STEPS if steps is None else steps
    return [
        _shooting(optimizer, steps),
        Stage(Trajectory(), _adam(optimizer, 1e-2), steps),
    ] + _polish(lbfgs_steps)


def mixed(optimizer=None, steps=None, lbfgs_steps: int = LBFGS_STEPS) -> list[Stage]:
    """Collocation -> multiple shooting -> trajectory -> L-BFGS: for dense series.

    Collocation keeps its own Adam(1e-2) and runs `COLLOCATION_STEPS` steps, fused 100 per call.

    Example:
        >>> import neuraldiffeq as nde
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["mixed"]()]
        ['Collocation', 'MultipleShooting', 'Trajectory', 'Trajectory']
    """
    return [_collocation(None, COLLOCATION_STEPS)] + auto(optimizer, steps, lbfgs_steps)


def trajectory(optimizer=None, steps=None, lbfgs_steps: int = LBFGS_STEPS) -> list[Stage]:
    """Adam on the whole trajectory, then L-BFGS.

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["trajectory"]())
        2
    """
    steps = DEFAULT_STEPS if steps is None else steps
    return [
        Stage(Trajectory(), _adam(optimizer, 1e-2), steps),
    ] + _polish(lbfgs_steps)


def shooting(optimizer=None, steps=None, lbfgs_steps: int = LBFGS_STEPS) -> list[Stage]:
    """Multiple shooting with Adam, then L-BFGS on the whole trajectory.

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["shooting"]())
        2
    """
    steps = DEFAULT_STEPS if steps is None else steps
    return [_shooting(optimizer, steps)] + _polish(lbfgs_steps)


def collocation(optimizer=None, steps=None) -> list[Stage]:
    """Collocation alone (no ODE solve).

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["collocation"]())
        1
    """
    return [_collocation(optimizer, COLLOCATION_STEPS if steps is None else steps)]


PRESETS.update(
    {
        "auto": auto,
        "mixed": mixed,
        "trajectory": trajectory,
        "shooting": shooting,
        "collocation": collocation,
    }
)
