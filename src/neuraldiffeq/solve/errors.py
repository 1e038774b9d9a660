"""`SolveError`: why a solve failed and what to change, for a solve called outside compiled code.

A failed solve has two faces. Inside compiled code (`jax.jit`, `jax.grad`, `jax.vmap`, and so
every step of `nde.fit`) there is no Python to raise in: the solve's values are `inf` (see
`neuraldiffeq.solve.config.on_failure`), the loss is `inf` and `fit` skips the step. Called
directly, with concrete values, the same failure raises a `SolveError` whose message names the
cause and the fix, in one format for every model:

    <model>: the solve failed: <cause>. <what to change>. (diffrax: "<diffrax's message>")

Causes, from diffrax's result code and the solve's step counts:

- `max_steps` reached: how many steps, how many were rejected, and `max_steps=` to raise it;
  when most steps were rejected the step size collapsed, which more steps rarely fix: an
  explicit solver on a stiff problem (try an implicit solver or `solver="auto"`), a solution
  that blows up, or an implicit solver whose Newton iteration keeps failing (tolerances);
- the Newton iteration of an implicit solver diverged or did not converge at constant steps:
  adaptive steps, a smaller `dt0`, or looser Newton tolerances;
- a non-finite value or a singular linear solve: the field, or the tolerances.

`SolveError` is a `RuntimeError`, like the error diffrax raises with `throw=True`: the inputs
were valid (a bad argument is a `ValueError` at the boundary), the failure happened while
computing, and `except RuntimeError` catches both.

Example:
    >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
    >>> model = nde.NeuralODE(lambda t, y, args: y**2, max_steps=64)  # blows up at t = 1
    >>> try:
    ...     model(jnp.linspace(0.0, 2.0, 3), jnp.ones(1))
    ... except nde.SolveError as e:
    ...     print(str(e)[:62])
    NeuralODE: the solve failed: it reached max_steps=64 (the most
    >>> bool(jnp.isinf(jax.jit(model)(jnp.linspace(0.0, 2.0, 3), jnp.ones(1))[-1, 0]))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffrax
import numpy as np

#: Result codes whose cause and fix `failure_message` words itself (the rest: diffrax's text).
_NEWTON = {
    "nonlinear_divergence": "diverged",
    "nonlinear_max_steps_reached": "did not converge within its iterations",
}
_LINEAR = ("singular", "breakdown", "stagnation", "conlim", "nonfinite_input")
#: Every result code a solve can end with, by name (diffrax's own, optimistix's and lineax's).
_CODES = (
    "max_steps_reached",
    "dt_min_reached",
    "max_steps_rejected",
    "internal_error",
    "nonfinite",
    *_NEWTON,
    *_LINEAR,
)


class SolveError(RuntimeError):
    """A solve called outside compiled code failed; the message says why and what to change.

    Attributes:
        model: the model or function whose solve failed (e.g. `"NeuralODE"`).
        reason: the name of diffrax's result code (e.g. `"max_steps_reached"`).
        stats: the solve's step counts (`max_steps`, `num_steps`, `num_accepted_steps`,
            `num_rejected_steps`), those that are known.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> model = nde.NeuralODE(lambda t, y, args: -1e4 * y, max_steps=16)  # stiff
        >>> try:
        ...     model(jnp.linspace(0.0, 1.0, 3), jnp.ones(1))
        ... except nde.SolveError as e:
        ...     print(e.reason, e.stats["max_steps"])
        max_steps_reached 16
    """

    def __init__(self, message: str, *, model: str, reason: str, stats: Mapping[str, int]):
        super().__init__(message)
        self.model = model
        self.reason = reason
        self.stats = dict(stats)


def reason_of(result: Any) -> str:
    """The name of a (concrete) diffrax result code; for a batch of codes, the first failure's.

    Example:
        >>> import diffrax
        >>> from neuraldiffeq.solve.errors import reason_of
        >>> reason_of(diffrax.RESULTS.max_steps_reached)
        'max_steps_reached'
    """
    for name in _CODES:
        code = getattr(diffrax.RESULTS, name, None)
        if code is not None and np.any(np.asarray(result == code)):
            return name
    return "successful"


def failure_message(
    result: Any,
    *,
    model: str,
    config: Any = None,
    stats: Mapping[str, Any] | None = None,
    failed: int = 1,
    total: int = 1,
    stiff_max_steps: int | None = None,
) -> str:
    """The message of the `SolveError` for a concrete failed `result` (a diffrax result code).

    Arguments:
        result: diffrax's result code (concrete; a batch of codes names the first failure).
        model: what failed, e.g. `"NeuralODE"` or `"solve_dde"`.
        config: the `SolveConfig` of the solve (its solver, `max_steps`, `dt0`, tolerances).
        stats: the solve's step counts, as `diffrax.Solution.stats`.
        failed, total: how many solves of a batch failed, of how many.
        stiff_max_steps: the `max_steps` that `solver="auto"` gives an implicit solver it
            picks (the message says whether a `max_steps` set by hand was kept instead).

    Example:
        >>> import diffrax, neuraldiffeq as nde
        >>> from neuraldiffeq.solve.errors import failure_message
        >>> print(failure_message(diffrax.RESULTS.max_steps_reached, model="NeuralODE",
        ...       config=nde.SolveConfig("tsit5", max_steps=100),
        ...       stats=dict(num_accepted_steps=90, num_rejected_steps=10))[:69])
        NeuralODE: the solve failed: it reached max_steps=100 (the most steps
    """
    reason = reason_of(result)
    stats = step_counts(stats)
    solver = getattr(config, "solver", None)
    name = type(solver).__name__ if solver is not None and not isinstance(solver, str) else None
    implicit = isinstance(solver, diffrax.AbstractImplicitSolver)
    batch = f" in {failed} of {total} solves of the batch (the first shown)" if total > 1 else ""
    if reason == "max_steps_reached":
        text = _max_steps_text(config, stats, name, implicit, stiff_max_steps)
    elif reason == "dt_min_reached":
        text = (
            "the step size collapsed below the step-size controller's dtmin. On a stiff problem "
            "an explicit solver needs ever smaller steps: try an implicit solver "
            "(solver='kvaerno5') or solver='auto'; where the solution blows up, check the "
            "field there"
        )
    elif reason in _NEWTON:
        dt0 = getattr(config, "dt0", None)
        steps = f"at the constant step dt0={dt0}" if not getattr(config, "adaptive", True) else ""
        subject = " ".join(filter(None, ["the Newton iteration of the implicit solver", name]))
        cause = " ".join(filter(None, [subject, _NEWTON[reason], steps]))
        text = (
            f"{cause}. Use adaptive steps (rtol=..., atol=...; a step whose Newton iteration "
            "fails is then retried smaller), a smaller dt0, or Newton tolerances the precision "
            "can reach: neuraldiffeq.solve.implicit_solver(name, newton_rtol=..., newton_atol=...)"
        )
    elif reason in _LINEAR:
        text = (
            "the linear solve inside the implicit solver's Newton iteration failed "
            f"({reason.replace('_', ' ')}): the Jacobian is singular or not finite. Check the "
            "field for a non-finite value, or take smaller steps (smaller dt0, or tighter "
            "rtol/atol)"
        )
    elif reason == "nonfinite":
        text = (
            "a non-finite value (inf or nan) appeared: check the field for overflow, division "
            "by zero or a logarithm/square root of a negative number along the solution"
        )
    else:
        text = f"{reason.replace('_', ' ')}"
    code = getattr(diffrax.RESULTS, reason, None)
    upstream = f' (diffrax: "{diffrax.RESULTS[code]}")' if code is not None else ""
    return (
        f"{model}: the solve failed{batch}: {text}.{upstream} Under jax.jit, jax.grad or "
        "jax.vmap a failed solve gives inf instead of this error (so nde.fit skips the step); "
        "model.solve(...) returns the solution with its result code."
    )


def _max_steps_text(
    config: Any, stats: dict[str, int], name: str | None, implicit: bool, stiff_max_steps
) -> str:
    from_config = getattr(config, "max_steps", None)
    most = stats.get("max_steps", from_config if isinstance(from_config, int) else None)
    accepted, rejected = stats.get("num_accepted_steps"), stats.get("num_rejected_steps")
    counts = ""
    if accepted is not None and rejected is not None:
        counts = f": {accepted} accepted and {rejected} rejected"
    where = f"max_steps={most}" if most is not None else "its max_steps"
    text = f"it reached {where} (the most steps one solve may take{counts}) before the end"
    collapsed = accepted is not None and rejected is not None and rejected >= accepted
    larger = f"max_steps={4 * most}" if most is not None else "a larger max_steps"
    if not implicit:
        text += (
            f". If the step size collapsed, more steps will not help: an explicit solver"
            f"{' (' + name + ')' if name else ''} is held to tiny steps on a stiff problem, and "
            "every solver is where the solution blows up. Try an implicit solver "
            "(solver='kvaerno5') or solver='auto' (it picks one for a stiff problem), and check "
            f"the field where the solution grows; otherwise raise max_steps ({larger})"
        )
        if collapsed:
            text += ". Most steps were rejected, a sign that the step size collapsed"
    else:
        text += f" with the implicit solver {name}. Raise it ({larger})"
        if collapsed:
            text += (
                "; most steps were rejected, often because the Newton iteration of the implicit "
                f"solver{' ' + name if name else ''} did not converge: loosen rtol/atol or the "
                "Newton tolerances (neuraldiffeq.solve.implicit_solver(name, newton_rtol=..., "
                "newton_atol=...)), which float32 cannot meet below about 1e-6"
            )
        if stiff_max_steps is not None and most is not None and most < stiff_max_steps:
            text += (
                f". solver='auto' raises max_steps to {stiff_max_steps} for the implicit solver"
                " it picks only when max_steps is left out; a max_steps you set is kept as given"
            )
        elif stiff_max_steps is not None and most == stiff_max_steps:
            text += (
                f" (max_steps={stiff_max_steps} is what solver='auto' gives the implicit solver"
                " it picks; this problem needs more)"
            )
    return text


def step_counts(stats: Mapping[str, Any] | None) -> dict[str, int]:
    """The integer entries of a solution's `stats` as Python ints (a batch: its first entry).

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.errors import step_counts
        >>> step_counts({"num_steps": jnp.array(12), "note": "x"})
        {'num_steps': 12}
    """
    counts = {}
    for key, value in (stats or {}).items():
        array = np.asarray(value)
        if array.size and np.issubdtype(array.dtype, np.integer):
            counts[key] = int(array.reshape(-1)[0]) if array.ndim else int(array)
    return counts
