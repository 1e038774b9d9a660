"""Named recipes of mixed training: `nde.fit(model, data, "auto")`.

A preset is a function `(optimizer=None, steps=None) -> list[Stage]` registered in `PRESETS`.

- `"auto"` (alias `"mixed"`), the recommended recipe: collocation (no solves: a good vector
  field in well under a second), then multiple shooting (short solves from the data: robust
  against the local minima of long horizons), then the full trajectory with Adam, then an
  L-BFGS polish. `steps` is the number of Adam steps of each solving stage (default 300).
- `"trajectory"`: Adam on the full trajectory, then L-BFGS (DiffEqFlux's neural ODE tutorial).
- `"shooting"`: multiple shooting, then an L-BFGS polish on the full trajectory.
- `"collocation"`: collocation alone (no solve at all).

`optimizer` replaces the Adam of the solving stages (collocation keeps its own learning rate);
`lbfgs_steps` (default 100, 0 for none) sets the final L-BFGS polish.
"""

from __future__ import annotations

import optax

from .collocation import Collocation
from .fit import Stage
from .shooting import MultipleShooting
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


def auto(optimizer=None, steps=None, lbfgs_steps: int = LBFGS_STEPS) -> list[Stage]:
    """Collocation -> multiple shooting -> trajectory -> L-BFGS: fast and robust by default.

    Example:
        >>> import neuraldiffeq as nde
        >>> [type(s.strategy).__name__ for s in nde.PRESETS["auto"]()]
        ['Collocation', 'MultipleShooting', 'Trajectory', 'Trajectory']
    """
    steps = DEFAULT_STEPS if steps is None else steps
    return [
        Stage(Collocation(), optax.adam(1e-2), COLLOCATION_STEPS, steps_per_call=100),
        Stage(MultipleShooting(group_size=None, continuity=100.0), _adam(optimizer, 1e-2), steps),
        Stage(Trajectory(), _adam(optimizer, 1e-2), steps),
    ] + _polish(lbfgs_steps)


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
    return [
        Stage(MultipleShooting(group_size=None, continuity=100.0), _adam(optimizer, 1e-2), steps),
    ] + _polish(lbfgs_steps)


def collocation(optimizer=None, steps=None) -> list[Stage]:
    """Collocation alone (no ODE solve).

    Example:
        >>> import neuraldiffeq as nde
        >>> len(nde.PRESETS["collocation"]())
        1
    """
    steps = COLLOCATION_STEPS if steps is None else steps
    return [Stage(Collocation(), _adam(optimizer, 1e-2), steps, steps_per_call=min(100, steps))]


PRESETS.update(
    {
        "auto": auto,
        "mixed": auto,
        "trajectory": trajectory,
        "shooting": shooting,
        "collocation": collocation,
    }
)
