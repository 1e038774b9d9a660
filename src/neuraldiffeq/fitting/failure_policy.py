"""What a training step does when the solve fails: `failure_policy`, an optax wrapper.

Inside compiled code a failed solve is not a crash: its loss (or gradient) is `inf` or NaN. Such
a step must not move the parameters, and retrying from the same point would fail forever when
the parameters themselves (not a random draw) broke the solver. So the wrapped optimizer, on a
step whose loss or gradient is not finite:

- drops the update and counts the step (`FailurePolicyState.total_notfinite`, and
  `notfinite_count` for the failures in a row);
- steps the parameters back halfway (`step_back`) towards the last ones whose step solved;
- restarts the inner optimizer's state there: its state (momenta, L-BFGS memory) led into the
  failure, and an unchanged state would propose the same failing step again.

Failures that persist are a problem to report, not to retry: `check_failures`, on the host,
raises `FitFailure` (naming the solver settings to try) after `max_failures` failures in a row.
`fit` uses both; in a loop of your own they work as `optax.apply_if_finite` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .results import FitFailure, FitResult

__all__ = [
    "MAX_CONSECUTIVE_FAILURES",
    "FailurePolicyState",
    "check_failures",
    "failure_policy",
    "validate_max_failures",
]

#: failures in a row after which `check_failures` (and so `fit`) gives up.
MAX_CONSECUTIVE_FAILURES = 50


class FailurePolicyState(NamedTuple):
    """The state of `failure_policy`: the inner optimizer's state and the failure counters.

    Example:
        >>> import jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> state = nde.failure_policy(optax.adam(0.1)).init(jnp.zeros(2))
        >>> int(state.notfinite_count), int(state.total_notfinite), bool(state.last_finite)
        (0, 0, True)
    """

    inner_state: Any  # the wrapped optimizer's state
    last_good: Any  # the parameters of the last step whose loss and gradient were finite
    notfinite_count: jax.Array  # failed steps in a row (0 after a step that solved)
    total_notfinite: jax.Array  # failed steps in all
    last_finite: jax.Array  # whether the last step's loss and gradient were finite


def failure_policy(
    optimizer: optax.GradientTransformation, *, step_back: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Wrap `optimizer` so that a step with a non-finite loss or gradient is skipped safely.

    On such a step the update is dropped, the parameters move `step_back` of the way back
    towards the last ones whose step was finite (the update returned does exactly that), the
    inner optimizer's state restarts there, and the step is counted in the state
    (`FailurePolicyState`). Pass the loss as `value=` to `update` so that a non-finite loss
    with a finite gradient counts too; every other keyword argument (`grad=`, `value_fn=` for
    `optax.lbfgs`) goes on to the inner optimizer. Call `check_failures(state)` on the host
    to stop when failures persist.

    Arguments:
        optimizer: any optax optimizer (`optax.adam(1e-2)`, `optax.lbfgs()`, a chain).
        step_back: the fraction of the way back towards the last parameters that solved, in
            (0, 1]; 1 returns to them.

    Example:
        >>> import jax, jax.numpy as jnp, optax, neuraldiffeq as nde
        >>> optimizer = nde.failure_policy(optax.sgd(0.1))
        >>> params = jnp.array([1.0, 2.0])
        >>> state = optimizer.init(params)
        >>> updates, state = optimizer.update(jnp.array([1.0, 1.0]), state, params, value=5.0)
        >>> params = optax.apply_updates(params, updates)  # a normal step: [0.9, 1.9]
        >>> updates, state = optimizer.update(jnp.array([jnp.nan, 1.0]), state, params)
        >>> optax.apply_updates(params, updates)  # skipped: halfway back to [1, 2]
        Array([0.95, 1.95], dtype=float32)
        >>> int(state.notfinite_count), int(state.total_notfinite)
        (1, 1)
        >>> nde.check_failures(state)  # one failure in a row: not yet a reason to stop
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax optimizer (e.g. optax.adam(0.01)), got {optimizer!r}."
        )
    if isinstance(step_back, bool) or not (
        isinstance(step_back, int | float) and 0 < step_back <= 1
    ):
        raise ValueError(
            f"step_back must be a number in (0, 1] (0.5: halfway back towards the last "
            f"parameters that solved), got {step_back!r}."
        )
    inner = optax.with_extra_args_support(optimizer)

    def init(params) -> FailurePolicyState:
        zero = jnp.zeros((), jnp.int32)
        return FailurePolicyState(inner.init(params), params, zero, zero, jnp.asarray(True))

    def update(updates, state: FailurePolicyState, params=None, *, value=None, **extra):
        if params is None:
            raise ValueError(
                "failure_policy needs the parameters: call update(grads, state, params), as it "
                "steps back towards the last parameters that solved."
            )
        finite = _all_finite(updates)
        if value is not None:
            finite = finite & jnp.all(jnp.isfinite(value))
            extra["value"] = value
        proposed, new_inner = inner.update(updates, state.inner_state, params, **extra)
        back = jax.tree_util.tree_map(lambda p, g: step_back * (g - p), params, state.last_good)
        # the inner state restarts where the parameters land: params + back, as the caller's
        # optax.apply_updates computes it
        restarted = inner.init(optax.apply_updates(params, back))
        new_state = FailurePolicyState(
            inner_state=_tree_where(finite, new_inner, restarted),
            last_good=_tree_where(finite, params, state.last_good),
            notfinite_count=jnp.where(finite, 0, state.notfinite_count + 1),
            total_notfinite=state.total_notfinite + jnp.where(finite, 0, 1),
            last_finite=finite,
        )
        return _tree_where(finite, proposed, back), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def check_failures(
    state: FailurePolicyState | int,
    max_failures: int = MAX_CONSECUTIVE_FAILURES,
    *,
    strategy: str | None = None,
    detail: str | None = None,
    result: Callable[[], FitResult] | None = None,
) -> None:
    """Raise `FitFailure` when `max_failures` steps in a row had a non-finite loss or gradient.

    Arguments:
        state: a `FailurePolicyState` (read on the host), or the count of failures in a row.
        max_failures: how many failures in a row are too many (a positive integer).
        strategy: the name of what was being minimised, for the message (e.g. "Trajectory").
        detail: what a check inside the step said, if one failed (added to the message).
        result: called to build `FitFailure.result` (the best model so far) when raising.

    Example:
        >>> import neuraldiffeq as nde
        >>> nde.check_failures(2, max_failures=3)  # not yet
        >>> try:
        ...     nde.check_failures(3, max_failures=3, strategy="Trajectory")
        ... except nde.FitFailure as error:
        ...     print(error)
        3 consecutive steps of Trajectory had a non-finite loss or gradient, so the solver is ...
    """
    validate_max_failures(max_failures)
    count = int(state.notfinite_count if isinstance(state, FailurePolicyState) else state)
    if count < max_failures:
        return
    message = (
        f"{count} consecutive steps{f' of {strategy}' if strategy else ''} had a non-finite "
        "loss or gradient, so the solver is failing on this model. Try a stiff solver "
        "(solver='kvaerno5'), looser tolerances or a larger max_steps, a smaller learning rate, "
        "or a smaller initialisation of the network."
        + (" The best model so far is in error.result." if result is not None else "")
        + (f" A check inside the step said: {detail}" if detail else "")
    )
    raise FitFailure(message, None if result is None else result())


def validate_max_failures(max_failures: Any) -> None:
    """Refuse a `max_failures` that is not a positive integer (a `ValueError`)."""
    if not (
        isinstance(max_failures, int | np.integer)
        and not isinstance(max_failures, bool)
        and max_failures > 0
    ):
        raise ValueError(f"max_failures must be a positive integer, got {max_failures!r}.")


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _tree_where(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)
