"""Diagnostics of a finished stage: what optimizer ran, and whether the loss diverged.

`fit` calls `diagnose(report, stage, check_message)` once per stage; it fills in the optimizer's
description and, when the stage went uphill, a warning that is both emitted (`UserWarning`) and
kept in the `StageReport` (so it reaches `FitResult.stages` and `metrics.json`). A stage that
skipped steps (non-finite loss or gradient) is warned about too.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

#: A stage "diverged" when it ends this many times above its first loss.
DIVERGENCE_FACTOR = 10.0

# optax building blocks -> the name a person knows the optimizer by (first match wins).
_NAMES = (
    ("scale_by_lbfgs", "L-BFGS"),
    ("scale_by_adamw", "AdamW"),
    ("add_decayed_weights", "AdamW"),
    ("scale_by_adam", "Adam"),
    ("scale_by_amsgrad", "AMSGrad"),
    ("scale_by_rms", "RMSprop"),
    ("scale_by_sgd", "SGD"),
    ("trace", "SGD"),
)


def describe_optimizer(optimizer: Any) -> str:
    """A short human name for an optax optimizer, e.g. `"Adam(lr=0.05)"` or `"L-BFGS"`.

    optax optimizers are closures without a name, so this reads the names of the transformations
    they are built from; an optimizer it does not recognise is called `"optimizer"`.

    Example:
        >>> import optax
        >>> from neuraldiffeq.fitting.diagnostics import describe_optimizer
        >>> describe_optimizer(optax.adam(0.05)), describe_optimizer(optax.lbfgs())
        ('Adam(lr=0.05)', 'L-BFGS')
        >>> describe_optimizer(optax.sgd(0.1))
        'SGD(lr=0.1)'
    """
    parts: list[tuple[str, dict]] = []
    _walk(optimizer, parts, set())
    names = [q for q, _ in parts]
    label = next((name for key, name in _NAMES if any(q.startswith(key) for q in names)), None)
    steps = [v["step_size"] for q, v in parts if q.startswith("scale.") and "step_size" in v]
    if label is None:
        if not steps:
            return "optimizer"
        label = "SGD"
    if label == "L-BFGS":  # its step comes from a line search, not a learning rate
        return label
    if steps:
        return f"{label}(lr={-steps[-1]:.3g})"
    if any(q.startswith("scale_by_learning_rate") or "schedule" in q for q in names):
        return f"{label}(scheduled lr)"
    return label


def _walk(obj, out: list, seen: set) -> None:
    """Collect (qualname, numeric closure variables) of every function an optimizer is made of."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if callable(obj) and hasattr(obj, "__code__"):
        numbers, children = {}, []
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a closure variable not yet assigned)
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers[name] = value
            children.append(value)
        out.append((obj.__qualname__, numbers))
        for child in children:
            _walk(child, out, seen)
    elif isinstance(obj, tuple | list):
        for child in obj:
            _walk(child, out, seen)
    elif hasattr(obj, "init") and hasattr(obj, "update"):
        _walk(obj.init, out, seen)
        _walk(obj.update, out, seen)


#: Losses at or below this are round-off (float32 sums of squares at a solution): never flagged.
ROUNDOFF_LOSS = 1e-10


def divergence_warning(
    name: str,
    steps: int,
    first_loss: float,
    final_loss: float,
    best_loss: float,
    returns_best: bool = True,
) -> str | None:
    """The warning for a stage that went uphill, or None.

    A stage is flagged when it ends `DIVERGENCE_FACTOR` times above its first loss (or not
    finite), or when its best loss is its first one and it ended higher: then the model it returns
    is the one it started from (`returns_best`: the stage returns its best model rather than its
    last iterate). Within 10% of the first loss is not flagged: a converged L-BFGS polish may
    wobble there.

    Example:
        >>> from neuraldiffeq.fitting.diagnostics import divergence_warning
        >>> divergence_warning("1/1 Trajectory", 100, 238.0, 2e8, 238.0)[:60]
        'stage 1/1 Trajectory diverged: the loss went from 238 to 2e+'
        >>> divergence_warning("1/1 Trajectory", 100, 238.0, 0.1, 0.1) is None
        True
        >>> divergence_warning("1/1 Trajectory", 100, 6e-14, 1e-12, 6e-14) is None  # round-off
        True
    """
    if steps < 2 or not math.isfinite(first_loss):
        return None
    if math.isfinite(final_loss) and final_loss <= ROUNDOFF_LOSS:
        return None  # a stage that starts at a solution wobbles at round-off level
    far_above = not math.isfinite(final_loss) or final_loss > DIVERGENCE_FACTOR * first_loss
    stuck = best_loss >= first_loss and final_loss > 1.1 * first_loss
    if not (far_above or stuck):
        return None
    if not returns_best:
        returned = "the returned model is the last iterate"
    elif best_loss >= first_loss:
        returned = "the returned model is the one the stage started from (its best)"
    else:
        returned = f"the returned model is the best seen, loss {best_loss:.4g}"
    return (
        f"stage {name} diverged: the loss went from {first_loss:.4g} to {final_loss:.4g} in "
        f"{steps} steps; {returned}. Lower the learning rate (e.g. 10x) or clip gradients "
        "(optax.chain(optax.clip_by_global_norm(1.0), ...))."
    )


def diagnose(report: Any, stage: Any, check_message: str | None = None) -> Any:
    """`report` (a `StageReport`) with its optimizer described and any divergence warned about;
    skipped steps are warned about too, with `check_message` (what a check that failed inside
    the step said), if any.

    Example:
        >>> import optax, neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.results import StageReport
        >>> from neuraldiffeq.fitting.diagnostics import diagnose
        >>> report = StageReport("1/1 Trajectory", 10, 1.0, 0.5, 0.5, 0, 0.0, 0.0)
        >>> diagnose(report, nde.Stage(nde.Trajectory(), optax.adam(0.01), 10)).optimizer
        'Adam(lr=0.01)'
    """
    message = divergence_warning(
        report.name,
        report.steps,
        report.first_loss,
        report.final_loss,
        report.best_loss,
        returns_best=not stage.strategy.stochastic,
    )
    if message is not None:
        warnings.warn(message, stacklevel=3)
    if report.skipped:
        warnings.warn(
            f"stage {report.name}: {report.skipped} of {report.steps} steps had a non-finite "
            "loss or gradient (solver failure) and were skipped."
            + (f" A check inside the step said: {check_message}" if check_message else ""),
            stacklevel=3,
        )
    return dataclasses.replace(
        report, optimizer=describe_optimizer(stage.optimizer), warning=message
    )
