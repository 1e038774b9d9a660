"""Hooks: what `fit` does around its loop besides training, each in one object.

The loop calls every hook at the same points (`FitHook`): once at the start and the end of the
fit, on each stage's prepared data, at the start and end of each stage, and after each compiled
call. A hook reads (and may extend) the fit's record (`FitLog`) and the stage's run (`StageRun`);
`on_step` returning True stops the stage. `fit` builds its hooks from its arguments, in order:
devices (`DevicesHook`), checkpoints (`checkpoint.CheckpointHook`), progress
(`progress.ProgressHook`), logging (`LoggingHook`), the failure rule (`FailureHook`), and the
user's callback (`CallbackHook`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from .devices import shard
from .failure_policy import check_failures
from .loop import StageRun
from .results import FitLog, FitResult
from .stage import Stage

__all__ = ["CallbackHook", "DevicesHook", "FailureHook", "FitHook", "LoggingHook"]

logger = logging.getLogger("neuraldiffeq.fit")


class FitHook:
    """What `fit`'s loop calls, in order; each method does nothing unless overridden.

    Example:
        >>> from neuraldiffeq.fitting.hooks import FitHook
        >>> class CountCalls(FitHook):
        ...     calls = 0
        ...     def on_step(self, log, run, losses):
        ...         self.calls += 1
        >>> CountCalls().on_step(None, None, None) is None  # None: go on
        True
    """

    def on_start(self, log: FitLog) -> None:
        """Before anything is prepared (a checkpoint hook restores `log` here on resume)."""

    def on_prepared(self, stage: Stage, prepared: Any) -> Any:
        """A stage's prepared data, before anything compiles; returns them (e.g. placed)."""
        return prepared

    def on_stage_start(self, log: FitLog, run: StageRun) -> None:
        """Before a stage's first compiled call."""

    def on_step(self, log: FitLog, run: StageRun, losses: np.ndarray) -> bool | None:
        """After each compiled call (`losses`: its steps' losses, already in `log`); True
        stops the stage."""
        return None

    def on_stage_end(self, log: FitLog, run: StageRun) -> None:
        """After a stage ends (finished, stopped or interrupted), before its report is added."""

    def on_end(self, log: FitLog, result: FitResult | None) -> None:
        """When the fit ends; `result` is None when it ends with an exception."""


class CallbackHook(FitHook):
    """`fit`'s `callback(step, loss, model)` after each compiled call; True stops the fit.

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from neuraldiffeq.fitting.hooks import CallbackHook
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> hook = CallbackHook(lambda step, loss, model: step >= 7)
        >>> run = SimpleNamespace(steps_done=7, current_model=lambda: "model")
        >>> hook.on_step(FitLog(), run, np.array([0.5]))
        True
    """

    def __init__(self, callback: Callable[[int, float, Any], bool | None]):
        if not callable(callback):
            raise ValueError(
                "callback must be a function callback(step, loss, model) (return True to "
                f"stop), got {callback!r}."
            )
        self.callback = callback

    def on_step(self, log, run, losses):
        step = log.step_offset + run.steps_done
        return bool(self.callback(step, float(losses[-1]), run.current_model()))


class FailureHook(FitHook):
    """Raise `FitFailure` (with the best model so far) once `max_failures` steps in a row
    failed (`failure_policy.check_failures`).

    Example:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> import neuraldiffeq as nde
        >>> from neuraldiffeq.fitting.hooks import FailureHook
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> run = SimpleNamespace(consecutive_failures=3, stage=nde.Stage(nde.Trajectory(),
        ...     None, 3), check_message=None, best_model=lambda: "best", report=lambda: None)
        >>> FailureHook(max_failures=4).on_step(FitLog(), run, np.array([np.inf]))  # not yet
    """

    def __init__(self, max_failures: int):
        self.max_failures = max_failures

    def on_step(self, log, run, losses):
        check_failures(
            run.consecutive_failures,
            self.max_failures,
            strategy=type(run.stage.strategy).__name__,
            detail=run.check_message,
            result=lambda: log.result(run.best_model(), [*log.reports, run.report()]),
        )


class LoggingHook(FitHook):
    """Log the fit to the `logging` logger "neuraldiffeq.fit": each stage's start and end
    (INFO) and each compiled call's losses (DEBUG). Silent unless logging is configured.

    Example:
        >>> import logging, numpy as np
        >>> from types import SimpleNamespace
        >>> from neuraldiffeq.fitting.hooks import LoggingHook
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> run = SimpleNamespace(name="1/1 Trajectory", steps_done=5, best_loss=0.25, skipped=0)
        >>> LoggingHook().on_step(FitLog(), run, np.array([0.5, 0.25]))
    """

    def __init__(self, log: logging.Logger = logger):
        self.log = log

    def on_stage_start(self, log, run):
        self.log.info("stage %s: %d steps, from step %d", run.name, run.stage.steps, run.steps_done)

    def on_step(self, log, run, losses):
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "stage %s: step %d, loss %.6g (best %.6g, %d skipped)",
                run.name,
                log.step_offset + run.steps_done,
                float(losses[-1]),
                run.best_loss,
                run.skipped,
            )

    def on_stage_end(self, log, run):
        self.log.info(
            "stage %s: %d steps, loss %.6g -> %.6g (best %.6g), %d skipped, %.3g s compiling",
            run.name,
            run.steps_done,
            run.first_loss,
            run.last_loss,
            run.best_loss,
            run.skipped,
            run.compile_seconds,
        )

    def on_end(self, log, result):
        if result is not None and result.interrupted:
            self.log.info("interrupted (Ctrl-C): returning the best model so far")


class DevicesHook(FitHook):
    """Data-parallel fits: each stage's batch split over `mesh` (`devices.shard`, before
    anything compiles, so that a batch that does not divide fails first), and the model and
    optimizer state replicated on every device (`StageRun.use_mesh`).

    Example:
        >>> import jax, numpy as np, neuraldiffeq as nde
        >>> from jax.sharding import Mesh
        >>> from neuraldiffeq.fitting.hooks import DevicesHook
        >>> hook = DevicesHook(Mesh(np.array(jax.devices()[:1]), ("batch",)))
        >>> stage = nde.Stage(nde.Trajectory(), None, 1)
        >>> data = nde.datasets.spiral(n_points=4)
        >>> model = nde.NeuralODE(lambda t, y, args: -y)
        >>> placed = hook.on_prepared(stage, stage.strategy.prepare(model, data))
        >>> len(jax.tree_util.tree_leaves(placed)) > 0
        True
    """

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def on_prepared(self, stage, prepared):
        return shard(stage.strategy, prepared, self.mesh)

    def on_stage_start(self, log, run):
        run.use_mesh(self.mesh)
