"""`ProgressHook`: a tqdm progress bar per stage, with compiling shown as its own state.

A stage's first compiled call includes compiling its step, which can take much longer than a
step. Until that call is done the line reads "compiling…" (no count, no rate); the bar proper
opens after it, counting from the steps done so far, so that its rate is the rate of steps and
never an average that includes the compilation.
"""

from __future__ import annotations

import jax
from tqdm.auto import tqdm

from .hooks import FitHook

__all__ = ["ProgressHook"]


class ProgressHook(FitHook):
    """One tqdm bar per stage (loss, best loss, skipped steps); one bar in a multi-process run.

    Example:
        >>> import io, numpy as np
        >>> from types import SimpleNamespace
        >>> from neuraldiffeq.fitting.progress import ProgressHook
        >>> from neuraldiffeq.fitting.results import FitLog
        >>> out = io.StringIO()
        >>> hook = ProgressHook(file=out)
        >>> run = SimpleNamespace(name="1/1 Trajectory", stage=SimpleNamespace(steps=4),
        ...                       steps_done=0, best_loss=float("inf"), skipped=0)
        >>> hook.on_stage_start(FitLog(), run)
        >>> "compiling" in out.getvalue()
        True
        >>> run.steps_done, run.best_loss = 2, 0.5
        >>> hook.on_step(FitLog(), run, np.array([1.0, 0.5]))
        >>> hook.on_stage_end(FitLog(), run)
        >>> "2/4" in out.getvalue()
        True
    """

    def __init__(self, enabled: bool = True, file=None):
        self.enabled = enabled and jax.process_index() == 0
        self.file = file  # None: tqdm's default (standard error)
        self.waiting = self.bar = None

    def on_stage_start(self, log, run):
        if not self.enabled:
            return
        self.waiting = tqdm(
            total=run.stage.steps,
            desc=run.name,
            bar_format="{desc}: compiling…",
            leave=False,
            file=self.file,
        )

    def on_step(self, log, run, losses):
        if not self.enabled:
            return
        if self.bar is None:  # the first call is done: compiling is over, steps are counted
            self._close_waiting()
            self.bar = tqdm(
                total=run.stage.steps,
                initial=run.steps_done,  # the rate counts the steps from here on only
                desc=run.name,
                leave=True,
                file=self.file,
            )
            refresh = True
        else:
            self.bar.update(len(losses))
            refresh = False  # update() has just drawn the bar when due
        self.bar.set_postfix(
            loss=f"{losses[-1]:.4g}", best=f"{run.best_loss:.4g}", skipped=run.skipped,
            refresh=refresh,
        )  # fmt: skip

    def on_stage_end(self, log, run):
        self._close()

    def on_end(self, log, result):
        self._close()  # also when the fit ends with an exception

    def _close_waiting(self):
        if self.waiting is not None:
            self.waiting.close()
            self.waiting = None

    def _close(self):
        self._close_waiting()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
