"""What a fit records and returns: `StageReport`, `FitResult`, `FitFailure`, and `FitLog`.

`FitLog` is the host-side record a fit builds as it runs (losses, times, finished stages); the
loop appends to it and hooks read it (a checkpoint saves it, and restores it on resume).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

__all__ = ["FitFailure", "FitLog", "FitResult", "StageReport"]


@dataclasses.dataclass
class StageReport:
    """What one stage of a fit did (one entry of `FitResult.stages`).

    Example:
        >>> from neuraldiffeq.fitting.results import StageReport
        >>> report = StageReport("1/1 Trajectory", 10, 2.0, 0.5, 0.4, 1, 0.0, 0.0)
        >>> report.skipped
        1
    """

    name: str
    steps: int
    first_loss: float
    final_loss: float
    best_loss: float
    skipped: int
    compile_seconds: float
    wall_seconds: float
    optimizer: str = ""  # e.g. "Adam(lr=0.05)" (fitting.diagnostics.describe_optimizer)
    warning: str | None = None  # set when the stage diverged (fitting.diagnostics)


@dataclasses.dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        model: the model with the lowest loss seen in the last stage (each stage starts from the
            previous stage's result); for strategies whose loss is sampled afresh each step
            (`strategy.stochastic`: minibatches, SDE paths, ELBO), the last iterate instead.
        losses: loss at every step, all stages concatenated (`np.ndarray`).
        times: wall-clock seconds since the start of `fit` at every step (compilation included).
        stages: a `StageReport` per stage that ran (steps, losses, skipped steps, timings).
        skipped: total steps whose loss or gradient was not finite (their update was dropped).
        interrupted: True if Ctrl-C ended the fit early; `model` is still the best so far.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> result = nde.FitResult(None, np.array([3.0, 1.0]), np.array([0.1, 0.2]), [], 0,
        ...                        False)
        >>> result.metrics()["final_loss"]
        1.0
    """

    model: Any
    losses: np.ndarray
    times: np.ndarray
    stages: list[StageReport]
    skipped: int
    interrupted: bool

    @property
    def best_loss(self) -> float:
        return self.stages[-1].best_loss if self.stages else float("nan")

    def metrics(self) -> dict:
        """A JSON-serialisable summary (for `metrics.json`)."""
        return {
            "final_loss": float(self.losses[-1]) if len(self.losses) else None,
            "best_loss": self.best_loss,
            "steps": int(len(self.losses)),
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "wall_seconds": float(self.times[-1]) if len(self.times) else 0.0,
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }


class FitFailure(RuntimeError):
    """The solver failed on too many consecutive steps; `.result` holds the best model so far
    (a `FitResult` when raised by `fit`; None when raised by `check_failures` in a loop of
    your own, unless you passed one).

    Example:
        >>> import neuraldiffeq as nde
        >>> try:
        ...     nde.check_failures(3, max_failures=3)
        ... except nde.FitFailure as error:
        ...     print(str(error)[:44], error.result)
        3 consecutive steps had a non-finite loss or None
    """

    def __init__(self, message: str, result: FitResult | None = None):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass
class FitLog:
    """The record of a fit in progress: what `FitResult` is made from, plus where the fit is.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> log = FitLog()
        >>> log.record(np.array([2.0, 1.0]))
        >>> log.result(model=None).losses
        array([2., 1.])
    """

    start: float = dataclasses.field(default_factory=time.perf_counter)
    losses: list[np.ndarray] = dataclasses.field(default_factory=list)
    times: list[np.ndarray] = dataclasses.field(default_factory=list)
    reports: list[StageReport] = dataclasses.field(default_factory=list)
    step_offset: int = 0  # steps of the stages already finished (the global step of this one's 0)
    first_stage: int = 0  # stages before this one finished before a resumed fit started
    interrupted: bool = False

    def record(self, values: np.ndarray) -> None:
        """The losses of one compiled call, stamped with the time since the start of the fit."""
        self.losses.append(values)
        self.times.append(np.full(values.shape, time.perf_counter() - self.start))

    def result(self, model: Any, reports: list[StageReport] | None = None) -> FitResult:
        """The `FitResult` of the fit so far, with `model` (and `reports`, default the log's)."""
        reports = self.reports if reports is None else reports
        if jax.process_count() > 1:  # each process gets the model as an ordinary local one
            model = jax.tree_util.tree_map(
                lambda x: (
                    x.addressable_data(0)
                    if isinstance(x, jax.Array) and not x.is_fully_addressable
                    else x
                ),
                model,
            )
        return FitResult(
            model=model,
            losses=np.concatenate(self.losses) if self.losses else np.zeros(0),
            times=np.concatenate(self.times) if self.times else np.zeros(0),
            stages=list(reports),
            skipped=sum(r.skipped for r in reports),
            interrupted=self.interrupted,
        )
